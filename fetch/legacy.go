package fetch

import (
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"

	digest "github.com/opencontainers/go-digest"

	"cargohold/layer"
	"cargohold/resolver"
	"cargohold/store"
)

// A gzip layer that is not eStargz has no random access: it is one more
// byte source (fromDiff). It is downloaded once in full (resolver.Stream,
// digest verified), decompressed into the content store under its DiffID
// (verified by the store), and indexed and read there.
//
// Debt: the whole download is one attempt (no retry), and the local tar
// stays in the store beside the files fetched out of it until evicted.

// indexGzip indexes the local tar of gzip layer l, downloading it first.
func (e *Engine) indexGzip(ctx context.Context, l resolver.LayerRef) (*indexed, error) {
	f, err := e.openDiff(ctx, l)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	idx, err := layer.OpenGunzipped(f, f.Size())
	if err != nil {
		return nil, fmt.Errorf("gzip layer, local tar %s: %w", l.DiffID, err)
	}
	return &indexed{Index: idx, src: fromDiff}, nil
}

func diffDigest(l resolver.LayerRef) (digest.Digest, error) {
	if l.DiffID.Algorithm != "sha256" || len(l.DiffID.Hex) != 64 {
		return "", fmt.Errorf("gzip layer without a sha256 diff_id (%q): its content cannot be verified", l.DiffID)
	}
	return digest.Digest(l.DiffID.String()), nil
}

// openDiff opens (and so pins) the uncompressed tar of gzip layer l in the
// store, downloading it when it is not there. Concurrent callers share one
// download, which runs on when they give up so that a later call finds it.
func (e *Engine) openDiff(ctx context.Context, l resolver.LayerRef) (*store.File, error) {
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
func (e *Engine) download(ctx context.Context, l resolver.LayerRef, d digest.Digest) error {
	if e.st.Has(d) {
		return nil
	}
	s, err := e.res.Stream(ctx, l)
	if err != nil {
		return err
	}
	defer s.Close()
	defer e.account(ctx, s.Counters())
	zr, err := gzip.NewReader(s)
	if err != nil {
		return fmt.Errorf("download %s: gzip: %w", l, err)
	}
	// gzip stops at the end of the last member; the compressed stream must
	// end there too, with its digest checked, before Put may commit.
	if err := e.st.Put(d, &drainAtEOF{r: zr, rest: s}); err != nil {
		return fmt.Errorf("download %s: %w", l, err)
	}
	e.bump(func(s *Stats) { s.Downloads++ })
	return nil
}

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
