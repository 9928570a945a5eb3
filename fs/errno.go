package fs

import (
	"context"
	"errors"
	iofs "io/fs"
	"syscall"
)

// ErrReadOnly is the cause of writes to image content: lower files are
// immutable (EROFS).
var ErrReadOnly = errors.New("fs: image content is read-only")

// errno is the one place where Go errors become errnos, and it records the
// cause before answering:
//
//   - not found (fs.ErrNotExist, ENOENT) → ENOENT, logged at debug level;
//   - canceled (the caller was interrupted, or the mount is going away) →
//     EINTR, which Python and Go retry: an interruption says nothing about
//     the images;
//   - keyPath (looking up a KEY in the images, where the design says "fall
//     back to compiling"): every other failure too, timeouts included →
//     ENOENT, counted in Stats.LookupErrors and kept as Stats' last error;
//   - read-only (ErrReadOnly, EROFS) → EROFS;
//   - an errno from the upper dir's file system → itself (EEXIST, ENOTEMPTY
//     and the like are answers, not failures: logged at debug level); one
//     from the images' side (ECONNREFUSED inside a fetch error) is not an
//     answer, and goes on to the next case;
//   - anything else (EIO from the disk, bad image data, a deadline outside
//     the KEY path) → EIO, counted in Stats.IOErrors and kept as last error.
func (v *view) errno(op string, err error, keyPath bool) syscall.Errno {
	if err == nil {
		return 0
	}
	var e syscall.Errno
	switch {
	case errors.Is(err, iofs.ErrNotExist):
		v.log.Debug("fs: not found", "op", op, "err", err)
		return syscall.ENOENT
	case errors.Is(err, context.Canceled):
		// Not an answer about the images: Python and Go retry EINTR.
		v.log.Debug("fs: interrupted", "op", op, "err", err)
		return syscall.EINTR
	case keyPath:
		v.stats.lookupError(err)
		v.log.Warn("fs: the images failed for a KEY; treated as absent, so Triton compiles", "op", op, "err", err)
		return syscall.ENOENT
	case errors.Is(err, ErrReadOnly):
		v.log.Debug("fs: read-only", "op", op, "err", err)
		return syscall.EROFS
	case errors.As(err, &e) && e != syscall.EIO && e != 0 && !fromImages(err):
		v.log.Debug("fs: upper dir says", "op", op, "err", err)
		return e
	default:
		v.stats.ioError(err)
		v.log.Error("fs: I/O error", "op", op, "err", err)
		return syscall.EIO
	}
}

// imagesError marks a failure on the images' side (Lower.Entry, opening
// image content). The errnos inside it are the network's or the store's,
// never an answer to pass on to the caller.
type imagesError struct{ err error }

func (e *imagesError) Error() string { return e.err.Error() }
func (e *imagesError) Unwrap() error { return e.err }

func fromImages(err error) bool {
	var ie *imagesError
	return errors.As(err, &ie)
}
