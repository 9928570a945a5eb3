package resolver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

var _ Blob = (*FileBlob)(nil)

// FileBlob reads a blob file of a local OCI image layout,
// <layout>/blobs/<alg>/<hex>. Its content is trusted as the layout's (no
// digest check here; Stream verifies whole streams).
type FileBlob struct {
	// immutable after construction
	f        *os.File
	path     string
	size     int64
	counters Counters
	m        meter
}

// openFileBlob opens blob d of the layout at dir. The file must hold at
// least d.Size bytes (when d.Size is known); Size is d.Size, or the file
// size when d.Size is negative.
func openFileBlob(dir string, d v1.Descriptor, opts Options) (*FileBlob, error) {
	p, err := blobPath(dir, d.Digest)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("resolver: open blob %s: %w: %w", p, ErrNotFound, err)
		}
		return nil, fmt.Errorf("resolver: open blob: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("resolver: open blob: %w", err)
	}
	size := d.Size
	if size < 0 {
		size = st.Size()
	}
	if st.Size() != size {
		f.Close()
		return nil, fmt.Errorf("resolver: open blob %s: %w: file has %d bytes, descriptor says %d", p, ErrCorrupt, st.Size(), size)
	}
	b := &FileBlob{f: f, path: p, size: size}
	b.m = meter{own: &b.counters, shared: opts.Counters}
	return b, nil
}

func blobPath(dir string, h v1.Hash) (string, error) {
	if h.Algorithm == "" || h.Hex == "" || strings.ContainsAny(h.Algorithm+h.Hex, `/\.`) {
		return "", fmt.Errorf("resolver: blob path for %q: bad digest", h)
	}
	return filepath.Join(dir, "blobs", h.Algorithm, h.Hex), nil
}

// Size is the blob size.
func (b *FileBlob) Size() int64 { return b.size }

// Path is the blob file.
func (b *FileBlob) Path() string { return b.path }

// Counters are this blob's own counts (Options.Counters gets them too).
func (b *FileBlob) Counters() *Counters { return &b.counters }

// Close closes the file.
func (b *FileBlob) Close() error { return b.f.Close() }

// ReadAt honours io.ReaderAt within Size.
func (b *FileBlob) ReadAt(p []byte, off int64) (int, error) {
	return b.ReadAtContext(context.Background(), p, off)
}

// ReadAtContext is ReadAt; ctx is checked before reading (a local read does
// not block on the network).
func (b *FileBlob) ReadAtContext(ctx context.Context, p []byte, off int64) (int, error) {
	want, done, err := readSpan(b.path, len(p), off, b.size)
	if done {
		return 0, err
	}
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("resolver: read %s: %w", b.path, err)
	}
	b.m.request()
	n, err := b.f.ReadAt(p[:want], off)
	b.m.received(n)
	if int64(n) < want {
		if err == nil || errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF // the file shrank under us
		}
		b.m.failed()
		return n, fmt.Errorf("resolver: read %s range [%d,%d): %w", b.path, off, off+want, err)
	}
	if int(want) < len(p) {
		return n, io.EOF
	}
	return n, nil
}
