package replay

import (
	"errors"
	"fmt"
)

// ErrNotFound says the cache has no usable entry for a KEY: Triton would
// compile the kernel (a miss).
var ErrNotFound = errors.New("not in cache")

// ErrRemovedNonEmpty says rmdir of a KEY dir that holds files succeeded.
// Python's os.removedirs would then go on to remove the cache root's
// parents; a filesystem that does this is broken.
var ErrRemovedNonEmpty = errors.New("rmdir of a non-empty KEY dir succeeded (want ENOTEMPTY)")

// MismatchError says a file read from the cache differs from the expected
// source.
type MismatchError struct {
	Key, File string
	Offset    int64 // first differing byte
	Got, Want int64 // sizes
}

func (e *MismatchError) Error() string {
	return fmt.Sprintf("%s/%s: bytes differ at offset %d (got %d bytes, want %d)", e.Key, e.File, e.Offset, e.Got, e.Want)
}

// OutsideRootError says a cache file names a path that is not where the
// cache is served: a Triton group file a child path other than
// ROOT/KEY/NAME, a vllm_compile_cache.py an artifact path other than the
// artifact in its own dir. The framework would read (or miss) a file of
// another cache, typically the one on the machine that built it.
type OutsideRootError struct {
	Key, Child, Path, Want string
}

func (e *OutsideRootError) Error() string {
	return fmt.Sprintf("%s: %q has path %s, want %s", e.Key, e.Child, e.Path, e.Want)
}

// SizeError says a file's size changed between stat and read: Triton would
// read a truncated or padded file.
type SizeError struct {
	Path string
	Stat int64  // what (f)stat said
	Read int64  // what reading gave
	Call string // "stat" or "fstat"
}

func (e *SizeError) Error() string {
	return fmt.Sprintf("%s: %s says %d bytes, read gave %d", e.Path, e.Call, e.Stat, e.Read)
}
