package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"slices"
	"time"

	"cargohold/fetch"
	"cargohold/internal/cli"
	"cargohold/internal/userdir"
	"cargohold/kind"
	"cargohold/resolver"
	"cargohold/store"
)

// fetchKeys fetches single units of an image (Triton KEY dirs, vLLM or
// Inductor dirs by their path under the root) with ranged reads into the
// content store of the state dir, installs them into the cache root -d DIR
// when given (with the kind's rewrites), and prints what each cost.
func fetchKeys(ctx context.Context, o options, ropts resolver.Options, log *slog.Logger) error {
	state := o.stateDir
	if state == "" {
		d, err := fetch.DefaultStateDir()
		if err != nil {
			return fmt.Errorf("fetch: no state dir: %w; name one with --state-dir", err)
		}
		state = d
	}
	if err := userdir.Ensure(state); err != nil {
		return fmt.Errorf("fetch: state dir %s: %w; use a dir only you own and may write (--state-dir)", state, err)
	}
	st, err := store.Open(fetch.StoreDir(state), 0)
	if err != nil {
		return fmt.Errorf("fetch: %w", err)
	}
	defer st.Close()
	res := resolver.New(ropts)
	im, err := res.Fetch(ctx, o.image)
	if err != nil {
		return fmt.Errorf("fetch: %w", err)
	}
	e := fetch.NewEngine(res, st, state)
	defer e.Close()

	// The kind from the labels, else from the first layer holding a
	// cache, as the catalog and extract take it.
	k := kind.KindOfLabels(im.Labels)
	for i := 0; k == "" && i < len(im.Layers); i++ {
		u, err := e.Units(ctx, im.LayerRef(i))
		if err != nil {
			return fmt.Errorf("fetch: %w", err)
		}
		k = u.Kind
	}
	// Sorted, a unit comes before the units below it (a vLLM rank dir
	// before its inductor_cache/ units): installed after them, its dir
	// would exist already.
	slices.Sort(o.keys)
	failed := 0
	for _, key := range o.keys {
		var c resolver.Counters
		start := time.Now()
		files, _, err := e.ImageKey(fetch.WithCounters(ctx, &c), im, key)
		if err != nil {
			log.Error("fetch failed", "key", key, "err", err)
			failed++
			continue
		}
		var size int64
		for _, f := range files {
			size += f.Size
		}
		took := time.Since(start)
		if o.dir != "" {
			switch err := e.Install(o.dir, k, key, files); {
			case errors.Is(err, fs.ErrExist):
				log.Warn("kept the local unit", "unit", key, "dir", o.dir)
			case err != nil:
				log.Error("install failed", "key", key, "err", err)
				failed++
			}
		}
		fmt.Printf("%s  %d files  %s  %d requests  %s received  %s\n", key, len(files), cli.Bytes(size),
			c.Requests(), cli.Bytes(c.Bytes()), took.Round(time.Millisecond))
	}
	s := e.Stats()
	fmt.Printf("total: %d KEYs, %d fetched, %d already stored, %d layer indexes built, %d from cache, %d downloads, %d requests, %s received\n",
		len(o.keys), s.Fetches, s.Hits, s.Indexes, s.IndexCacheHits, s.Downloads, s.Requests, cli.Bytes(s.Bytes))
	if failed > 0 {
		return fmt.Errorf("fetch: %d of %d KEYs failed", failed, len(o.keys))
	}
	return nil
}
