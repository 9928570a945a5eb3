package resolver

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"os"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

func (im *Image) layer(i int) (v1.Descriptor, error) {
	if i < 0 || i >= len(im.Layers) {
		return v1.Descriptor{}, fmt.Errorf("resolver: image %s: no layer %d (it has %d)", im.Ref, i, len(im.Layers))
	}
	return im.Layers[i].Desc, nil
}

// Blob opens layer i for ranged reads: a FileBlob for a local image, a
// RegistryBlob (sharing the repository's transport and the resolver's
// counters) otherwise. ctx is the one ReadAt uses. The caller closes it.
func (im *Image) Blob(ctx context.Context, i int) (Blob, error) {
	d, err := im.layer(i)
	if err != nil {
		return nil, err
	}
	if im.Local {
		return OpenFileBlob(im.Layout, d, im.res.opts)
	}
	rt, err := im.res.Transport(ctx, im.Repo)
	if err != nil {
		return nil, err
	}
	return NewRegistryBlob(ctx, rt, im.Repo, d, im.res.opts)
}

// LayerReader streams layer i's compressed blob whole. The digest is
// verified: by go-containerregistry for a registry blob, here for a local
// one; a mismatch is an error at the end of the stream, so consumers must
// read to io.EOF before trusting what they read. Options.Progress, when set,
// sees the bytes go by.
func (im *Image) LayerReader(ctx context.Context, i int) (io.ReadCloser, error) {
	d, err := im.layer(i)
	if err != nil {
		return nil, err
	}
	var rc io.ReadCloser
	if im.Local {
		p, err := blobPath(im.Layout, d.Digest)
		if err != nil {
			return nil, err
		}
		f, err := os.Open(p)
		if err != nil {
			return nil, fmt.Errorf("resolver: open layer %d of %s: %w", i, im.Ref, err)
		}
		rc, err = newVerifier(f, d)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("resolver: open layer %d of %s: %w", i, im.Ref, err)
		}
	} else {
		rt, err := im.res.Transport(ctx, im.Repo)
		if err != nil {
			return nil, err
		}
		l, err := remote.Layer(im.Repo.Digest(d.Digest.String()), im.res.remoteOptions(ctx, rt)...)
		if err != nil {
			return nil, fmt.Errorf("resolver: open layer %d of %s: %w", i, im.Ref, err)
		}
		if rc, err = l.Compressed(); err != nil {
			return nil, fmt.Errorf("resolver: GET layer %d of %s (%s): %w", i, im.Ref, d.Digest, err)
		}
	}
	if im.res.opts.Progress != nil {
		rc = &progressReader{rc: rc, total: d.Size, fn: im.res.opts.Progress}
	}
	return rc, nil
}

// verifier checks size and digest of a whole stream at its end.
type verifier struct {
	rc   io.ReadCloser
	h    hash.Hash
	want v1.Hash
	size int64
	n    int64
}

func newVerifier(rc io.ReadCloser, d v1.Descriptor) (*verifier, error) {
	if d.Digest.Algorithm != "sha256" {
		return nil, fmt.Errorf("unsupported digest algorithm %q", d.Digest.Algorithm)
	}
	return &verifier{rc: rc, h: sha256.New(), want: d.Digest, size: d.Size}, nil
}

func (v *verifier) Read(p []byte) (int, error) {
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

func (v *verifier) Close() error { return v.rc.Close() }

// progressReader reports bytes read so far.
type progressReader struct {
	rc    io.ReadCloser
	total int64
	done  int64
	fn    func(v1.Update)
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.rc.Read(b)
	if n > 0 {
		p.done += int64(n)
		p.fn(v1.Update{Total: p.total, Complete: p.done})
	}
	if err != nil && err != io.EOF {
		p.fn(v1.Update{Total: p.total, Complete: p.done, Error: err})
	}
	return n, err
}

func (p *progressReader) Close() error { return p.rc.Close() }
