package resolver

import (
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	digest "github.com/opencontainers/go-digest"

	"cargohold/layer"
	"cargohold/store"
)

// A gzip layer that is not eStargz has no random access: it is downloaded
// once in full (digest verified), decompressed into the content store under
// its DiffID (verified by the store), and indexed and read there.
//
// Debt: the whole download is one attempt (no retry), and the local tar
// stays in the store beside the files fetched out of it until evicted.

// indexGzip indexes the local tar of gzip layer l, downloading it first.
func (e *Engine) indexGzip(ctx context.Context, l LayerRef) (*layer.Index, error) {
	f, err := e.openDiff(ctx, l)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	idx, err := layer.OpenTar(f, f.Size(), 0)
	if err != nil {
		return nil, fmt.Errorf("gzip layer, local tar %s: %w", l.DiffID, err)
	}
	idx.Format = layer.FormatGzip
	return idx, nil
}

func diffDigest(l LayerRef) (digest.Digest, error) {
	if l.DiffID.Algorithm != "sha256" || len(l.DiffID.Hex) != 64 {
		return "", fmt.Errorf("gzip layer without a sha256 diff_id (%q): its content cannot be verified", l.DiffID)
	}
	return digest.Digest(l.DiffID.String()), nil
}

// openDiff opens (and so pins) the uncompressed tar of gzip layer l in the
// store, downloading it when it is not there. Concurrent callers share one
// download, which runs on when they give up so that a later call finds it.
func (e *Engine) openDiff(ctx context.Context, l LayerRef) (*store.File, error) {
	d, err := diffDigest(l)
	if err != nil {
		return nil, err
	}
	if f, err := e.st.Open(d); err == nil || !errors.Is(err, fs.ErrNotExist) {
		return f, err
	}
	_, err = e.downloads.do(ctx, e.life, d.String(), func(ctx context.Context) (struct{}, error) {
		return struct{}{}, e.download(ctx, l, d)
	})
	if err != nil {
		return nil, err
	}
	// Evicted again in between: the caller sees fs.ErrNotExist and may retry.
	return e.st.Open(d)
}

// download streams l's blob through gzip into the store as d.
func (e *Engine) download(ctx context.Context, l LayerRef, d digest.Digest) error {
	if e.st.Has(d) {
		return nil
	}
	var c Counters
	defer e.account(ctx, &c)
	rc, err := e.openStream(ctx, l, &c)
	if err != nil {
		return err
	}
	defer rc.Close()
	zr, err := gzip.NewReader(rc)
	if err != nil {
		return fmt.Errorf("download %s: gzip: %w", l, err)
	}
	// gzip stops at the end of the last member; the compressed stream must
	// end there too, with its digest checked, before Put may commit.
	if err := e.st.Put(d, &drainAtEOF{r: zr, rest: rc}); err != nil {
		return fmt.Errorf("download %s: %w", l, err)
	}
	e.bump(func(s *EngineStats) { s.Downloads++ })
	return nil
}

// openStream opens l's whole blob as a stream whose size and digest are
// checked at its end (an error instead of io.EOF). A registry stream is
// one GET without Range; its headers must come within Options.Timeout, and
// it fails when no body byte arrives for Options.Timeout (ctx bounds the
// whole). c counts the request and the bytes.
func (e *Engine) openStream(ctx context.Context, l LayerRef, c *Counters) (io.ReadCloser, error) {
	shared := e.res.opts.Counters
	if l.Layout != "" {
		p, err := blobPath(l.Layout, l.Desc.Digest)
		if err != nil {
			return nil, err
		}
		c.add(shared, 1, 0, 0, 0)
		f, err := os.Open(p)
		if err != nil {
			c.add(shared, 0, 0, 1, 0)
			return nil, fmt.Errorf("download %s: %w", l, err)
		}
		v, err := newVerifier(streamCloser{&countingReader{r: f, c: c, shared: shared}, f}, l.Desc)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("download %s: %w", l, err)
		}
		return v, nil
	}
	repo, err := e.repo(l)
	if err != nil {
		return nil, err
	}
	rt, err := e.res.Transport(ctx, repo)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	dog := &watchdog{d: e.res.opts.Timeout, t: time.AfterFunc(e.res.opts.Timeout, cancel)}
	fail := func(err error) (io.ReadCloser, error) {
		dog.t.Stop()
		cancel()
		c.add(shared, 0, 0, 1, 0)
		return nil, fmt.Errorf("resolver: GET %s: %w", l, err)
	}
	u := fmt.Sprintf("%s://%s/v2/%s/blobs/%s", repo.Registry.Scheme(), repo.RegistryStr(), repo.RepositoryStr(), l.Desc.Digest)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return fail(err)
	}
	c.add(shared, 1, 0, 0, 0)
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
	dog.r = &countingReader{r: resp.Body, c: c, shared: shared}
	body := streamCloser{dog, closerFunc(func() error {
		dog.t.Stop()
		cancel()
		return resp.Body.Close()
	})}
	v, err := newVerifier(body, l.Desc)
	if err != nil {
		body.Close()
		return nil, fmt.Errorf("download %s: %w", l, err)
	}
	return v, nil
}

// watchdog re-arms its timer on every read that returns bytes: a body that
// stalls for d is canceled.
type watchdog struct {
	r io.Reader
	t *time.Timer
	d time.Duration
}

func (w *watchdog) Read(p []byte) (int, error) {
	n, err := w.r.Read(p)
	if n > 0 {
		w.t.Reset(w.d)
	}
	return n, err
}

type streamCloser struct {
	io.Reader
	io.Closer
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

// drainAtEOF reads r; at r's end it reads rest to its end, so that an error
// rest reports there (a digest mismatch) comes before io.EOF.
type drainAtEOF struct {
	r    io.Reader
	rest io.Reader
}

func (d *drainAtEOF) Read(p []byte) (int, error) {
	n, err := d.r.Read(p)
	if errors.Is(err, io.EOF) {
		if _, derr := io.Copy(io.Discard, d.rest); derr != nil {
			return n, derr
		}
	}
	return n, err
}
