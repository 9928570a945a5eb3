// Package image turns Triton cache dirs into cache images and back: it packs
// a dir into a one-layer eStargz OCI image with cargohold's labels, and
// unpacks the entries of an image that fit the local GPU into a dir.
//
// Packing is reproducible: the same dir gives the same digest on any machine
// and any number of cores. Prepare's image builds its layer while it is
// written (one pass into the upload or the layout blob); Pack stages it
// first when the digest must be known before.
//
// Unpacking never writes outside its dir, never overwrites a local KEY dir,
// and installs each KEY dir whole (temp dir, then rename). A layer blob is
// downloaded and its digest checked before any of it is unpacked; an
// indexed layer (eStargz, plain tar) is then unpacked KEY dir by KEY dir on
// every core, every file checked against the TOC. Nothing is fsynced: an
// interrupted unpack leaves its stage dir, never a half KEY dir.
package image

import (
	"context"
	"fmt"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"cargohold/layer"
	"cargohold/triton"
)

// Packed is a cache image ready to be written. Its layer is built while it
// is written (Save or Push read it once, into the layout's blob file or
// into the upload) unless Pack staged it in a temp file first; its digests
// are known once it has been built (Built).
type Packed struct {
	Image   v1.Image
	Entries []triton.Entry
	Skipped []triton.Skipped

	layer *lazyLayer
}

// Built describes the layer once it has been built: by Pack, or by
// writing Image. Before, it returns an error matching
// stream.ErrNotComputed.
func (p *Packed) Built() (layer.Built, error) { return p.layer.result() }

// Close removes the staged layer file, if any. The image must not be used
// after.
func (p *Packed) Close() error { return p.layer.close() }

// Pack scans dir and builds its cache image, staging the layer in a temp
// file under tmp ("" for the system temp dir) so that every digest is
// known before the image is written. title goes into
// org.opencontainers.image.title.
func Pack(ctx context.Context, dir, title, tmp string) (*Packed, error) {
	p, err := Prepare(ctx, dir, title)
	if err != nil {
		return nil, err
	}
	if err := p.layer.stage(tmp); err != nil {
		return nil, fmt.Errorf("image: pack %s: %w", dir, err)
	}
	return p, nil
}

// Prepare scans dir and returns its cache image without building the
// layer: writing the image (resolver.Push, resolver.Save) builds it as it
// goes, in one pass, and ctx bounds that build. Until then the image's
// digest is unknown (stream.ErrNotComputed); each read of the layer builds
// it again, with the same bytes.
func Prepare(ctx context.Context, dir, title string) (*Packed, error) {
	entries, skipped, err := triton.Scan(dir)
	if err != nil {
		return nil, fmt.Errorf("image: pack %s: %w", dir, err)
	}
	labels, err := triton.Labels(entries, title)
	if err != nil {
		return nil, fmt.Errorf("image: pack %s: %w", dir, err)
	}
	p := &Packed{Entries: entries, Skipped: skipped, layer: &lazyLayer{ctx: ctx, dir: dir, entries: entries}}
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
		return nil, fmt.Errorf("image: pack: config: %w", err)
	}
	// The eStargz annotations come from the layer's Descriptor, once built.
	img, err := mutate.Append(base, mutate.Addendum{
		Layer:     p.layer,
		MediaType: types.OCILayer,
		History:   v1.History{Created: epoch, CreatedBy: "cargohold -c", Comment: "Triton kernel cache"},
	})
	if err != nil {
		return nil, fmt.Errorf("image: pack: %w", err)
	}
	p.Image = img
	return p, nil
}
