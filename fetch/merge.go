package resolver

import (
	"cmp"
	"context"
	"fmt"
	"io/fs"
	"slices"
	"sync"
)

// A KEY dir may be spread over several layers of an image: unpacking takes
// every io.triton.cache/ entry, later layers winning file by file, so the
// dir a reader sees is the union of the layers' dirs with each file taken
// from the last layer that holds it.

// fetchMerged fetches KEY dir key as layers (in layer order, each holding
// it) make it up: the layers that contribute a file the later ones do not
// override are fetched (concurrently) and merged, a later layer's file
// winning. One failed fetch fails the whole: a partial kernel dir is worse
// than none. The files are sorted by name.
func (e *Engine) fetchMerged(ctx context.Context, layers []LayerRef, key string) ([]KeyFile, error) {
	if len(layers) == 1 {
		return e.FetchDir(ctx, layers[0], key)
	}
	// Which layers contribute: from the last one back, a layer whose every
	// file a later layer overrides is not fetched.
	var use []LayerRef
	seen := map[string]bool{}
	for i := len(layers) - 1; i >= 0; i-- {
		idx, err := e.Index(ctx, layers[i])
		if err != nil {
			return nil, err
		}
		d := idx.Dirs[key]
		if d == nil {
			return nil, fmt.Errorf("resolver: layer %s: KEY %s: %w", layers[i], key, fs.ErrNotExist)
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
		wg.Go(func() { got[i], errs[i] = e.FetchDir(ctx, l, key) })
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
