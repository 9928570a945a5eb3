package catalog_test

import (
	"bytes"
	"cmp"
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"cargohold/catalog"
	"cargohold/fetch"
	"cargohold/resolver"
	"cargohold/store"
	"cargohold/triton/gen"
)

// TestOpenRefetchesEvicted: content evicted between Entry and Open is
// fetched again by Open; when it cannot be had again, Open says so.
func TestOpenRefetchesEvicted(t *testing.T) {
	dir, es := ixGen(t, gen.Options{Kernels: 6, Seed: 11, Scale: 0.05})
	layout := t.TempDir()
	ref := "oci:" + layout + ":v1"
	opts := ixOptions(t)
	if _, err := resolver.Save(context.Background(), ref, ixPack(t, dir), opts); err != nil {
		t.Fatal(err)
	}
	keys := ixKeys(es)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	// Learn each KEY dir's size with an unbounded store.
	sizes := map[string]int64{}
	probe := newIxEnv(t, "", opts, []string{ref}, "cuda:80:32")
	ixRefresh(t, probe.ix)
	for _, k := range keys {
		files, err := probe.ix.Entry(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			sizes[k] += f.Size
		}
	}
	slices.SortFunc(keys, func(a, b string) int { return cmp.Compare(sizes[b], sizes[a]) })
	a, b := keys[0], keys[1]
	limit := sizes[a] + sizes[a]/5 // a fits, a and b do not
	if sizes[a]+sizes[b] <= limit {
		t.Fatalf("test data: dirs of %d and %d bytes fit together in %d", sizes[a], sizes[b], limit)
	}

	state := t.TempDir()
	st, err := store.Open(fetch.StoreDir(state), limit)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	r := resolver.New(opts)
	eng := fetch.NewEngine(r, st, state)
	defer eng.Close()
	cat, err := catalog.New(r, eng, catalog.Config{Sources: []string{ref}, Targets: ixTargets(t, "cuda:80:32"), StateDir: state})
	if err != nil {
		t.Fatal(err)
	}
	ixRefresh(t, cat)
	filesA, err := cat.Entry(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cat.Entry(ctx, b); err != nil {
		t.Fatal(err)
	}
	f := slices.MaxFunc(filesA, func(x, y fetch.KeyFile) int { return cmp.Compare(x.Size, y.Size) })
	if st.Has(f.Digest) {
		t.Fatalf("%s/%s still stored after fetching %s into a %d-byte store: the test tests nothing", a, f.Name, b, limit)
	}
	before := eng.Stats().Fetches

	c, err := cat.Open(ctx, a, f, time.Second)
	if err != nil {
		t.Fatalf("Open of evicted %s/%s: %v", a, f.Name, err)
	}
	got, err := io.ReadAll(io.NewSectionReader(c, 0, f.Size+1))
	c.Close()
	want, rerr := os.ReadFile(filepath.Join(dir, a, f.Name))
	if err != nil || rerr != nil || !bytes.Equal(got, want) {
		t.Fatalf("refetched %s/%s: %d bytes (%v), want the %d bytes of the cache (%v)", a, f.Name, len(got), err, len(want), rerr)
	}
	if n := eng.Stats().Fetches - before; n != 1 {
		t.Fatalf("Open of an evicted file made %d fetches, want 1", n)
	}

	// Evicted again, with the image gone: Open fails and says why.
	if _, err := cat.Entry(ctx, b); err != nil {
		t.Fatal(err)
	}
	gone := slices.IndexFunc(filesA, func(x fetch.KeyFile) bool { return !st.Has(x.Digest) })
	if gone < 0 {
		t.Fatalf("no file of %s evicted by fetching %s again: the test tests nothing", a, b)
	}
	if err := os.RemoveAll(filepath.Join(layout, "blobs")); err != nil {
		t.Fatal(err)
	}
	if c, err := cat.Open(ctx, a, filesA[gone], time.Second); err == nil {
		c.Close()
		t.Fatal("Open of an evicted file whose image is gone: no error")
	} else if !strings.Contains(err.Error(), "evicted") {
		t.Fatalf("Open error %q does not say the content was evicted", err)
	}
}
