package catalog_test

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"cargohold/catalog"
	"cargohold/fetch"
	"cargohold/resolver"
	"cargohold/store"
	"cargohold/test/cachetest"
	"cargohold/test/proxy"
	"cargohold/triton/gen"
)

// TestIndexLayersMerge: an image whose second layer overrides one file of a
// KEY dir and adds one serves the merge (the first layer's other files,
// the second layer's overriding and added ones), as unpacking it would; a
// KEY dir the second layer replaces whole costs only that layer's read; a
// KEY dir of the first layer alone is served from it. The merge survives a
// restart (persisted index) and FetchKey gives the same files.
func TestIndexLayersMerge(t *testing.T) {
	f := newIxRegistry(t)
	dir, es := ixGen(t, gen.Options{Kernels: 4, Seed: 3, Targets: ixTargets(t, "cuda:80:32")})
	keys := ixKeys(es)
	partial, whole, untouched := keys[0], keys[1], keys[2]

	// over is the second layer's cache: partial's binary with other bytes
	// plus a new file; whole's every file as the first layer has it (as on
	// disk, as cargohold packs them).
	over := t.TempDir()
	want := t.TempDir() // the merged partial, as the mount must show it
	if err := os.CopyFS(filepath.Join(want, partial), os.DirFS(filepath.Join(dir, partial))); err != nil {
		t.Fatal(err)
	}
	des, err := os.ReadDir(filepath.Join(dir, partial))
	if err != nil {
		t.Fatal(err)
	}
	bin := ""
	for _, de := range des {
		if strings.HasSuffix(de.Name(), ".cubin") {
			bin = de.Name()
		}
	}
	if bin == "" {
		t.Fatalf("generated KEY %s has no .cubin", partial)
	}
	newBin := []byte("layer 2's binary, not layer 1's")
	for _, d := range []string{over, want} {
		ixWrite(t, filepath.Join(d, partial, bin), newBin)
		ixWrite(t, filepath.Join(d, partial, "added.txt"), []byte("only in layer 2"))
	}
	des, err = os.ReadDir(filepath.Join(dir, whole))
	if err != nil {
		t.Fatal(err)
	}
	for _, de := range des {
		data, err := os.ReadFile(filepath.Join(dir, whole, de.Name()))
		if err != nil {
			t.Fatal(err)
		}
		ixWrite(t, filepath.Join(over, whole, de.Name()), data)
	}
	img, err := mutate.Append(ixPack(t, dir), mutate.Addendum{
		Layer:     static.NewLayer(cachetest.KeyDirTar(t, over, []string{partial, whole}), types.OCIUncompressedLayer),
		MediaType: types.OCIUncompressedLayer,
	})
	if err != nil {
		t.Fatal(err)
	}
	f.push(t, "multi:v1", img)

	state := t.TempDir()
	e := newIxEnv(t, state, ixOptions(t), []string{f.ref("multi:v1")}, "cuda:80:32")
	ixRefresh(t, e.ix)
	if got := e.ix.Keys(); !slices.Equal(got, keys) {
		t.Fatalf("Keys() = %v, want %v", got, keys)
	}
	ls := e.ix.Lookup(partial)
	if len(ls) != 1 || len(ls[0].Layers) != 2 || ls[0].Layers[1].Desc.Digest != ls[0].Layer.Desc.Digest ||
		ls[0].Layers[0].Desc.Digest == ls[0].Layer.Desc.Digest {
		t.Fatalf("Lookup(%s) = %+v, want one location with both layers, the last as Layer", partial, ls)
	}
	first, second := ls[0].Layers[0], ls[0].Layers[1]
	if ls := e.ix.Lookup(untouched); len(ls) != 1 || ls[0].Layers != nil || ls[0].Layer.Desc.Digest != first.Desc.Digest {
		t.Fatalf("Lookup(%s) = %+v, want the first layer alone", untouched, ls)
	}
	layerReqs := func(l resolver.LayerRef) int {
		f.p.Settle(t)
		return f.p.Count(func(r proxy.Req) bool { return r.IsBlob() && strings.Contains(r.Path, l.Desc.Digest.String()) })
	}

	f.p.Reset()
	files := ixEntryFiles(t, e, partial, want)
	if !slices.IsSortedFunc(files, func(a, b fetch.KeyFile) int { return strings.Compare(a.Name, b.Name) }) {
		t.Errorf("Entry(%s): files not sorted by name: %+v", partial, files)
	}
	if n1, n2 := layerReqs(first), layerReqs(second); n1 != 1 || n2 != 1 {
		t.Errorf("Entry(%s): %d reads of layer 1, %d of layer 2; want one each", partial, n1, n2)
	}

	f.p.Reset()
	ixEntryFiles(t, e, whole, dir)
	if n1, n2 := layerReqs(first), layerReqs(second); n1 != 0 || n2 != 1 {
		t.Errorf("Entry(%s), every file overridden: %d reads of layer 1, %d of layer 2; want 0 and 1", whole, n1, n2)
	}
	ixEntryFiles(t, e, untouched, dir)

	im, err := e.r.Fetch(context.Background(), f.ref("multi:v1"))
	if err != nil {
		t.Fatal(err)
	}
	files, l, err := e.eng.ImageKey(context.Background(), im, partial)
	if err != nil {
		t.Fatal(err)
	}
	if l.Desc.Digest != second.Desc.Digest {
		t.Errorf("FetchKey: layer %s, want the last one holding the KEY", l)
	}
	if err := ixSameContent(e.st, files, filepath.Join(want, partial)); err != nil {
		t.Errorf("FetchKey(%s): %v", partial, err)
	}
	e.close()

	// Restart: the persisted index keeps both layers of the KEY.
	f.p.Reset()
	e2 := newIxEnv(t, state, ixOptions(t), []string{f.ref("multi:v1")}, "cuda:80:32")
	if err := e2.ix.Load(); err != nil {
		t.Fatal(err)
	}
	if ls := e2.ix.Lookup(partial); len(ls) != 1 || len(ls[0].Layers) != 2 {
		t.Fatalf("loaded Lookup(%s) = %+v, want both layers", partial, ls)
	}
	ixEntryFiles(t, e2, partial, want)
	f.p.Settle(t)
	if n := f.p.Count(nil); n != 0 {
		t.Errorf("restart: %d requests, want 0 (fetched before)", n)
	}
}

