package fetch

import (
	"cmp"
	"context"
	"fmt"
	"io/fs"
	"slices"
	"sync"

	"cargohold/resolver"
)

// A KEY dir may be spread over several layers of an image: unpacking takes
// every io.triton.cache/ entry, later layers winning file by file, so the
// dir a reader sees is the union of the layers' dirs with each file taken
// from the last layer that holds it.

// Key fetches KEY dir key as layers (in layer order, each holding it) make
// it up: the layers that contribute a file the later ones do not override
// are fetched (concurrently, Dir) and merged, a later layer's file winning.
// One failed fetch fails the whole: a partial kernel dir is worse than none.
// The files are sorted by name.
func (e *Engine) Key(ctx context.Context, layers []resolver.LayerRef, key string) ([]KeyFile, error) {
	if len(layers) == 0 {
		return nil, fmt.Errorf("fetch: KEY %s: no layers: %w", key, fs.ErrNotExist)
	}
	if len(layers) == 1 {
		return e.Dir(ctx, layers[0], key)
	}
	// Which layers contribute: from the last one back, a layer whose every
	// file a later layer overrides is not fetched.
	var use []resolver.LayerRef
	seen := map[string]bool{}
	for i := len(layers) - 1; i >= 0; i-- {
		idx, err := e.Index(ctx, layers[i])
		if err != nil {
			return nil, err
		}
		d := idx.Dirs[key]
		if d == nil {
			return nil, fmt.Errorf("fetch: layer %s: KEY %s: %w", layers[i], key, fs.ErrNotExist)
		}
		adds := i == len(layers)-1
		for _, f := range d.Files {
			if !seen[f.Name] {
				seen[f.Name] = true
				adds = true
			}
		}
		if adds {
			use = append(use, layers[i])
		}
	}
	slices.Reverse(use)
	got := make([][]KeyFile, len(use))
	errs := make([]error, len(use))
	var wg sync.WaitGroup
	for i, l := range use {
		wg.Go(func() { got[i], errs[i] = e.Dir(ctx, l, key) })
	}
	wg.Wait()
	byName := map[string]KeyFile{}
	for i := range use {
		if errs[i] != nil {
			return nil, errs[i]
		}
		for _, f := range got[i] {
			byName[f.Name] = f
		}
	}
	files := make([]KeyFile, 0, len(byName))
	for _, f := range byName {
		files = append(files, f)
	}
	slices.SortFunc(files, func(a, b KeyFile) int { return cmp.Compare(a.Name, b.Name) })
	return files, nil
}

// ImageKey fetches KEY dir key of im as unpacking im would make it: every
// layer is indexed, and the dirs of the layers holding key are merged (Key).
// It returns the files and the last layer holding key. An image without
// key gives an error wrapping fs.ErrNotExist.
func (e *Engine) ImageKey(ctx context.Context, im *resolver.Image, key string) ([]KeyFile, resolver.LayerRef, error) {
	var held []resolver.LayerRef
	for i := range im.Layers {
		l := im.LayerRef(i)
		idx, err := e.Index(ctx, l)
		if err != nil {
			return nil, l, err
		}
		if idx.Dirs[key] != nil {
			held = append(held, l)
		}
	}
	if len(held) == 0 {
		return nil, resolver.LayerRef{}, fmt.Errorf("fetch: image %s: no KEY dir %s in its %d layer(s): %w", im.Ref, key, len(im.Layers), fs.ErrNotExist)
	}
	last := held[len(held)-1]
	files, err := e.Key(ctx, held, key)
	return files, last, err
}
