package fetch_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"cargohold/fetch"
	"cargohold/layer"
	"cargohold/resolver"
	"cargohold/triton"
)

// lzTargetKeys is the KEYs of the shared cache that hold a kernel for
// target (e.g. "cuda:80:32"): half of them, interleaved with the others in
// the layer.
func lzTargetKeys(t *testing.T, target string) []string {
	t.Helper()
	src, _ := lzCache(t)
	es, _, err := triton.Scan(src)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range es {
		for _, tg := range e.Targets() {
			if tg.String() == target {
				out = append(out, e.Key)
				break
			}
		}
	}
	return out
}

func waitPrefetch(t *testing.T, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(60 * time.Second):
		t.Fatal("prefetch did not end within 60s")
		return nil
	}
}

// TestPrefetchCoalesces: the KEY dirs of one target, interleaved with the
// other target's in the layer, come in a few large ranged reads, verified
// and stored; a lookup of them then costs no request; the other target's
// dirs are not fetched.
func TestPrefetchCoalesces(t *testing.T) {
	src, keys := lzCache(t)
	want := lzTargetKeys(t, "cuda:80:32")
	e := newLzEnv(t)
	ref := e.push(t, "cache:v1", lzPackImage(t))
	_, l := e.image(t, ref, 0)
	st := lzStore(t, 0)
	eng := e.engine(t, st, t.TempDir())
	idx, _ := lzIndex(t, eng, l)

	e.px.Reset()
	if err := waitPrefetch(t, eng.Prefetch(l, want)); err != nil {
		t.Fatalf("prefetch: %v", err)
	}
	s := eng.Stats()
	reqs := lzBlobReqs(e.px, l)
	if s.PrefetchDirs != int64(len(want)) || s.PrefetchSkipped != 0 || int64(reqs) != s.PrefetchRanges {
		t.Fatalf("stats %+v, %d blob requests: want %d dirs in as many requests as ranges", s, reqs, len(want))
	}
	if reqs > 1+int(l.Desc.Size/(1<<20)) {
		t.Errorf("%d dirs took %d requests for a %d-byte layer: not coalesced", len(want), reqs, l.Desc.Size)
	}
	if e.px.BytesSent() > l.Desc.Size {
		t.Errorf("prefetch received %d bytes, more than the layer's %d", e.px.BytesSent(), l.Desc.Size)
	}
	e.px.Reset()
	for _, k := range want {
		files, c := lzFetch(t, eng, l, k)
		if c.Requests() != 0 {
			t.Fatalf("KEY %s after prefetch: %d requests", k, c.Requests())
		}
		if k == want[0] || k == want[len(want)-1] {
			lzCheckFiles(t, st, src, k, files, true)
		}
	}
	prefetched := map[string]bool{}
	for _, k := range want {
		prefetched[k] = true
	}
	for _, k := range keys {
		if !prefetched[k] {
			if _, c := lzFetch(t, eng, l, k); c.Requests() != 1 {
				t.Errorf("KEY %s of the other target: %d requests, want 1 (not prefetched)", k, c.Requests())
			}
			lzCheckFiles(t, st, src, k, mustDir(t, eng, l, k), true)
			break
		}
	}
	if n := e.px.Count(nil); n != 1 {
		t.Errorf("%d requests after prefetch, want the one of the other target's dir", n)
	}
	if len(idx.Dirs) != len(keys) {
		t.Fatalf("index of %d dirs", len(idx.Dirs))
	}
}

