package fetch

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"cargohold/store"
	"cargohold/triton"
)

// Install copies the files of a fetched KEY dir from the content store into
// dir/key: staged in a temp dir inside dir, then renamed into place whole,
// never over an existing dir/key (an error wrapping fs.ErrExist, also for an
// empty dir a concurrent Triton just made). Group files get their child
// paths rewritten to dir's absolute path (triton.InstallEntry). Files are
// 0755 when the image gave them an executable bit, else 0644. Files that
// would not fit the free space of dir's file system are refused before
// anything is written (an error wrapping store.ErrFull).
func (e *Engine) Install(dir, key string, files []KeyFile) error {
	if !plainFileName(key) {
		return fmt.Errorf("fetch: install KEY %q: not a plain name", key)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("fetch: install KEY %s: %w", key, err)
	}
	dst := filepath.Join(abs, key)
	if _, err := os.Lstat(dst); err == nil {
		return fmt.Errorf("fetch: install KEY %s: %s: %w", key, dst, fs.ErrExist)
	}
	if err := os.MkdirAll(abs, 0o755); err != nil {
		return fmt.Errorf("fetch: install KEY %s: %w", key, err)
	}
	var need int64
	for _, f := range files {
		need += f.Size
	}
	var fsst unix.Statfs_t
	if err := unix.Statfs(abs, &fsst); err != nil {
		return fmt.Errorf("fetch: install KEY %s: %w", key, err)
	}
	if free := int64(fsst.Bavail) * fsst.Bsize; need > free {
		return fmt.Errorf("fetch: install KEY %s: %w: %d bytes, %d free in %s", key, store.ErrFull, need, free, abs)
	}
	// Its name is not a KEY, so Triton never looks at it.
	stage, err := os.MkdirTemp(abs, ".cargohold-fetch-")
	if err != nil {
		return fmt.Errorf("fetch: install KEY %s: %w", key, err)
	}
	defer os.RemoveAll(stage)
	kd := filepath.Join(stage, key)
	if err := os.Mkdir(kd, 0o755); err != nil {
		return fmt.Errorf("fetch: install KEY %s: %w", key, err)
	}
	for _, f := range files {
		if err := e.installFile(kd, f); err != nil {
			return fmt.Errorf("fetch: install KEY %s: %s: %w", key, f.Name, err)
		}
	}
	if err := triton.InstallEntry(kd, abs); err != nil {
		return fmt.Errorf("fetch: install KEY %s: %w", key, err)
	}
	return nil
}

func (e *Engine) installFile(kd string, f KeyFile) error {
	if !plainFileName(f.Name) {
		return fmt.Errorf("not a plain name")
	}
	src, err := e.st.Open(f.Digest)
	if err != nil {
		return err
	}
	defer src.Close()
	if src.Size() != f.Size {
		return fmt.Errorf("stored blob %s has %d bytes, want %d", f.Digest, src.Size(), f.Size)
	}
	mode := os.FileMode(0o644)
	if f.Mode&0o111 != 0 {
		mode = 0o755
	}
	w, err := os.OpenFile(filepath.Join(kd, f.Name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	_, err = io.Copy(w, src)
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	return err
}
