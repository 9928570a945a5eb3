// Package image turns compile caches (package kind: Triton, vLLM, Inductor)
// into cache images and back: it packs a cache root into a one-layer
// eStargz OCI image under MCV's prefix, with MCV's manifest and labels and
// cargohold's own, and unpacks the units of an image that fit the local GPU
// into a cache root.
//
// Packing is reproducible: the same dir gives the same digest on any machine
// and any number of cores. Files are stored as they are on disk. Prepare's
// image builds its layer while it is written (one pass into the upload or
// the layout blob); Pack stages it first when the digest must be known
// before.
//
// Unpacking never writes outside its dir, never overwrites a local unit
// dir, and installs each unit whole (temp dir, then rename; the dirs above
// it are made as needed), with the kind's rewrites (kind.RewriteOf) to the
// dir it is installed in. A layer blob is downloaded and its digest checked
// before any of it is unpacked; an indexed layer (eStargz, plain tar) is
// then unpacked unit by unit on every core, every file checked against the
// TOC as it streams to disk (an eStargz TOC the manifest does not vouch for
// is first checked against the tar, as the mount does). What it writes is
// bounded by the free space of the dir's file system. A unit with bad
// content is left out and reported, the others installed; a layer that
// cannot be trusted installs nothing. Nothing is fsynced: an interrupted
// unpack leaves its stage dir, never a half unit.
package image

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"cargohold/gpu"
	"cargohold/kind"
	"cargohold/layer"
	"cargohold/triton"
)

// Packed is a cache image ready to be written. Its layer is built while it
// is written (Save or Push read it once, into the layout's blob file or
// into the upload) unless Pack staged it in a temp file first; its digests
// are known once it has been built (Built).
type Packed struct {
	Image   v1.Image
	Tree    *kind.Tree     // the units, sorted by path, whatever the layer's order
	Entries []triton.Entry // the Triton units (Tree.Entries)
	Targets []gpu.Target   // what the summary label names
	Labels  map[string]string
	// Unknown are the KEYs of the access order (Options.Order) that the
	// dir does not hold (ignored).
	Unknown []string

	layer *lazyLayer
}

// Options say what PrepareKind packs.
type Options struct {
	// Kind is the cache's kind; "" detects it (kind.Detect).
	Kind kind.Kind
	// Title goes into org.opencontainers.image.title.
	Title string
	// Order, for a Triton cache, lists KEYs (ReadOrder) whose dirs come
	// first in the layer, in that order, so that a workload's hot set is
	// one contiguous range for lazy readers (what eStargz's prioritized
	// files do for containers); the other units follow sorted. The same
	// dir and order give the same digest; nil: sorted, as Pack writes.
	Order []string
	// Targets, when set, gives the GPU targets of units no kernel JSON
	// describes (kind.Labels); it is called only when such units are
	// packed. Default none: such a cache is refused (kind.ErrNoTargets).
	Targets func() ([]gpu.Target, error)
}

// Built describes the layer once it has been built: by Pack, or by
// writing Image. Before, it returns an error matching
// stream.ErrNotComputed.
func (p *Packed) Built() (layer.Built, error) { return p.layer.result() }

// Close removes the staged layer file, if any. The image must not be used
// after.
func (p *Packed) Close() error { return p.layer.close() }

// Pack scans the Triton cache dir and builds its cache image, KEY dirs
// sorted by KEY in the layer, staging the layer in a temp file under tmp ("" for the system temp
// dir) so that every digest is known before the image is written. title
// goes into org.opencontainers.image.title.
func Pack(ctx context.Context, dir, title, tmp string) (*Packed, error) {
	return PackKind(ctx, dir, Options{Kind: kind.Triton, Title: title}, tmp)
}

// PackKind is PrepareKind with the layer staged under tmp, as Pack does.
func PackKind(ctx context.Context, dir string, o Options, tmp string) (*Packed, error) {
	p, err := PrepareKind(ctx, dir, o)
	if err != nil {
		return nil, err
	}
	if err := p.layer.stage(tmp); err != nil {
		return nil, fmt.Errorf("image: pack %s: %w", dir, err)
	}
	return p, nil
}

// Prepare scans the Triton cache dir and returns its cache image without
// building the layer: writing the image (resolver.Push, resolver.Save) builds it as it
// goes, in one pass, and ctx bounds that build. Until then the image's
// digest is unknown (stream.ErrNotComputed); each read of the layer builds
// it again, with the same bytes.
func Prepare(ctx context.Context, dir, title string) (*Packed, error) {
	return PrepareKind(ctx, dir, Options{Kind: kind.Triton, Title: title})
}

// PrepareKind scans the cache root dir of kind o.Kind (detected when "")
// and returns its image as Prepare does: one layer of the units under the
// kind's prefix, sorted by path (a Triton access order first), MCV's
// manifest beside them, MCV's labels and cargohold's (kind.Labels).
func PrepareKind(ctx context.Context, dir string, o Options) (*Packed, error) {
	k := o.Kind
	if k == "" {
		var err error
		if k, err = kind.Detect(dir); err != nil {
			return nil, fmt.Errorf("image: pack: %w", err)
		}
	}
	if len(o.Order) > 0 && k != kind.Triton {
		return nil, fmt.Errorf("image: pack %s: an access order names Triton KEYs; this is a %s cache", dir, k)
	}
	tree, err := kind.Scan(dir, k)
	if err != nil {
		return nil, fmt.Errorf("image: pack %s: %w", dir, err)
	}
	labels, targets, err := kind.Labels(tree, nil, o.Title)
	if errors.Is(err, kind.ErrNoTargets) && o.Targets != nil {
		var gpus []gpu.Target
		if gpus, err = o.Targets(); err == nil {
			labels, targets, err = kind.Labels(tree, gpus, o.Title)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("image: pack %s: %w", dir, err)
	}
	manifest, err := kind.Manifest(tree)
	if err != nil {
		return nil, fmt.Errorf("image: pack %s: %w", dir, err)
	}
	inLayer, unknown := ordered(tree.Units, o.Order)
	p := &Packed{Tree: tree, Entries: tree.Entries(), Targets: targets, Labels: labels,
		Unknown: unknown,
		layer:   &lazyLayer{ctx: ctx, src: layer.Source{Kind: k, Dir: dir, Units: inLayer, Manifest: manifest}}}
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
	what := map[kind.Kind]string{kind.Triton: "Triton kernel cache", kind.VLLM: "vLLM compile cache", kind.Inductor: "PyTorch Inductor cache"}[k]
	img, err := mutate.Append(base, mutate.Addendum{
		Layer:     p.layer,
		MediaType: types.OCILayer,
		History:   v1.History{Created: epoch, CreatedBy: "cargohold -c", Comment: what},
	})
	if err != nil {
		return nil, fmt.Errorf("image: pack: %w", err)
	}
	p.Image = img
	return p, nil
}

// ordered returns units (sorted by path) with the paths of order first, in
// that order (one named twice counts at its first place), then the rest as
// they were; and the paths of order that units lack.
func ordered(entries []kind.Unit, order []string) ([]kind.Unit, []string) {
	if len(order) == 0 {
		return entries, nil
	}
	byKey := make(map[string]int, len(entries))
	for i, e := range entries {
		byKey[e.Path] = i
	}
	out := make([]kind.Unit, 0, len(entries))
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
		if !placed[e.Path] {
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
