package fetch_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"cargohold/fetch"
	"cargohold/layer"
	"cargohold/resolver"
	"cargohold/test/cachetest"
	"cargohold/test/proxy"
)

// TestLazyLegacyTar: an uncompressed tar layer of large binaries is read
// whole once to index it (the layer digest is what vouches for its bodies:
// every one gets its digest from that verified read), then each KEY dir is
// one ranged read of its span, verified against those digests; after a
// restart the cached index and the store answer without a request.
func TestLazyLegacyTar(t *testing.T) {
	src, keys := lzBigCache(t)
	e := newLzEnv(t)
	ref := e.push(t, "legacy:tar", lzTarImage(t, cachetest.KeyDirTar(t, src, keys)))
	_, l := e.image(t, ref, 0)
	st := lzStore(t, 0)
	state := t.TempDir()
	eng := e.engine(t, st, state)

	e.px.Reset()
	idx, ic := lzIndex(t, eng, l)
	if idx.Format != layer.FormatTar || len(idx.Dirs) != len(keys) {
		t.Fatalf("index: format %s with %d dirs, want tar with %d", idx.Format, len(idx.Dirs), len(keys))
	}
	if !idx.Complete() {
		t.Fatal("index of a tar read whole has files without a digest")
	}
	t.Logf("index: %d requests, %d bytes of a %d-byte blob", ic.Requests(), ic.Bytes(), l.Desc.Size)
	// Footer probe, head probe, the whole blob.
	if ic.Requests() != 3 || ic.Bytes() < l.Desc.Size {
		t.Errorf("index: %d requests, %d bytes; want the blob read whole once (3 requests)", ic.Requests(), ic.Bytes())
	}
	fetched := lzPick(keys, 5)
	for _, key := range fetched {
		files, c := lzFetch(t, eng, l, key)
		lzCheckFiles(t, st, src, key, files, false)
		if c.Requests() != 1 {
			t.Errorf("KEY %s: %d requests, want 1", key, c.Requests())
		}
		d := idx.Dirs[key]
		if b := c.Bytes(); b > d.End-d.Offset+4096 {
			t.Errorf("KEY %s: %d bytes for a span of %d", key, b, d.End-d.Offset)
		}
	}
	if n := lzBlobReqs(e.px, l); int64(n) != ic.Requests()+int64(len(fetched)) {
		t.Errorf("proxy saw %d blob requests, want %d", n, ic.Requests()+int64(len(fetched)))
	}

	// The index is cached, the files stored: a restart asks nothing.
	eng2 := e.engine(t, st, state)
	e.px.Reset()
	for _, key := range fetched {
		files, c := lzFetch(t, eng2, l, key)
		if c.Requests() != 0 {
			t.Errorf("KEY %s after restart: %d requests, want 0", key, c.Requests())
		}
		lzCheckFiles(t, st, src, key, files, false)
	}
	if n := e.px.Count(nil); n != 0 {
		t.Errorf("after restart: %d requests, want 0", n)
	}
}

