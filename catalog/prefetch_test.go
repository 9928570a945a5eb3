package catalog_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"cargohold/catalog"
	"cargohold/fetch"
	"cargohold/gpu"
	"cargohold/resolver"
	"cargohold/store"
	"cargohold/test/proxy"
	"cargohold/triton"
	"cargohold/triton/gen"
)

// TestEntryPrefetchesItsLayer: with Config.Prefetch, a served Entry starts
// the prefetch of its layer's KEYs that fit the local targets: the other
// target's KEYs of that layer and the KEYs of another image (another
// model) that fits too are left alone. Without it nothing is prefetched.
func TestEntryPrefetchesItsLayer(t *testing.T) {
	f := newIxRegistry(t)
	dir1, es1 := ixGen(t, gen.Options{Kernels: 24, Launchers: 1, Seed: 3, Targets: ixTargets(t, "cuda:80:32,hip:gfx90a:64")})
	dir2, es2 := ixGen(t, gen.Options{Kernels: 8, Seed: 4, Targets: ixTargets(t, "cuda:80:32")})
	f.push(t, "m1:v1", ixPack(t, dir1))
	f.push(t, "m2:v1", ixPack(t, dir2))
	var fit, other []string // of m1
	for _, e := range es1 {
		if e.Kind == triton.KindLauncher || slices.ContainsFunc(e.Targets(), func(tg gpu.Target) bool { return tg.String() == "cuda:80:32" }) {
			fit = append(fit, e.Key)
		} else {
			other = append(other, e.Key)
		}
	}
	if len(fit) < 5 || len(other) < 5 {
		t.Fatalf("generator: %d fitting and %d other KEYs", len(fit), len(other))
	}

	for _, prefetch := range []bool{true, false} {
		state := t.TempDir()
		st, err := store.Open(fetch.StoreDir(state), 0)
		if err != nil {
			t.Fatal(err)
		}
		r := resolver.New(ixOptions(t))
		eng := fetch.NewEngine(r, st, state)
		ix, err := catalog.New(r, eng, catalog.Config{Sources: []string{f.ref("m1:v1"), f.ref("m2:v1")},
			Targets: ixTargets(t, "cuda:80:32"), StateDir: state, Prefetch: prefetch})
		if err != nil {
			t.Fatal(err)
		}
		ixRefresh(t, ix)
		e := &ixEnv{r: r, st: st, eng: eng, ix: ix, state: state}
		f.p.Reset()
		ixEntryFiles(t, e, fit[0], dir1)
		want := int64(0)
		if prefetch {
			want = int64(len(fit) - 1)
		}
		deadline := time.Now().Add(20 * time.Second)
		for eng.Stats().PrefetchDirs < want && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		time.Sleep(100 * time.Millisecond) // anything more would show now
		if s := eng.Stats(); s.PrefetchDirs != want || (prefetch && s.PrefetchRanges != 1) {
			t.Fatalf("prefetch %v: stats %+v, want %d dirs prefetched (in one range)", prefetch, s, want)
		}
		f.p.Reset()
		for _, k := range fit[1:] {
			ixEntryFiles(t, e, k, dir1)
		}
		if n := f.p.Count(func(r proxy.Req) bool { return r.IsBlob() }); prefetch && n != 0 {
			t.Errorf("fitting KEYs of the served layer after prefetch: %d blob requests", n)
		}
		f.p.Reset()
		ixEntryFiles(t, e, ixKeys(es2)[0], dir2)
		if n := f.p.Count(func(r proxy.Req) bool { return r.IsBlob() }); n != 1 {
			t.Errorf("prefetch %v: a KEY of the other image took %d blob requests, want 1 (not prefetched)", prefetch, n)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if _, err := ix.Entry(ctx, other[0]); err == nil {
			t.Errorf("KEY %s of another target served", other[0])
		}
		cancel()
		eng.Close()
		st.Close()
	}
}
