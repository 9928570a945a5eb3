package fetch_test

import (
	"context"
	"errors"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"cargohold/fetch"
	"cargohold/layer"
	"cargohold/resolver"
	"cargohold/test/proxy"
)

// TestLazyCorruption: a byte flipped inside one file's compressed data is
// caught, the error names the file, and nothing of the dir is stored.
func TestLazyCorruption(t *testing.T) {
	src, keys := lzCache(t)
	e := newLzEnv(t)
	ref := e.push(t, "cache:v1", lzPackImage(t))
	_, l := e.image(t, ref, 0)
	st := lzStore(t, 0)
	eng := e.engine(t, st, t.TempDir())
	idx, _ := lzIndex(t, eng, l)

	key := keys[42]
	d := idx.Dirs[key]
	// The largest file: flip a byte in the middle of its compressed data.
	victim := d.Files[0]
	for _, f := range d.Files {
		if f.End-f.Offset > victim.End-victim.Offset {
			victim = f
		}
	}
	off := (victim.Offset+victim.End)/2 - d.Offset
	e.px.FlipByte("/blobs/"+l.Desc.Digest.String(), off)
	before := st.Stats().Entries

	_, err := eng.Dir(context.Background(), l, key)
	var verr *layer.VerifyError
	if !errors.As(err, &verr) {
		t.Fatalf("FetchDir of a corrupted span: %v, want a *layer.VerifyError", err)
	}
	if verr.File != victim.Name || verr.Key != key || !strings.Contains(err.Error(), victim.Name) {
		t.Errorf("error %q names %s/%s, want %s/%s", err, verr.Key, verr.File, key, victim.Name)
	}
	e.px.Settle(t)
	if e.px.Count(func(r proxy.Req) bool { return r.Flipped }) != 1 {
		t.Errorf("the proxy flipped no byte: the test tested nothing")
	}
	if n := st.Stats().Entries; n != before {
		t.Errorf("store went from %d to %d entries after a failed fetch", before, n)
	}
	for _, f := range d.Files {
		if f.Digest != "" && st.Has(lzDigest(f)) {
			t.Errorf("%s/%s was committed although the dir failed", key, f.Name)
		}
	}
	// Failures are counted by whoever turns them into an errno: the
	// engine counts work only.
	if s := eng.Stats(); s.Fetches != 1 {
		t.Errorf("stats %+v: want the one read counted as a fetch", s)
	}

	// Nothing poisoned: with the fault gone the same dir comes through.
	if err := e.px.ClearFaults(); err != nil {
		t.Fatal(err)
	}
	files, _ := lzFetch(t, eng, l, key)
	lzCheckFiles(t, st, src, key, files, true)
}

// TestLazyStalledRegistry: a registry that accepts connections and never
// answers makes FetchDir fail at its deadline, and nothing is left running.
func TestLazyStalledRegistry(t *testing.T) {
	addr := proxy.StalledListener(t)
	rt := http.DefaultTransport.(*http.Transport).Clone()
	base := runtime.NumGoroutine()

	st := lzStore(t, 0)
	ropts := lzOptions(t, rt)
	ropts.Timeout = 30 * time.Second // the caller's deadline must be what ends it
	eng := fetch.NewEngine(resolver.New(ropts), st, t.TempDir())
	l := resolver.LayerRef{
		Repo: addr + "/cache",
		Desc: v1.Descriptor{MediaType: layer.MediaType, Size: 1 << 20,
			Digest: v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("ab", 32)}},
	}
	const deadline = 500 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	start := time.Now()
	_, err := eng.Dir(ctx, l, "KEY")
	took := time.Since(start)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("FetchDir against a stalled registry: %v, want the deadline", err)
	}
	if took > deadline+time.Second {
		t.Errorf("FetchDir took %s with a %s deadline", took, deadline)
	}
	if s := eng.Stats(); s.Fetches != 0 {
		t.Errorf("stats %+v: nothing was read, nothing counts as fetched", s)
	}
	// The only caller gave up: the fetch it started stops without Close.
	lzWaitNoEngineGoroutines(t)
	eng.Close()
	rt.CloseIdleConnections()
	lzWaitGoroutines(t, base)
}

// TestLazyRegistryDown: with the index loaded, a registry that went away
// (connection refused) or stalls mid-way fails the fetch within its
// deadline; nothing is stored and nothing is left running.
func TestLazyRegistryDown(t *testing.T) {
	_, keys := lzCache(t)
	e := newLzEnv(t)
	ref := e.push(t, "cache:v1", lzPackImage(t))
	_, l := e.image(t, ref, 0)
	st := lzStore(t, 0)
	eng := e.engine(t, st, t.TempDir())
	lzIndex(t, eng, l)

	const deadline = time.Second
	try := func(what, key string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), deadline)
		defer cancel()
		start := time.Now()
		_, err := eng.Dir(ctx, l, key)
		if err == nil {
			t.Fatalf("%s: FetchDir succeeded", what)
		}
		if took := time.Since(start); took > deadline+time.Second {
			t.Errorf("%s: FetchDir took %s with a %s deadline", what, took, deadline)
		}
		if st.Stats().Entries != 0 {
			t.Errorf("%s: %d entries stored", what, st.Stats().Entries)
		}
		t.Logf("%s: %v", what, err)
	}
	if err := e.px.SetDown(true); err != nil {
		t.Fatal(err)
	}
	try("down", keys[10])
	if err := e.px.SetDown(false); err != nil {
		t.Fatal(err)
	}
	e.px.SetStall(true)
	try("stalled", keys[11])
	lzWaitNoEngineGoroutines(t)
	eng.Close()
	e.px.SetStall(false)

	// After Close the engine refuses work.
	if _, err := eng.Dir(context.Background(), l, keys[12]); err == nil {
		t.Errorf("FetchDir after Close succeeded")
	}
}

// lzWaitGoroutines waits until no more than base goroutines run, failing
// with their stacks after a while.
func lzWaitGoroutines(t *testing.T, base int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines, %d before:\n%s", runtime.NumGoroutine(), base, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// lzWaitNoEngineGoroutines waits until no goroutine runs code of package
// resolver (the proxy and the registry keep their own).
func lzWaitNoEngineGoroutines(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		buf := make([]byte, 1<<20)
		stacks := string(buf[:runtime.Stack(buf, true)])
		var leaked []string
		for _, g := range strings.Split(stacks, "\n\n") {
			if strings.Contains(g, "cargohold/fetch.") {
				leaked = append(leaked, g)
			}
		}
		if len(leaked) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines still in package fetch:\n%s", len(leaked), strings.Join(leaked, "\n\n"))
		}
		time.Sleep(10 * time.Millisecond)
	}
}
