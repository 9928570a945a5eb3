package fetch_test

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"cargohold/fetch"
	"cargohold/kind"
	"cargohold/layer"
	"cargohold/resolver"
	"cargohold/triton"
)

// TestLazyFetchEStargz: a 500-dir cache image in a real registry; five dirs
// fetched one ranged request each, byte-identical, within their span; the
// index costs at most 3 requests, and nothing once cached.
func TestLazyFetchEStargz(t *testing.T) {
	src, keys := lzCache(t)
	e := newLzEnv(t)
	ref := e.push(t, "cache:v1", lzPackImage(t))
	_, l := e.image(t, ref, 0)
	if l.TOCDigest == "" || l.Repo == "" || l.DiffID.Hex == "" {
		t.Fatalf("LayerRef %+v lacks TOC digest, repo or diff_id", l)
	}
	st := lzStore(t, 0)
	state := t.TempDir()
	eng := e.engine(t, st, state)

	e.px.Reset()
	idx, c := lzIndex(t, eng, l)
	if idx.Format != layer.FormatEStargz || len(idx.Dirs) != len(keys) {
		t.Fatalf("index: format %s with %d dirs, want estargz with %d", idx.Format, len(idx.Dirs), len(keys))
	}
	if n := c.Requests(); n > 3 || n < 1 {
		t.Errorf("index load: %d requests, want 1..3", n)
	}
	if got := lzBlobReqs(e.px, l); int64(got) != c.Requests() {
		t.Errorf("index load: proxy saw %d blob requests, counters say %d", got, c.Requests())
	}
	t.Logf("index: %d requests, %d bytes for a %d-byte layer", c.Requests(), c.Bytes(), l.Desc.Size)

	fetched := lzPick(keys, 5)
	for _, key := range fetched {
		d := idx.Dirs[key]
		e.px.Reset()
		files, c := lzFetch(t, eng, l, key)
		lzCheckFiles(t, st, src, key, files, true)
		if n := c.Requests(); n != 1 {
			t.Errorf("KEY %s: %d requests, want 1", key, n)
		}
		if n := lzBlobReqs(e.px, l); n != 1 {
			t.Errorf("KEY %s: proxy saw %d blob requests, want 1", key, n)
		}
		span := d.End - d.Offset
		if b := c.Bytes(); b > span+4096 || b < span {
			t.Errorf("KEY %s: %d bytes received for a span of %d", key, b, span)
		}
		// Stored already: no request at all.
		e.px.Reset()
		if _, c := lzFetch(t, eng, l, key); c.Requests() != 0 || e.px.Count(nil) != 0 {
			t.Errorf("KEY %s again: %d requests (proxy %d), want 0", key, c.Requests(), e.px.Count(nil))
		}
	}
	s := eng.Stats()
	if s.Fetches != 5 || s.Hits != 5 || s.Indexes != 1 {
		t.Errorf("stats %+v: want 5 fetches, 5 hits, 1 index, no errors", s)
	}
	if _, err := os.Stat(filepath.Join(state, "layers", l.Desc.Digest.String()+".json")); err != nil {
		t.Errorf("index not cached on disk: %v", err)
	}

	// A second run (new Resolver and Engine, same state and store): the
	// index comes from disk, stored dirs cost nothing, a new dir one request.
	eng2 := e.engine(t, st, state)
	e.px.Reset()
	idx2, c2 := lzIndex(t, eng2, l)
	if c2.Requests() != 0 || e.px.Count(nil) != 0 {
		t.Errorf("cached index: %d requests (proxy %d), want 0", c2.Requests(), e.px.Count(nil))
	}
	if len(idx2.Dirs) != len(idx.Dirs) || idx2.TOCDigest != idx.TOCDigest {
		t.Errorf("cached index differs: %d dirs, TOC %s", len(idx2.Dirs), idx2.TOCDigest)
	}
	for _, key := range fetched {
		if _, c := lzFetch(t, eng2, l, key); c.Requests() != 0 {
			t.Errorf("KEY %s after restart: %d requests, want 0", key, c.Requests())
		}
	}
	other := keys[1]
	files, c3 := lzFetch(t, eng2, l, other)
	lzCheckFiles(t, st, src, other, files, true)
	if c3.Requests() != 1 || lzBlobReqs(e.px, l) != 1 {
		t.Errorf("new KEY after restart: %d requests (proxy %d), want 1", c3.Requests(), lzBlobReqs(e.px, l))
	}
	if s := eng2.Stats(); s.IndexCacheHits != 1 || s.Indexes != 0 {
		t.Errorf("second engine stats %+v: want 1 index cache hit, 0 built", s)
	}

	// A KEY the layer does not hold.
	_, err := eng2.Dir(context.Background(), l, "NOTAKEY")
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing KEY: %v, want fs.ErrNotExist", err)
	}
}

