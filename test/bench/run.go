package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"

	"cargohold/fetch"
	"cargohold/gpu"
	"cargohold/image"
	"cargohold/internal/cli"
	"cargohold/resolver"
	"cargohold/store"
	"cargohold/test/proxy"
	"cargohold/test/registry"
	"cargohold/triton/gen"
)

func run(ctx context.Context, o options, out io.Writer) error {
	work := o.work
	if work == "" {
		var err error
		if work, err = os.MkdirTemp("", "cargohold-bench-"); err != nil {
			return err
		}
	}
	if !o.keepWork {
		defer os.RemoveAll(work)
	}
	say := func(format string, args ...any) { fmt.Fprintf(out, format+"\n", args...) }

	// The image.
	start := time.Now()
	cacheDir := filepath.Join(work, "cache")
	entries, err := gen.Generate(cacheDir, gen.Options{Kernels: o.kernels, Seed: o.seed, Scale: o.scale,
		Targets: []gpu.Target{{Backend: "cuda", Arch: "80", WarpSize: 32}, {Backend: "hip", Arch: "gfx90a", WarpSize: 64}}})
	if err != nil {
		return err
	}
	var files int
	var size int64
	for _, e := range entries {
		for _, f := range e.Files {
			files++
			size += f.Size
		}
	}
	say("cache:      %d KEY dirs, %d files, %s (generated in %s)", len(entries), files, cli.Bytes(size), since(start))
	start = time.Now()
	p, err := image.Pack(ctx, cacheDir, "bench", work)
	if err != nil {
		return err
	}
	defer p.Close()
	built, err := p.Built()
	if err != nil {
		return err
	}
	say("image:      eStargz layer %s compressed, %s uncompressed (packed in %s)", cli.Bytes(built.Size),
		cli.Bytes(built.UncompressedSize), since(start))

	// The registry, behind a counting proxy.
	reg, err := registry.StartProcess(filepath.Join(work, "registry"))
	if err != nil {
		return err
	}
	defer reg.Close()
	px, err := proxy.Listen(reg.URL)
	if err != nil {
		return err
	}
	defer px.Close()
	anon := authn.NewMultiKeychain()
	start = time.Now()
	if _, err := resolver.Push(ctx, reg.Ref("bench:v1"), p.Image, resolver.Options{Keychain: anon}); err != nil {
		return err
	}
	say("registry:   docker-registry at %s, pushed in %s; proxy latency %s per request", reg.Addr, since(start), o.latency)
	px.SetLatency(o.latency)

	ropts := resolver.Options{Store: filepath.Join(work, "oci"), Keychain: anon}
	if o.debug {
		ropts.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	res := resolver.New(ropts)
	im, err := res.Fetch(ctx, px.Addr+"/bench:v1")
	if err != nil {
		return err
	}
	l := im.LayerRef(0)
	state := filepath.Join(work, "state")
	st, err := store.Open(fetch.StoreDir(state), 0)
	if err != nil {
		return err
	}
	defer st.Close()

	// Index: cold (blob reads), then warm (disk cache, a new Engine).
	eng := fetch.NewEngine(res, st, state)
	defer eng.Close()
	var ic resolver.Counters
	start = time.Now()
	idx, err := eng.Index(fetch.WithCounters(ctx, &ic), l)
	if err != nil {
		return err
	}
	cold := time.Since(start)
	warmEng := fetch.NewEngine(resolver.New(ropts), st, state)
	var wc resolver.Counters
	start = time.Now()
	if _, err := warmEng.Index(fetch.WithCounters(ctx, &wc), l); err != nil {
		return err
	}
	warm := time.Since(start)
	warmEng.Close()
	say("")
	say("index load, cold:   %s, %d requests, %s received (%d dirs)", cold.Round(time.Microsecond), ic.Requests(),
		cli.Bytes(ic.Bytes()), len(idx.Dirs))
	say("index load, cached: %s, %d requests", warm.Round(time.Microsecond), wc.Requests())

	// Single dirs, one after another.
	keys := make([]string, 0, len(idx.Dirs))
	for k := range idx.Dirs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	sample := spread(keys, o.dirs, 0)
	var lat, hit []time.Duration
	var reqs, got, spans, raw, worst int64
	for _, k := range sample {
		d := idx.Dirs[k]
		var c resolver.Counters
		start := time.Now()
		if _, err := eng.Dir(fetch.WithCounters(ctx, &c), l, k); err != nil {
			return err
		}
		lat = append(lat, time.Since(start))
		start = time.Now()
		if _, err := eng.Dir(ctx, l, k); err != nil {
			return err
		}
		hit = append(hit, time.Since(start))
		span := d.End - d.Offset
		reqs += c.Requests()
		got += c.Bytes()
		spans += span
		worst = max(worst, c.Bytes()-span)
		for _, f := range d.Files {
			raw += f.Size
		}
	}
	n := int64(len(sample))
	say("")
	say("per dir (%d dirs, sequential):", n)
	say("  latency:   %s", quantiles(lat))
	say("  requests:  %.2f per dir", float64(reqs)/float64(n))
	say("  received:  %s per dir on average; compressed span %s; ratio %.4f; worst excess %d bytes",
		cli.Bytes(got/n), cli.Bytes(spans/n), float64(got)/float64(spans), worst)
	say("  content:   %s per dir uncompressed", cli.Bytes(raw/n))
	say("  stored:    %s (second FetchDir of the same dir, 0 requests)", quantiles(hit))

	// Parallel: other dirs into an empty store, the index from disk.
	pst, err := store.Open(filepath.Join(work, "pstore"), 0)
	if err != nil {
		return err
	}
	defer pst.Close()
	peng := fetch.NewEngine(resolver.New(ropts), pst, state)
	defer peng.Close()
	psample := spread(keys, o.dirs, 1)
	var pc resolver.Counters
	pctx := fetch.WithCounters(ctx, &pc)
	if _, err := peng.Index(pctx, l); err != nil {
		return err
	}
	work1 := make(chan string)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var perr error
	start = time.Now()
	for range o.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range work1 {
				if _, err := peng.Dir(pctx, l, k); err != nil {
					mu.Lock()
					perr = err
					mu.Unlock()
				}
			}
		}()
	}
	for _, k := range psample {
		work1 <- k
	}
	close(work1)
	wg.Wait()
	if perr != nil {
		return perr
	}
	pt := time.Since(start)
	say("parallel (%d workers, %d other dirs): %s wall, %.0f dirs/s, %d requests, %s received",
		o.workers, len(psample), pt.Round(time.Millisecond), float64(len(psample))/pt.Seconds(), pc.Requests(),
		cli.Bytes(pc.Bytes()))

	// The whole blob, for comparison.
	px.Reset()
	start = time.Now()
	rc, err := res.Stream(ctx, im.LayerRef(0))
	if err != nil {
		return err
	}
	nb, err := io.Copy(io.Discard, rc)
	rc.Close()
	if err != nil {
		return err
	}
	full := time.Since(start)
	say("")
	say("full blob download: %s, %d request(s), %s received (%.0f MB/s); that is %.0fx the bytes of one dir and %.1fx its latency (p50)",
		full.Round(time.Millisecond), px.Count(func(r proxy.Req) bool { return r.IsBlob() }), cli.Bytes(nb),
		float64(nb)/1e6/full.Seconds(), float64(nb)/(float64(got)/float64(n)), float64(full)/float64(quantile(lat, 0.5)))
	return nil
}

// spread picks n keys evenly over keys, starting at offset phase.
func spread(keys []string, n, phase int) []string {
	n = min(n, len(keys))
	out := make([]string, 0, n)
	for i := range n {
		j := (i*len(keys)/n + phase) % len(keys)
		out = append(out, keys[j])
	}
	return out
}

func quantile(ds []time.Duration, q float64) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[min(len(s)-1, int(q*float64(len(s))))]
}

func quantiles(ds []time.Duration) string {
	r := func(d time.Duration) time.Duration { return d.Round(10 * time.Microsecond) }
	return fmt.Sprintf("p50 %s, p90 %s, p99 %s, max %s", r(quantile(ds, 0.5)), r(quantile(ds, 0.9)),
		r(quantile(ds, 0.99)), r(quantile(ds, 1)))
}

func since(t time.Time) time.Duration { return time.Since(t).Round(time.Millisecond) }
