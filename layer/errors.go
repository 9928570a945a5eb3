package layer

import (
	"errors"
	"fmt"
)

// ErrNotIndexable says a blob is compressed but not eStargz: it has no index
// to read ranges by. The caller downloads it whole, decompresses it to a local
// file and calls OpenGunzipped on that.
var ErrNotIndexable = errors.New("layer: compressed layer without an index (not eStargz)")

// ErrNotEStargz says a blob has no eStargz footer (OpenEStargz).
var ErrNotEStargz = errors.New("layer: not eStargz")

// ErrTOCDigest says an eStargz TOC does not match the digest it was announced
// with.
var ErrTOCDigest = errors.New("layer: TOC digest mismatch")

// ErrMismatch says file content disagrees with its recorded size or digest.
var ErrMismatch = errors.New("content mismatch")

// UnsafeEntryError is a layer entry that could escape or subvert the cache
// dir: a name with "..", an absolute name, a link or device under
// io.triton.cache/, or a name that is not clean.
type UnsafeEntryError struct {
	Path   string // the name as stored in the layer
	Reason string
}

func (e *UnsafeEntryError) Error() string {
	return fmt.Sprintf("layer: unsafe entry %q: %s", e.Path, e.Reason)
}

// VerifyError says the content of one file failed verification: wrong size,
// wrong digest, or compressed data that does not decode.
type VerifyError struct {
	Key, File string
	Err       error
}

func (e *VerifyError) Error() string {
	return fmt.Sprintf("layer: verify %s/%s: %v", e.Key, e.File, e.Err)
}

func (e *VerifyError) Unwrap() error { return e.Err }