// TestLazyFetchImageKey: FetchKey finds a KEY in the layer holding it,
// and Install puts it into a cache dir with group files rewritten, never
// over an existing KEY dir.
func TestLazyFetchImageKey(t *testing.T) {
	src, keys := lzCache(t)
	e := newLzEnv(t)
	ref := e.push(t, "cache:v1", lzPackImage(t))
	im, err := e.res.Fetch(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	st := lzStore(t, 0)
	eng := e.engine(t, st, t.TempDir())
	key := keys[7]
	files, l, err := eng.ImageKey(context.Background(), im, key)
	if err != nil {
		t.Fatal(err)
	}
	if l.Desc.Digest != im.Layers[0].Desc.Digest {
		t.Errorf("FetchKey: layer %s", l)
	}
	dir := t.TempDir()
	if err := eng.Install(dir, kind.Triton, key, files); err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		got, err := os.ReadFile(filepath.Join(dir, key, f.Name))
		if err != nil {
			t.Fatal(err)
		}
		want, err := os.ReadFile(filepath.Join(src, key, f.Name))
		if err != nil {
			t.Fatal(err)
		}
		if triton.IsGroupFile(f.Name) {
			if want, err = triton.RewriteGroup(want, dir); err != nil {
				t.Fatal(err)
			}
		}
		if string(got) != string(want) {
			t.Errorf("%s/%s: installed content differs", key, f.Name)
		}
	}
	if err := eng.Install(dir, kind.Triton, key, files); !errors.Is(err, fs.ErrExist) {
		t.Errorf("second install: %v, want fs.ErrExist", err)
	}
	if _, _, err := eng.ImageKey(context.Background(), im, "NOTAKEY"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("FetchKey of a missing KEY: %v, want fs.ErrNotExist", err)
	}
}

// TestLazyConcurrentFetch: many callers of the same dirs at once share one
// request per dir (run it with -race).
func TestLazyConcurrentFetch(t *testing.T) {
	src, keys := lzCache(t)
	e := newLzEnv(t)
	ref := e.push(t, "cache:v1", lzPackImage(t))
	_, l := e.image(t, ref, 0)
	st := lzStore(t, 0)
	eng := e.engine(t, st, t.TempDir())
	lzIndex(t, eng, l)
	e.px.Reset()
	// Latency makes the callers overlap the fetch they share.
	e.px.SetLatency(100 * time.Millisecond)

	want := lzPick(keys[100:], 4)
	const callers = 12
	var wg sync.WaitGroup
	results := make([][][]fetch.KeyFile, len(want))
	errs := make(chan error, len(want)*callers)
	for i, key := range want {
		results[i] = make([][]fetch.KeyFile, callers)
		for j := range callers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				files, err := eng.Dir(context.Background(), l, key)
				if err != nil {
					errs <- err
				}
				results[i][j] = files
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := lzBlobReqs(e.px, l); n != len(want) {
		t.Errorf("%d callers each of %d dirs: %d blob requests, want %d", callers, len(want), n, len(want))
	}
	for i, key := range want {
		lzCheckFiles(t, st, src, key, results[i][0], true)
		for j := 1; j < callers; j++ {
			if len(results[i][j]) != len(results[i][0]) {
				t.Fatalf("KEY %s: caller %d got %d files, caller 0 %d", key, j, len(results[i][j]), len(results[i][0]))
			}
			for k := range results[i][j] {
				if results[i][j][k] != results[i][0][k] {
					t.Errorf("KEY %s: caller %d got %+v, caller 0 %+v", key, j, results[i][j][k], results[i][0][k])
				}
			}
		}
	}
}

// TestLazyLocalLayout: a layer of a local OCI layout is read from its blob
// file, one read per dir.
func TestLazyLocalLayout(t *testing.T) {
	src, keys := lzCache(t)
	layout := t.TempDir()
	ropts := lzOptions(t, nil)
	if _, err := resolver.Save(context.Background(), "oci:"+layout+":v1", lzPackImage(t), ropts); err != nil {
		t.Fatal(err)
	}
	res := resolver.New(ropts)
	im, err := res.Fetch(context.Background(), "oci:"+layout+":v1")
	if err != nil {
		t.Fatal(err)
	}
	l := im.LayerRef(0)
	if l.Layout != layout || l.Repo != "" {
		t.Fatalf("LayerRef %+v: want layout %s", l, layout)
	}
	st := lzStore(t, 0)
	eng := fetch.NewEngine(res, st, t.TempDir())
	defer eng.Close()
	if _, c := lzIndex(t, eng, l); c.Requests() != 2 {
		t.Errorf("index of a local eStargz layer: %d reads, want 2 (footer, TOC)", c.Requests())
	}
	for _, key := range lzPick(keys, 3) {
		files, c := lzFetch(t, eng, l, key)
		lzCheckFiles(t, st, src, key, files, true)
		if c.Requests() != 1 {
			t.Errorf("KEY %s: %d reads, want 1", key, c.Requests())
		}
	}
}
