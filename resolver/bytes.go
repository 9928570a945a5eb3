package resolver

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"net/http"
	"os"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// A layer's bytes have two doors, both keyed by its LayerRef: Blob for
// ranged reads, Stream for the whole blob, verified. Each use is metered on
// its own (Counters) and into the Resolver's counters.

// Blob opens l's blob for ranged reads: a RegistryBlob over the
// repository's shared transport, or a FileBlob of a local layout. ReadAt
// runs under ctx; ReadAtContext takes its own. The caller closes it.
func (r *Resolver) Blob(ctx context.Context, l LayerRef) (Blob, error) {
	if err := l.Validate(); err != nil {
		return nil, err
	}
	if l.Layout != "" {
		return openFileBlob(l.Layout, l.Desc, r.opts)
	}
	repo, rt, err := r.layerTransport(ctx, l)
	if err != nil {
		return nil, err
	}
	return newRegistryBlob(ctx, rt, repo, l.Desc, r.opts)
}

// Stream opens l's whole compressed blob. Its size and digest are checked
// at its end: a mismatch is an error instead of io.EOF, so consumers must
// read to io.EOF before trusting what they read. A registry stream is one
// GET without Range; its headers must come within Options.Timeout, and it
// fails with ErrStalled when no body byte arrives for Options.Timeout (ctx
// bounds the whole). Options.Progress, when set, sees the bytes go by.
func (r *Resolver) Stream(ctx context.Context, l LayerRef) (*Stream, error) {
	if err := l.Validate(); err != nil {
		return nil, err
	}
	s := &Stream{}
	m := meter{own: &s.counters, shared: r.opts.Counters}
	var body io.ReadCloser
	var err error
	if l.Layout != "" {
		body, err = r.fileStream(l, m)
	} else {
		body, err = r.registryStream(ctx, l, m)
	}
	if err != nil {
		return nil, err
	}
	s.v = &verifier{rc: body, h: sha256.New(), want: l.Desc.Digest, size: l.Desc.Size}
	s.r = s.v
	if fn := r.opts.Progress; fn != nil {
		s.r = &progressReader{r: s.v, total: l.Desc.Size, fn: fn}
	}
	return s, nil
}

// Stream is a whole layer blob being read; see Resolver.Stream.
type Stream struct {
	r        io.Reader
	v        *verifier
	counters Counters
}

func (s *Stream) Read(p []byte) (int, error) { return s.r.Read(p) }

// Close releases the body.
func (s *Stream) Close() error { return s.v.rc.Close() }

// Counters are this stream's own counts.
func (s *Stream) Counters() *Counters { return &s.counters }

// layerTransport is the repository of registry layer l and its transport.
func (r *Resolver) layerTransport(ctx context.Context, l LayerRef) (name.Repository, http.RoundTripper, error) {
	repo, err := ParseRepository(l.Repo, r.opts)
	if err != nil {
		return name.Repository{}, nil, fmt.Errorf("resolver: layer %s: %w", l, err)
	}
	rt, err := r.Transport(ctx, repo)
	return repo, rt, err
}

func (r *Resolver) fileStream(l LayerRef, m meter) (io.ReadCloser, error) {
	p, err := blobPath(l.Layout, l.Desc.Digest)
	if err != nil {
		return nil, err
	}
	m.request()
	f, err := os.Open(p)
	if err != nil {
		m.failed()
		if os.IsNotExist(err) {
			err = fmt.Errorf("%w: %w", ErrNotFound, err)
		}
		return nil, fmt.Errorf("resolver: open layer %s: %w", l, err)
	}
	return readCloser{&countingReader{r: f, m: m}, f}, nil
}

func (r *Resolver) registryStream(ctx context.Context, l LayerRef, m meter) (io.ReadCloser, error) {
	repo, rt, err := r.layerTransport(ctx, l)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	fail := func(err error) (io.ReadCloser, error) {
		cancel()
		m.failed()
		return nil, fmt.Errorf("resolver: GET %s: %w", l, err)
	}
	u := fmt.Sprintf("%s://%s/v2/%s/blobs/%s", repo.Registry.Scheme(), repo.RegistryStr(), repo.RepositoryStr(), l.Desc.Digest)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return fail(err)
	}
	m.request()
	client := &http.Client{Transport: rt, CheckRedirect: checkRedirect}
	resp, err := client.Do(req)
	if err != nil {
		return fail(err)
	}
	if resp.StatusCode != http.StatusOK {
		err := transport.CheckError(resp, http.StatusOK)
		resp.Body.Close()
		if resp.StatusCode == http.StatusNotFound {
			err = fmt.Errorf("%w: %w", ErrNotFound, err)
		}
		return fail(err)
	}
	if resp.ContentLength >= 0 && resp.ContentLength != l.Desc.Size {
		resp.Body.Close()
		return fail(fmt.Errorf("%w: Content-Length %d for a blob of %d bytes", ErrBadResponse, resp.ContentLength, l.Desc.Size))
	}
	// The transport's watchdog (guard) fails the body when it stalls.
	return readCloser{&countingReader{r: resp.Body, m: m}, closerFunc(func() error {
		cancel()
		return resp.Body.Close()
	})}, nil
}

type readCloser struct {
	io.Reader
	io.Closer
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

// verifier checks size and digest of a whole stream at its end.
type verifier struct {
	rc   io.ReadCloser
	h    hash.Hash
	want v1.Hash
	size int64
	n    int64
}

func (v *verifier) Read(p []byte) (int, error) {
	if v.want.Algorithm != "sha256" {
		return 0, fmt.Errorf("resolver: blob %s: unsupported digest algorithm %q", v.want, v.want.Algorithm)
	}
	n, err := v.rc.Read(p)
	v.h.Write(p[:n])
	v.n += int64(n)
	if v.size >= 0 && v.n > v.size {
		return n, fmt.Errorf("resolver: blob %s: %w: more than %d bytes", v.want, ErrCorrupt, v.size)
	}
	if err == io.EOF {
		if v.size >= 0 && v.n != v.size {
			return n, fmt.Errorf("resolver: blob %s: %w: %d bytes, want %d", v.want, ErrCorrupt, v.n, v.size)
		}
		if got := hex.EncodeToString(v.h.Sum(nil)); got != v.want.Hex {
			return n, fmt.Errorf("resolver: blob %s: %w: %w: got sha256:%s", v.want, ErrCorrupt, ErrDigest, got)
		}
	}
	return n, err
}

// progressReader reports bytes read so far.
type progressReader struct {
	r     io.Reader
	total int64
	done  int64
	fn    func(v1.Update)
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	if n > 0 {
		p.done += int64(n)
		p.fn(v1.Update{Total: p.total, Complete: p.done})
	}
	if err != nil && err != io.EOF {
		p.fn(v1.Update{Total: p.total, Complete: p.done, Error: err})
	}
	return n, err
}