func ixWrite(t *testing.T, p string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestIndexLayersConcurrently: the layers of an image are indexed several
// at once, not one request after the other: behind a registry that takes
// 100 ms per request, more than one layer's requests are in flight.
func TestIndexLayersConcurrently(t *testing.T) {
	f := newIxRegistry(t)
	dir, es := ixGen(t, gen.Options{Kernels: 12, Seed: 5, Targets: ixTargets(t, "cuda:80:32")})
	keys := ixKeys(es)
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	for _, k := range keys {
		var err error
		img, err = mutate.Append(img, mutate.Addendum{
			Layer:     static.NewLayer(cachetest.KeyDirTar(t, dir, []string{k}), types.OCIUncompressedLayer),
			MediaType: types.OCIUncompressedLayer,
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	f.push(t, "layers:v1", img)
	e := newIxEnv(t, "", ixOptions(t), []string{f.ref("layers:v1")}, "cuda:80:32")
	f.p.SetLatency(100 * time.Millisecond)
	done := make(chan error, 1)
	go func() { done <- e.ix.Refresh(context.Background()) }()
	most := 0
	for running := true; running; {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			running = false
		case <-time.After(5 * time.Millisecond):
			most = max(most, f.p.Pending())
		}
	}
	if got := e.ix.Keys(); !slices.Equal(got, keys) {
		t.Fatalf("Keys() = %d KEYs, want %d", len(got), len(keys))
	}
	t.Logf("%d layers: at most %d requests in flight", len(keys), most)
	if most < 2 {
		t.Errorf("%d layers indexed with at most %d request in flight: one after the other", len(keys), most)
	}
}

// TestSkippedEntriesNamed: entries of a layer outside the cache its kind
// takes are named in a warning when the catalog indexes the image (the
// mount leaves them out), and the cache's KEYs are served all the same.
func TestSkippedEntriesNamed(t *testing.T) {
	f := newIxRegistry(t)
	dir, es := ixGen(t, gen.Options{Kernels: 1, Seed: 7, Targets: ixTargets(t, "cuda:80:32")})
	keys := ixKeys(es)
	var entries []cachetest.Entry
	for _, k := range keys {
		des, err := os.ReadDir(filepath.Join(dir, k))
		if err != nil {
			t.Fatal(err)
		}
		for _, de := range des {
			data, err := os.ReadFile(filepath.Join(dir, k, de.Name()))
			if err != nil {
				t.Fatal(err)
			}
			entries = append(entries, cachetest.Entry{Name: "io.triton.cache/" + k + "/" + de.Name(), Body: data})
		}
	}
	entries = append(entries, cachetest.Entry{Name: "etc/motd", Body: []byte("not a cache file\n")})
	img, err := mutate.Append(mutate.MediaType(empty.Image, types.OCIManifestSchema1), mutate.Addendum{
		Layer:     static.NewLayer(cachetest.Tar(t, entries...), types.OCIUncompressedLayer),
		MediaType: types.OCIUncompressedLayer,
	})
	if err != nil {
		t.Fatal(err)
	}
	f.push(t, "skipped:v1", img)

	state := t.TempDir()
	st, err := store.Open(fetch.StoreDir(state), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	r := resolver.New(ixOptions(t))
	eng := fetch.NewEngine(r, st, state)
	defer eng.Close()
	var log bytes.Buffer
	ix, err := catalog.New(r, eng, catalog.Config{Sources: []string{f.ref("skipped:v1")}, Targets: ixTargets(t, "cuda:80:32"),
		StateDir: state, Logger: slog.New(slog.NewTextHandler(&log, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if err := ix.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := ix.Keys(); !slices.Equal(got, keys) {
		t.Errorf("Keys() = %v, want %v", got, keys)
	}
	if !strings.Contains(log.String(), "outside the cache") || !strings.Contains(log.String(), "etc/motd") {
		t.Errorf("no warning naming etc/motd in the log:\n%s", log.String())
	}
}