// TestLazyLegacyGzip: a plain gzip layer is downloaded once in full, then
// every dir is served from the store without a request.
func TestLazyLegacyGzip(t *testing.T) {
	src, keys := lzBigCache(t)
	e := newLzEnv(t)
	ref := e.push(t, "legacy:gzip", lzGzipImage(t, cachetest.KeyDirTar(t, src, keys)))
	_, l := e.image(t, ref, 0)
	st := lzStore(t, 0)
	state := t.TempDir()
	eng := e.engine(t, st, state)

	e.px.Reset()
	idx, ic := lzIndex(t, eng, l)
	if idx.Format != layer.FormatGzip || len(idx.Dirs) != len(keys) {
		t.Fatalf("index: format %s with %d dirs, want gzip with %d", idx.Format, len(idx.Dirs), len(keys))
	}
	whole := e.px.Count(func(r proxy.Req) bool { return r.IsBlob() && r.Range == "" })
	if whole != 1 {
		t.Errorf("%d whole-blob downloads, want 1", whole)
	}
	t.Logf("index: %d requests (%d whole), %d bytes of a %d-byte blob", ic.Requests(), whole, ic.Bytes(), l.Desc.Size)
	if b := ic.Bytes(); b < l.Desc.Size || b > l.Desc.Size+4096 {
		t.Errorf("index: %d bytes received, want the %d-byte blob once", b, l.Desc.Size)
	}
	if s := eng.Stats(); s.Downloads != 1 {
		t.Errorf("stats %+v: want 1 download", s)
	}

	e.px.Reset()
	for _, key := range keys {
		files, c := lzFetch(t, eng, l, key)
		lzCheckFiles(t, st, src, key, files, false)
		if c.Requests() != 0 {
			t.Errorf("KEY %s: %d requests, want 0", key, c.Requests())
		}
	}
	if n := e.px.Count(nil); n != 0 {
		t.Errorf("fetching dirs of a downloaded gzip layer: %d requests, want 0", n)
	}

	// Restart: cached index, local tar still stored, no request.
	eng2 := e.engine(t, st, state)
	lzIndex(t, eng2, l)
	files, c := lzFetch(t, eng2, l, keys[3])
	lzCheckFiles(t, st, src, keys[3], files, false)
	if c.Requests() != 0 || e.px.Count(nil) != 0 {
		t.Errorf("after restart: %d requests (proxy %d), want 0", c.Requests(), e.px.Count(nil))
	}
}

// TestLazyLegacyGzipGiveUp: a lookup that gives up while a legacy gzip
// layer downloads does not stop the download: a later lookup finds it
// (joined or done) and no second whole-blob GET is made.
func TestLazyLegacyGzipGiveUp(t *testing.T) {
	src, keys := lzCache(t)
	keys = keys[:40]
	e := newLzEnv(t)
	ref := e.push(t, "legacy:gzip", lzGzipImage(t, cachetest.KeyDirTar(t, src, keys)))
	_, l := e.image(t, ref, 0)
	st := lzStore(t, 0)
	w := &lzWholeWatch{base: e.rt, started: make(chan struct{})}
	eng := fetch.NewEngine(resolver.New(lzOptions(t, w)), st, t.TempDir())
	t.Cleanup(func() { eng.Close() })
	// The download waits at the proxy: it is surely in flight, not done,
	// when the first lookup gives up.
	e.px.SetLatency(500 * time.Millisecond)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-w.started:
			cancel() // the lookup gives up once the download has begun
		case <-ctx.Done():
		}
	}()
	if _, err := eng.Dir(ctx, l, keys[0]); !errors.Is(err, context.Canceled) {
		t.Fatalf("first FetchDir: %v, want context.Canceled", err)
	}

	ctx2, cancel2 := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel2()
	files, err := eng.Dir(ctx2, l, keys[0])
	if err != nil {
		t.Fatal(err)
	}
	lzCheckFiles(t, st, src, keys[0], files, false)
	if n := w.count(); n != 1 {
		t.Errorf("%d whole-blob GETs, want 1: the download was restarted", n)
	}
	if s := eng.Stats(); s.Downloads != 1 {
		t.Errorf("stats %+v: want 1 download", s)
	}
}

// lzWholeWatch is a transport that counts whole-blob GETs (no Range) and
// closes started at the first.
type lzWholeWatch struct {
	base    http.RoundTripper
	started chan struct{}

	mu    sync.Mutex
	whole int // guarded by mu
}

func (w *lzWholeWatch) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/sha256:") && r.Header.Get("Range") == "" {
		w.mu.Lock()
		w.whole++
		if w.whole == 1 {
			close(w.started)
		}
		w.mu.Unlock()
	}
	return w.base.RoundTrip(r)
}

func (w *lzWholeWatch) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.whole
}
