package triton

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"
)

// RenameNoReplace renames the dir src to dst unless dst exists (an error
// wrapping fs.ErrExist, also for an empty dir a concurrent Triton has just
// made).
func RenameNoReplace(src, dst string) error {
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
