package fetch

import (
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"cargohold/kind"
	"cargohold/store"
	"cargohold/triton"
)

// Install copies the files of a fetched unit (a KEY dir, or the dir path
// key under a cache root of kind k) from the content store into dir/key:
// staged in a temp dir inside dir, then renamed into place whole (the dirs
// above it made as needed), never over an existing dir/key (an error
// wrapping fs.ErrExist, also for an empty dir a concurrent Triton just
// made). The kind's rewrites (kind.RewriteOf) are applied for dir's
// absolute path: group files name the dir their KEY dir is installed in,
// vLLM's cache file dir. Files are 0755 when the image gave them an
// executable bit, else 0644. Files that would not fit the free space of
// dir's file system are refused before anything is written (an error
// wrapping store.ErrFull).
func (e *Engine) Install(dir string, k kind.Kind, key string, files []KeyFile) error {
	if err := kind.CheckPath(key); err != nil || !kind.IsUnit(k, key) {
		return fmt.Errorf("fetch: install %q: not a unit of a %s cache", key, k)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("fetch: install KEY %s: %w", key, err)
	}
	dst := filepath.Join(abs, filepath.FromSlash(key))
	if _, err := os.Lstat(dst); err == nil {
		return fmt.Errorf("fetch: install KEY %s: %s: %w", key, dst, fs.ErrExist)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
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
	kd := filepath.Join(stage, "unit")
	if err := os.Mkdir(kd, 0o755); err != nil {
		return fmt.Errorf("fetch: install KEY %s: %w", key, err)
	}
	for _, f := range files {
		if err := e.installFile(kd, f, kind.RewriteOf(k, key, f.Name), abs, key); err != nil {
			return fmt.Errorf("fetch: install KEY %s: %s: %w", key, f.Name, err)
		}
	}
	if err := triton.RenameNoReplace(kd, dst); err != nil {
		return fmt.Errorf("fetch: install KEY %s: %w", key, err)
	}
	return nil
}

// installFile writes f into kd, rewritten by rw for a cache at root.
func (e *Engine) installFile(kd string, f KeyFile, rw kind.Rewrite, root, unit string) error {
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
	var r io.Reader = src
	if rw != kind.RewriteNone {
		if f.Size > kind.MaxRewrite {
			return fmt.Errorf("%d bytes, more than the %d rewritten in memory", f.Size, kind.MaxRewrite)
		}
		data, err := io.ReadAll(src)
		if err == nil {
			data, err = rw.Apply(data, root, unit)
		}
		if err != nil {
			return err
		}
		r = bytes.NewReader(data)
	}
	w, err := os.OpenFile(filepath.Join(kd, f.Name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	_, err = io.Copy(w, r)
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	return err
}
