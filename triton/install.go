package triton

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// InstallEntry moves a complete KEY dir, staged on the same filesystem as
// cacheDir, into cacheDir/KEY as Triton expects it: group files get their
// child paths rewritten to cacheDir's absolute path, then the dir is renamed
// into place whole. It never replaces an existing entry, not even the empty
// dir a concurrent Triton has just made: that is an error wrapping
// fs.ErrExist, and the local entry wins.
func InstallEntry(staged, cacheDir string) error {
	key := filepath.Base(staged)
	root, err := filepath.Abs(cacheDir)
	if err != nil {
		return fmt.Errorf("triton: install %s: %w", key, err)
	}
	des, err := os.ReadDir(staged)
	if err != nil {
		return fmt.Errorf("triton: install %s: %w", key, err)
	}
	for _, de := range des {
		if !IsGroupFile(de.Name()) {
			continue
		}
		p := filepath.Join(staged, de.Name())
		data, err := os.ReadFile(p)
		if err != nil {
			return fmt.Errorf("triton: install %s: %w", key, err)
		}
		out, err := RewriteGroup(data, root)
		if err != nil {
			return fmt.Errorf("triton: install %s/%s: %w", key, de.Name(), err)
		}
		if err := os.WriteFile(p, out, 0o644); err != nil {
			return fmt.Errorf("triton: install %s: %w", key, err)
		}
	}
	return MoveEntry(staged, root)
}

// MoveEntry renames a complete KEY dir staged on the same filesystem as
// cacheDir, whose group files already name cacheDir (RewriteGroup with its
// absolute path), into cacheDir/KEY, never over an existing entry (an error
// wrapping fs.ErrExist), as InstallEntry does.
func MoveEntry(staged, cacheDir string) error {
	key := filepath.Base(staged)
	if err := renameNoReplace(staged, filepath.Join(cacheDir, key)); err != nil {
		return fmt.Errorf("triton: install %s: %w", key, err)
	}
	return nil
}

// RenameNoReplace renames the dir src to dst unless dst exists (an error
// wrapping fs.ErrExist, also for an empty dir a concurrent Triton has just
// made).
func RenameNoReplace(src, dst string) error { return renameNoReplace(src, dst) }

// renameNoReplace renames the dir src to dst unless dst exists.
func renameNoReplace(src, dst string) error {
	err := unix.Renameat2(unix.AT_FDCWD, src, unix.AT_FDCWD, dst, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		// No RENAME_NOREPLACE here: claim dst with mkdir (which fails on an
		// existing one), then rename over our own empty dir. A Triton writer
		// racing in between makes dst non-empty and the rename fail.
		if err = os.Mkdir(dst, 0o755); err == nil {
			err = os.Rename(src, dst)
		}
		if errors.Is(err, unix.ENOTEMPTY) {
			err = unix.EEXIST
		}
	}
	switch {
	case errors.Is(err, unix.EEXIST) || errors.Is(err, fs.ErrExist):
		return fmt.Errorf("%s: %w", dst, fs.ErrExist)
	case err != nil:
		return &os.LinkError{Op: "rename", Old: src, New: dst, Err: err}
	}
	return nil
}
