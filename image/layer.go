package image

import (
	"bufio"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/stream"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"cargohold/layer"
)

// lazyLayer is the eStargz layer of a cache dir as a v1.Layer whose bytes
// are built when read. Its digests are known once a read has reached the
// end (or stage has run); before, they are stream.ErrNotComputed, which
// tells go-containerregistry's remote and layout writers to upload or
// write it first and describe it after, in one pass. Every read builds
// the same bytes again: a retried upload rebuilds.
type lazyLayer struct {
	// immutable after Prepare
	ctx context.Context
	src layer.Source

	mu     sync.Mutex
	built  *layer.Built // guarded by mu
	staged string       // guarded by mu: the staged blob, "" when none
}

var _ v1.Layer = (*lazyLayer)(nil)

// stage builds the layer into a temp file under tmp, read by every later
// Compressed.
func (l *lazyLayer) stage(tmp string) error {
	dir, err := os.MkdirTemp(tmp, "cargohold-pack-")
	if err != nil {
		return err
	}
	path := filepath.Join(dir, "layer.tar.gz")
	f, err := os.Create(path)
	if err == nil {
		var b layer.Built
		bw := bufio.NewWriterSize(f, 1<<20)
		b, err = layer.BuildSource(l.ctx, bw, l.src)
		if err == nil {
			err = bw.Flush()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = l.done(b)
		}
	}
	if err != nil {
		os.RemoveAll(dir)
		return err
	}
	l.mu.Lock()
	l.staged = path
	l.mu.Unlock()
	return nil
}

func (l *lazyLayer) close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.staged == "" {
		return nil
	}
	err := os.RemoveAll(filepath.Dir(l.staged))
	l.staged = ""
	return err
}

// done records a finished build; a later one must agree.
func (l *lazyLayer) done(b layer.Built) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.built != nil && *l.built != b {
		return fmt.Errorf("image: pack %s: the layer built again as %s, first as %s: did the cache change while packing?",
			l.src.Dir, b.Digest, l.built.Digest)
	}
	l.built = &b
	return nil
}

func (l *lazyLayer) result() (layer.Built, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.built == nil {
		return layer.Built{}, fmt.Errorf("image: layer of %s not built yet: %w", l.src.Dir, stream.ErrNotComputed)
	}
	return *l.built, nil
}

// Compressed returns the staged blob, or builds the layer into the
// returned reader; closing it early stops the build.
func (l *lazyLayer) Compressed() (io.ReadCloser, error) {
	l.mu.Lock()
	staged := l.staged
	l.mu.Unlock()
	if staged != "" {
		return os.Open(staged)
	}
	pr, pw := io.Pipe()
	go func() {
		// Members are small: batch them into the pipe.
		bw := bufio.NewWriterSize(pw, 1<<20)
		b, err := layer.BuildSource(l.ctx, bw, l.src)
		if err == nil {
			err = bw.Flush()
		}
		if err == nil {
			// Recorded before the reader sees EOF: a writer asks for the
			// digest right after.
			err = l.done(b)
		}
		pw.CloseWithError(err)
	}()
	return pr, nil
}

// Uncompressed returns the layer's tar (TOC entry included).
func (l *lazyLayer) Uncompressed() (io.ReadCloser, error) {
	rc, err := l.Compressed()
	if err != nil {
		return nil, err
	}
	zr, err := gzip.NewReader(rc)
	if err != nil {
		rc.Close()
		return nil, fmt.Errorf("image: layer: %w", err)
	}
	return readCloser{zr, rc}, nil
}

type readCloser struct {
	io.Reader
	c io.Closer
}

func (r readCloser) Close() error { return r.c.Close() }

func (l *lazyLayer) Digest() (v1.Hash, error) {
	b, err := l.result()
	if err != nil {
		return v1.Hash{}, err
	}
	return v1.NewHash(b.Digest.String())
}

func (l *lazyLayer) DiffID() (v1.Hash, error) {
	b, err := l.result()
	if err != nil {
		return v1.Hash{}, err
	}
	return v1.NewHash(b.DiffID.String())
}

func (l *lazyLayer) Size() (int64, error) {
	b, err := l.result()
	return b.Size, err
}

func (l *lazyLayer) MediaType() (types.MediaType, error) { return types.OCILayer, nil }

// Descriptor carries the eStargz annotations (partial.Descriptor uses it).
func (l *lazyLayer) Descriptor() (*v1.Descriptor, error) {
	b, err := l.result()
	if err != nil {
		return nil, err
	}
	d, err := v1.NewHash(b.Digest.String())
	if err != nil {
		return nil, err
	}
	return &v1.Descriptor{MediaType: types.OCILayer, Size: b.Size, Digest: d, Annotations: b.Annotations()}, nil
}
