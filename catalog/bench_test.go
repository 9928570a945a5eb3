package catalog_test

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"cargohold/catalog"
	"cargohold/fetch"
	"cargohold/resolver"
	"cargohold/test/proxy"
	"cargohold/test/registry"
	"cargohold/triton/gen"
)

var (
	benchImages = flag.Int("index.images", 20, "BenchmarkIndex: images in the repository")
	benchKeys   = flag.Int("index.keys", 2000, "BenchmarkIndex: KEY dirs per image (1/200 of them launchers)")
)

// benchRegistry is a registry whose storage holds the benchmark repository,
// kept in the system temp dir across runs (generating and packing 20 x 2,000
// KEYs takes minutes on two cores). A run that finds its "done" marker pushes
// nothing.
func benchRegistry(b *testing.B) (*registry.Registry, *proxy.Proxy) {
	b.Helper()
	dir := filepath.Join(os.TempDir(), fmt.Sprintf("cargohold-index-bench-%dx%d", *benchImages, *benchKeys))
	reg, err := registry.StartProcess(dir)
	if err != nil {
		b.Skipf("registry: %v", err)
	}
	b.Cleanup(func() { reg.Close() })
	marker := filepath.Join(dir, "done")
	if _, err := os.Stat(marker); err != nil {
		start := time.Now()
		var wg sync.WaitGroup
		sem := make(chan struct{}, runtime.GOMAXPROCS(0))
		errs := make([]error, *benchImages)
		for i := range *benchImages {
			wg.Go(func() {
				sem <- struct{}{}
				defer func() { <-sem }()
				errs[i] = benchImage(b, reg, i)
			})
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				b.Fatal(err)
			}
		}
		if err := os.WriteFile(marker, nil, 0o644); err != nil {
			b.Fatal(err)
		}
		b.Logf("generated and pushed %d images x %d KEYs in %v", *benchImages, *benchKeys, time.Since(start))
	}
	p := proxy.New(reg.URL)
	b.Cleanup(func() { p.Close() })
	return reg, p
}

func benchImage(b *testing.B, reg *registry.Registry, i int) error {
	launchers := max(1, *benchKeys/200)
	dir := filepath.Join(b.TempDir(), "cache")
	if _, err := gen.Generate(dir, gen.Options{Kernels: *benchKeys - launchers, Launchers: launchers,
		Seed: int64(1000 + i), Scale: 0.001, Targets: ixTargets(b, "cuda:80:32")}); err != nil {
		return err
	}
	img := ixPack(b, dir)
	_, err := resolver.Push(context.Background(), reg.Ref(fmt.Sprintf("bench:img-%02d", i)), img, ixOptions(b))
	os.RemoveAll(dir)
	return err
}

func heapInUse() int64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc)
}

// BenchmarkIndex gives the numbers of the KEY index over a repository of
// -index.images images x -index.keys KEYs in the real registry, read
// through a counting proxy:
//
//	build:   cold index build (empty state dir): time, requests/op
//	refresh: refresh with nothing changed: time, requests/op
//	load:    restart: load the persisted index, no request
//	memory:  heap bytes per indexed KEY: the index alone (loaded, fresh
//	         Engine) and index plus Engine after a cold build (the Engine
//	         keeps the Options.LayerIndexes most recently used layer
//	         indexes in memory)
//	lookup:  Lookup latency
//
// go test -run '^$' -bench BenchmarkIndex -benchtime 3x ./catalog/
// (lookup: add -bench BenchmarkIndex/lookup without -benchtime).
func BenchmarkIndex(b *testing.B) {
	_, p := benchRegistry(b)
	src := p.Addr + "/bench:*"
	opts := ixOptions(b)
	ctx := context.Background()
	// keep is a fully built index (state dir with its file and layer
	// caches) for the sub-benchmarks that need one.
	keep := newIxEnv(b, "", opts, []string{src}, "cuda:80:32")
	if err := keep.ix.Refresh(ctx); err != nil {
		b.Fatal(err)
	}
	nkeys := len(keep.ix.Keys())
	if want := *benchImages * *benchKeys; nkeys != want {
		b.Fatalf("indexed %d KEYs, want %d", nkeys, want)
	}

	b.Run("build", func(b *testing.B) {
		var reqs int
		for b.Loop() {
			b.StopTimer()
			e := newIxEnv(b, "", opts, []string{src}, "cuda:80:32")
			p.Reset()
			b.StartTimer()
			if err := e.ix.Refresh(ctx); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			reqs += p.Count(nil)
			e.close()
			b.StartTimer()
		}
		b.ReportMetric(float64(reqs)/float64(b.N), "requests/op")
		b.ReportMetric(float64(nkeys), "keys")
	})
	b.Run("refresh", func(b *testing.B) {
		p.Reset()
		for b.Loop() {
			if err := keep.ix.Refresh(ctx); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(p.Count(nil))/float64(b.N), "requests/op")
	})
	b.Run("load", func(b *testing.B) {
		p.Reset()
		for b.Loop() {
			ix, err := catalog.New(keep.r, keep.eng, catalog.Config{Sources: []string{src},
				Targets: ixTargets(b, "cuda:80:32"), StateDir: keep.state})
			if err != nil {
				b.Fatal(err)
			}
			if err := ix.Load(); err != nil {
				b.Fatal(err)
			}
		}
		if n := p.Count(nil); n != 0 {
			b.Fatalf("Load made %d requests", n)
		}
		if fi, err := os.Stat(filepath.Join(keep.state, catalog.StateFile)); err == nil {
			b.ReportMetric(float64(fi.Size())/float64(nkeys), "file-B/KEY")
		}
	})
	b.Run("memory", func(b *testing.B) {
		var index, total float64
		for b.Loop() {
			b.StopTimer()
			st := keep.st
			eng := fetch.NewEngine(keep.r, st, keep.state)
			before := heapInUse()
			b.StartTimer()
			ix, err := catalog.New(keep.r, eng, catalog.Config{Sources: []string{src},
				Targets: ixTargets(b, "cuda:80:32"), StateDir: keep.state})
			if err == nil {
				err = ix.Load()
			}
			b.StopTimer()
			if err != nil {
				b.Fatal(err)
			}
			index = float64(heapInUse()-before) / float64(nkeys)
			runtime.KeepAlive(ix)
			eng.Close()

			e := newIxEnv(b, "", opts, []string{src}, "cuda:80:32")
			before = heapInUse()
			if err := e.ix.Refresh(ctx); err != nil {
				b.Fatal(err)
			}
			total = float64(heapInUse()-before) / float64(nkeys)
			runtime.KeepAlive(e)
			e.close()
			b.StartTimer()
		}
		b.ReportMetric(index, "index-B/KEY")
		b.ReportMetric(total, "with-engine-B/KEY")
	})
	b.Run("lookup", func(b *testing.B) {
		keys := keep.ix.Keys()
		i := 0
		for b.Loop() {
			if len(keep.ix.Lookup(keys[i%len(keys)])) == 0 {
				b.Fatal("not found")
			}
			i += 7919
		}
	})
	b.Run("lookup-parallel", func(b *testing.B) {
		keys := keep.ix.Keys()
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				if len(keep.ix.Lookup(keys[i%len(keys)])) == 0 {
					b.Fatal("not found")
				}
				i += 7919
			}
		})
	})
	b.Run("has", func(b *testing.B) {
		keys := keep.ix.Keys()
		i := 0
		for b.Loop() {
			if !keep.ix.Has(keys[i%len(keys)]) {
				b.Fatal("not found")
			}
			i += 7919
		}
	})
}
