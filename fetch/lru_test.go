package fetch_test

import (
	"testing"

	"cargohold/fetch"
	"cargohold/resolver"
	"cargohold/test/cachetest"
)

// TestLazyIndexMemoryBound: an Engine keeps at most Options.LayerIndexes
// layer indexes in memory; one that dropped out is reloaded from the disk
// cache without a request, one still kept is not reloaded at all.
func TestLazyIndexMemoryBound(t *testing.T) {
	src, keys := lzCache(t)
	e := newLzEnv(t)
	_, a := e.image(t, e.push(t, "cache:v1", lzPackImage(t)), 0)
	_, b := e.image(t, e.push(t, "legacy:tar", lzTarImage(t, cachetest.KeyDirTar(t, src, keys[:20]))), 0)
	st := lzStore(t, 0)
	state := t.TempDir()

	opts := lzOptions(t, e.rt)
	opts.LayerIndexes = 1
	eng := fetch.NewEngine(resolver.New(opts), st, state)
	t.Cleanup(func() { eng.Close() })
	lzIndex(t, eng, a)
	lzIndex(t, eng, b) // a drops out
	if s := eng.Stats(); s.Indexes != 2 || s.IndexCacheHits != 0 {
		t.Fatalf("stats %+v: want 2 indexes built, no cache hit", s)
	}
	e.px.Reset()
	idx, _ := lzIndex(t, eng, a)
	if s := eng.Stats(); s.Indexes != 2 || s.IndexCacheHits != 1 {
		t.Fatalf("stats %+v: want a reloaded from the disk cache", s)
	}
	if len(idx.Dirs) != len(keys) {
		t.Fatalf("reloaded index: %d dirs, want %d", len(idx.Dirs), len(keys))
	}
	lzIndex(t, eng, a) // kept now
	if s := eng.Stats(); s.IndexCacheHits != 1 {
		t.Fatalf("stats %+v: a reloaded although kept", s)
	}
	files, _ := lzFetch(t, eng, b, keys[3]) // b reloaded, its dir read
	lzCheckFiles(t, st, src, keys[3], files, false)
	if s := eng.Stats(); s.IndexCacheHits != 2 {
		t.Fatalf("stats %+v: want b reloaded from the disk cache", s)
	}
	e.px.Settle(t)
	if n, want := e.px.Count(nil), lzBlobReqs(e.px, b); n != 1 || want != 1 {
		t.Errorf("%d requests (%d for b's blob), want only the dir's read", n, want)
	}

	// The default keeps both.
	eng2 := e.engine(t, st, t.TempDir())
	lzIndex(t, eng2, a)
	lzIndex(t, eng2, b)
	lzIndex(t, eng2, a)
	if s := eng2.Stats(); s.Indexes != 2 || s.IndexCacheHits != 0 {
		t.Fatalf("default engine stats %+v: want both indexes kept", s)
	}
}
