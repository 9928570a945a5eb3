package fs

import (
	"errors"
	iofs "io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// Whiteouts use the aufs format: an empty file ".wh.<name>" in the upper
// parent hides <name> of the lower layer; a file ".wh..wh..opq" in an upper
// dir makes it opaque (nothing below it shows). Plain files need no
// privilege (overlayfs's 0:0 char devices need CAP_MKNOD) and survive
// remounts and copies of the upper dir.
const (
	whiteoutPrefix = ".wh."
	opaqueName     = whiteoutPrefix + whiteoutPrefix + ".opq"
)

// isWhiteoutName reports whether name is reserved for whiteouts.
func isWhiteoutName(name string) bool { return strings.HasPrefix(name, whiteoutPrefix) }

func whiteoutPath(dir, name string) string { return filepath.Join(dir, whiteoutPrefix+name) }

// hasWhiteout reports whether dir holds a whiteout for name.
func hasWhiteout(dir, name string) bool { return exists(whiteoutPath(dir, name)) }

// writeWhiteout hides name of the lower layer. created is false when the
// whiteout was there already.
func writeWhiteout(dir, name string) (created bool, err error) {
	fd, err := syscall.Open(whiteoutPath(dir, name), syscall.O_CREAT|syscall.O_EXCL|syscall.O_WRONLY|syscall.O_CLOEXEC, 0o600)
	if errors.Is(err, syscall.EEXIST) {
		return false, nil
	}
	if err != nil {
		return false, &os.PathError{Op: "whiteout", Path: whiteoutPath(dir, name), Err: err}
	}
	return true, syscall.Close(fd)
}

// removeWhiteout drops the whiteout for name, if any.
func removeWhiteout(dir, name string) error {
	err := os.Remove(whiteoutPath(dir, name))
	if errors.Is(err, iofs.ErrNotExist) {
		return nil
	}
	return err
}

// isOpaque reports whether the upper dir hides everything below it.
func isOpaque(dir string) bool { return exists(filepath.Join(dir, opaqueName)) }

// markOpaque makes the upper dir hide everything below it.
func markOpaque(dir string) error {
	f, err := os.OpenFile(filepath.Join(dir, opaqueName), os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	return f.Close()
}

// exists reports whether p names anything (symlinks not followed).
func exists(p string) bool {
	var st syscall.Stat_t
	return syscall.Lstat(p, &st) == nil
}

// isDirPath reports whether p is a dir (symlinks not followed).
func isDirPath(p string) bool {
	var st syscall.Stat_t
	return syscall.Lstat(p, &st) == nil && st.Mode&syscall.S_IFMT == syscall.S_IFDIR
}
