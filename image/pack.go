// Package image turns Triton cache dirs into cache images and back: it packs
// a dir into a one-layer eStargz OCI image with cargohold's labels, and
// unpacks the entries of an image that fit the local GPU into a dir.
//
// Packing is reproducible: the same dir gives the same digest on any machine.
// Unpacking never writes outside its dir, never overwrites a local KEY dir,
// and installs each KEY dir whole (temp dir, then rename).
package image

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"cargohold/layer"
	"cargohold/triton"
)

// Packed is a built image whose layer lives in a temp file until Close.
type Packed struct {
	Image   v1.Image
	Entries []triton.Entry
	Skipped []triton.Skipped
	Layer   layer.Built

	blob string
}

// Close removes the temp layer file. The image must not be used after.
func (p *Packed) Close() error { return os.RemoveAll(filepath.Dir(p.blob)) }

// Pack scans dir and builds its cache image. title goes into
// org.opencontainers.image.title. tmp is where the layer is staged ("" for
// the system temp dir).
func Pack(ctx context.Context, dir, title, tmp string) (*Packed, error) {
	entries, skipped, err := triton.Scan(dir)
	if err != nil {
		return nil, fmt.Errorf("image: pack %s: %w", dir, err)
	}
	labels, err := triton.Labels(entries, title)
	if err != nil {
		return nil, fmt.Errorf("image: pack %s: %w", dir, err)
	}
	stage, err := os.MkdirTemp(tmp, "cargohold-pack-")
	if err != nil {
		return nil, fmt.Errorf("image: pack: %w", err)
	}
	p := &Packed{Entries: entries, Skipped: skipped, blob: filepath.Join(stage, "layer.tar.gz")}
	if err := p.build(ctx, dir, labels); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

func (p *Packed) build(ctx context.Context, dir string, labels map[string]string) error {
	f, err := os.Create(p.blob)
	if err != nil {
		return fmt.Errorf("image: pack: %w", err)
	}
	built, err := layer.Build(ctx, f, dir, p.Entries)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("image: pack %s: %w", dir, err)
	}
	p.Layer = built
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return os.Open(p.blob) },
		tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return fmt.Errorf("image: pack: layer: %w", err)
	}
	// Fixed times and platform: part of what makes the digest reproducible.
	epoch := v1.Time{Time: time.Unix(0, 0).UTC()}
	base := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	base = mutate.ConfigMediaType(base, types.OCIConfigJSON)
	base, err = mutate.ConfigFile(base, &v1.ConfigFile{
		Architecture: "amd64",
		OS:           "linux",
		Created:      epoch,
		Config:       v1.Config{Labels: labels},
		RootFS:       v1.RootFS{Type: "layers"},
	})
	if err != nil {
		return fmt.Errorf("image: pack: config: %w", err)
	}
	img, err := mutate.Append(base, mutate.Addendum{
		Layer:     l,
		MediaType: types.OCILayer,
		History:   v1.History{Created: epoch, CreatedBy: "cargohold -c", Comment: "Triton kernel cache"},
		Annotations: map[string]string{
			layer.AnnotationTOCDigest:        built.TOCDigest.String(),
			layer.AnnotationUncompressedSize: fmt.Sprint(built.UncompressedSize),
		},
	})
	if err != nil {
		return fmt.Errorf("image: pack: %w", err)
	}
	p.Image = img
	return nil
}