func mustDir(t *testing.T, eng *fetch.Engine, l resolver.LayerRef, key string) []fetch.KeyFile {
	t.Helper()
	files, err := eng.Dir(context.Background(), l, key)
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// TestPrefetchBudget: prefetch fills the store's spare room and stops; it
// evicts nothing, neither what a lookup fetched nor what is open, and a
// lookup afterwards still gets its dir (evicting prefetched content first).
func TestPrefetchBudget(t *testing.T) {
	src, keys := lzCache(t)
	e := newLzEnv(t)
	ref := e.push(t, "cache:v1", lzPackImage(t))
	_, l := e.image(t, ref, 0)
	idx, _ := lzIndex(t, e.engine(t, lzStore(t, 0), t.TempDir()), l)
	var total int64
	for _, d := range idx.Dirs {
		for _, f := range d.Files {
			total += f.Size
		}
	}
	limit := total / 4
	st := lzStore(t, limit)
	eng := e.engine(t, st, t.TempDir())

	// Demanded before the prefetch: one dir open, one closed.
	demanded := []string{keys[400], keys[401]}
	opened, _ := lzFetch(t, eng, l, demanded[0])
	lzFetch(t, eng, l, demanded[1])
	open, err := eng.Open(opened[0])
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()

	err = waitPrefetch(t, eng.Prefetch(l, keys))
	if !errors.Is(err, fetch.ErrPrefetchBudget) {
		t.Fatalf("prefetch into a store a quarter the size: %v, want the budget used", err)
	}
	s, ss := eng.Stats(), st.Stats()
	if ss.Evictions != 0 || ss.Bytes > limit || s.PrefetchDirs == 0 || s.PrefetchSkipped == 0 {
		t.Fatalf("engine %+v, store %+v (limit %d): want some dirs prefetched, some skipped, nothing evicted", s, ss, limit)
	}
	if ss.Bytes < limit/2 {
		t.Errorf("prefetch stopped at %d of %d bytes", ss.Bytes, limit)
	}
	for _, k := range demanded {
		if _, c := lzFetch(t, eng, l, k); c.Requests() != 0 {
			t.Errorf("demanded KEY %s is gone after the prefetch", k)
		}
	}
	// A lookup of a dir not stored gets it, by evicting prefetched content.
	var late string
	for _, k := range keys {
		if _, c := lzFetch(t, eng, l, k); c.Requests() == 1 {
			late = k
			break
		}
	}
	if late == "" {
		t.Fatal("every dir is stored: the budget did not bind")
	}
	lzCheckFiles(t, st, src, late, mustDir(t, eng, l, late), true)
	for _, k := range demanded {
		if _, c := lzFetch(t, eng, l, k); c.Requests() != 0 {
			t.Errorf("demanded KEY %s evicted before prefetched content", k)
		}
	}
}

// TestLookupJumpsPrefetch: while every prefetch range is stuck, lookups are
// served at once: a dir the stuck range covers is fetched alone after a
// short wait; nothing waits for the prefetch to end.
func TestLookupJumpsPrefetch(t *testing.T) {
	src, keys := lzCache(t)
	e := newLzEnv(t)
	ref := e.push(t, "cache:v1", lzPackImage(t))
	_, l := e.image(t, ref, 0)
	st := lzStore(t, 0)
	eng := e.engine(t, st, t.TempDir())
	idx, _ := lzIndex(t, eng, l)
	var largest int64
	for _, d := range idx.Dirs {
		largest = max(largest, d.End-d.Offset)
	}
	e.px.SetStallRanges(largest) // single dirs pass, prefetch ranges wait
	done := eng.Prefetch(l, keys)
	deadline := time.Now().Add(10 * time.Second)
	for e.px.Pending() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no prefetch range reached the proxy")
		}
		time.Sleep(time.Millisecond)
	}
	for _, k := range []string{keys[1], keys[len(keys)/2], keys[len(keys)-1]} {
		start := time.Now()
		files, c := lzFetch(t, eng, l, k)
		if took := time.Since(start); took > 5*time.Second || c.Requests() != 1 {
			t.Fatalf("KEY %s while prefetch is stuck: %v, %d requests", k, took, c.Requests())
		}
		lzCheckFiles(t, st, src, k, files, true)
	}
	select {
	case err := <-done:
		t.Fatalf("prefetch ended while its ranges were stalled: %v", err)
	default:
	}
	e.px.SetStallRanges(0)
	if err := waitPrefetch(t, done); err != nil {
		t.Fatalf("prefetch after the stall: %v", err)
	}
	for _, k := range keys {
		if _, c := lzFetch(t, eng, l, k); c.Requests() != 0 {
			t.Fatalf("KEY %s not stored after the prefetch", k)
		}
	}
}

// TestPrefetchCorruptRange: a corrupt range commits nothing, ends the
// prefetch, and lookups fetch their dirs alone, intact.
func TestPrefetchCorruptRange(t *testing.T) {
	src, keys := lzCache(t)
	e := newLzEnv(t)
	ref := e.push(t, "cache:v1", lzPackImage(t))
	_, l := e.image(t, ref, 0)
	st := lzStore(t, 0)
	eng := e.engine(t, st, t.TempDir())
	lzIndex(t, eng, l)
	e.px.FlipByte("/blobs/", 100)
	if err := waitPrefetch(t, eng.Prefetch(l, keys)); err == nil || !errors.As(err, new(*layer.VerifyError)) {
		t.Fatalf("prefetch of a corrupt range: %v, want a verify error", err)
	}
	if err := e.px.ClearFaults(); err != nil {
		t.Fatal(err)
	}
	files, c := lzFetch(t, eng, l, keys[0])
	if c.Requests() != 1 {
		t.Errorf("first KEY after a corrupt prefetch range: %d requests, want 1", c.Requests())
	}
	lzCheckFiles(t, st, src, keys[0], files, true)
}
