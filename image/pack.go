// Package image turns Triton cache dirs into cache images and back: it packs
// a dir into a one-layer eStargz OCI image with cargohold's labels, and
// unpacks the entries of an image that fit the local GPU into a dir.
//
// Packing is reproducible: the same dir gives the same digest on any machine.
// Unpacking never writes outside its dir, never overwrites a local KEY dir,
// and installs each KEY dir whole (temp dir, then rename).
package image

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
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
	Entries []triton.Entry // sorted by KEY, whatever the layer's order
	Skipped []triton.Skipped
	Layer   layer.Built
	// Unknown are the KEYs of PackOrdered's order that the dir does not
	// hold (ignored).
	Unknown []string

	blob string
}

// Close removes the temp layer file. The image must not be used after.
func (p *Packed) Close() error { return os.RemoveAll(filepath.Dir(p.blob)) }

// Pack scans dir and builds its cache image, KEY dirs sorted by KEY in the
// layer. title goes into org.opencontainers.image.title. tmp is where the
// layer is staged ("" for the system temp dir).
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
	inLayer, unknown := ordered(entries, order)
	p := &Packed{Entries: entries, Skipped: skipped, Unknown: unknown, blob: filepath.Join(stage, "layer.tar.gz")}
	if err := p.build(ctx, dir, labels, inLayer); err != nil {
		p.Close()
		return nil, err
	}
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

func (p *Packed) build(ctx context.Context, dir string, labels map[string]string, inLayer []triton.Entry) error {
	f, err := os.Create(p.blob)
	if err != nil {
		return fmt.Errorf("image: pack: %w", err)
	}
	built, err := layer.Build(ctx, f, dir, inLayer)
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
