package fetch_test

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"cargohold/layer"
	"cargohold/store"
)

func lzDigest(f layer.File) digest.Digest { return digest.Digest(f.Digest) }

// TestLazyEviction: fetching more than a bounded store holds evicts the
// least recently used dirs, keeps the dir in use, and never goes over the
// limit.
func TestLazyEviction(t *testing.T) {
	_, keys := lzCache(t)
	e := newLzEnv(t)
	ref := e.push(t, "cache:v1", lzPackImage(t))
	_, l := e.image(t, ref, 0)

	// Sizes from a first, unbounded index load.
	idx, _ := lzIndex(t, e.engine(t, lzStore(t, 0), t.TempDir()), l)
	dirSize := func(key string) (n int64) {
		for _, f := range idx.Dirs[key].Files {
			n += f.Size
		}
		return n
	}
	order := keys[200:216]
	var biggest int64
	for _, k := range order {
		biggest = max(biggest, dirSize(k))
	}
	limit := 4 * biggest
	st := lzStore(t, limit)
	eng := e.engine(t, st, t.TempDir())

	// Watch the total while fetching.
	var over atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			if n := st.Size(); n > limit {
				over.Store(n)
			}
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Microsecond):
			}
		}
	}()

	// The first dir stays open (in use) throughout.
	inUse, _ := lzFetch(t, eng, l, order[0])
	var pins []*store.File
	for _, f := range inUse {
		sf, err := st.Open(f.Digest)
		if err != nil {
			t.Fatal(err)
		}
		pins = append(pins, sf)
	}
	for _, k := range order[1:] {
		lzFetch(t, eng, l, k)
		if n := st.Size(); n > limit {
			t.Fatalf("after KEY %s: store holds %d bytes, limit %d", k, n, limit)
		}
	}
	close(stop)
	wg.Wait()
	if n := over.Load(); n != 0 {
		t.Errorf("store reached %d bytes, limit %d", n, limit)
	}
	has := func(key string) bool {
		for _, f := range idx.Dirs[key].Files {
			if !st.Has(lzDigest(f)) {
				return false
			}
		}
		return true
	}
	if !has(order[0]) {
		t.Errorf("the dir in use was evicted")
	}
	if has(order[1]) {
		t.Errorf("the oldest unused dir %s was kept", order[1])
	}
	if !has(order[len(order)-1]) {
		t.Errorf("the newest dir was evicted")
	}
	if st.Stats().Evictions == 0 {
		t.Errorf("nothing evicted: the test tested nothing")
	}
	// An evicted dir comes back with one request.
	if _, c := lzFetch(t, eng, l, order[1]); c.Requests() != 1 {
		t.Errorf("refetch of an evicted dir: %d requests, want 1", c.Requests())
	}
	for _, p := range pins {
		p.Close()
	}
}
