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
// every core, every file checked against the TOC as it streams to disk (an
// eStargz TOC the manifest does not vouch for is first checked against the
// tar, as the mount does). What it writes is bounded by the free space of
// the dir's file system. A KEY dir with bad content is left out and
// reported, the others installed; a layer that cannot be trusted installs
// nothing. Nothing is fsynced: an interrupted unpack leaves its stage dir,
// never a half KEY dir.
package image

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"strings"
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
	Entries []triton.Entry // sorted by KEY, whatever the layer's order
	Skipped []triton.Skipped
	// Unknown are the KEYs of the access order (PackOrdered,
	// PrepareOrdered) that the dir does not hold (ignored).
	Unknown []string

	layer *lazyLayer
}

// Built describes the layer once it has been built: by Pack, or by
// writing Image. Before, it returns an error matching
// stream.ErrNotComputed.
func (p *Packed) Built() (layer.Built, error) { return p.layer.result() }

// Close removes the staged layer file, if any. The image must not be used
// after.
func (p *Packed) Close() error { return p.layer.close() }

// Pack scans dir and builds its cache image, KEY dirs sorted by KEY in the
// layer, staging the layer in a temp file under tmp ("" for the system temp
// dir) so that every digest is known before the image is written. title
// goes into org.opencontainers.image.title.
func Pack(ctx context.Context, dir, title, tmp string) (*Packed, error) {
	return PackOrdered(ctx, dir, title, tmp, nil)
}

// PackOrdered is Pack with an access order (ReadOrder): the KEY dirs order
// names come first in the layer, in that order, so that a workload's hot
// set is one contiguous range for lazy readers (what eStargz's prioritized
// files do for containers); the other KEY dirs follow sorted, as Pack
// writes them. KEYs of order the dir does not hold are ignored and listed
// in Packed.Unknown. The same dir and order give the same digest; a nil
// order gives Pack's.
func PackOrdered(ctx context.Context, dir, title, tmp string, order []string) (*Packed, error) {
	p, err := PrepareOrdered(ctx, dir, title, order)
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
	return PrepareOrdered(ctx, dir, title, nil)
}

// PrepareOrdered is Prepare with an access order, as PackOrdered.
func PrepareOrdered(ctx context.Context, dir, title string, order []string) (*Packed, error) {
	entries, skipped, err := triton.Scan(dir)
	if err != nil {
		return nil, fmt.Errorf("image: pack %s: %w", dir, err)
	}
	labels, err := triton.Labels(entries, title)
	if err != nil {
		return nil, fmt.Errorf("image: pack %s: %w", dir, err)
	}
	inLayer, unknown := ordered(entries, order)
	p := &Packed{Entries: entries, Skipped: skipped, Unknown: unknown, layer: &lazyLayer{ctx: ctx, dir: dir, entries: inLayer}}
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

// ordered returns entries (sorted by KEY) with the KEYs of order first, in
// that order (a KEY named twice counts at its first place), then the rest
// as they were; and the KEYs of order that entries lack.
func ordered(entries []triton.Entry, order []string) ([]triton.Entry, []string) {
	if len(order) == 0 {
		return entries, nil
	}
	byKey := make(map[string]int, len(entries))
	for i, e := range entries {
		byKey[e.Key] = i
	}
	out := make([]triton.Entry, 0, len(entries))
	placed := make(map[string]bool, len(order))
	var unknown []string
	for _, k := range order {
		i, ok := byKey[k]
		switch {
		case placed[k]:
		case !ok:
			unknown = append(unknown, k)
		default:
			out = append(out, entries[i])
		}
		placed[k] = true
	}
	for _, e := range entries {
		if !placed[e.Key] {
			out = append(out, e)
		}
	}
	return out, unknown
}

// ReadOrder reads an access order: KEYs one a line, as cargohold-fs
// records them (cargohold-fs status --trace); blank lines and lines
// starting with '#' are skipped. A line that is not a KEY is an error.
func ReadOrder(r io.Reader) ([]string, error) {
	var keys []string
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if !triton.IsKey(line) {
			return nil, fmt.Errorf("image: order: line %d: %q is not a cache KEY", n, line)
		}
		keys = append(keys, line)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("image: order: %w", err)
	}
	return keys, nil
}
