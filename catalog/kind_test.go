package catalog_test

import (
	"context"
	"errors"
	"io/fs"
	"slices"
	"strings"
	"testing"
	"time"

	"cargohold/catalog"
	"cargohold/image"
	"cargohold/kind"
	"cargohold/test/cachetest"
)

// TestCatalogKinds: a catalog serves one kind. A vLLM catalog over a
// repository holding a vLLM image (the unpacked format, ROCm) and a Triton
// image indexes the vLLM image's units by path and lists the Triton image
// without indexing it, saying why; Entry of a nested Triton unit marks its
// group file for the rewrite, Entry of other units marks none; a GPU the
// vLLM image's targets do not fit indexes nothing; the persisted catalog of
// one kind is not loaded by a catalog of another.
func TestCatalogKinds(t *testing.T) {
	f := newIxRegistry(t)
	src := cachetest.VLLMTestdata(t, "unpacked-vllm-cache")
	p, err := image.PackKind(context.Background(), src, image.Options{Title: "vllm"}, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	f.push(t, "caches:vllm", p.Image)
	f.push(t, "caches:triton", ixPack(t, cachetest.Testdata(t, "vector-add-cache-rocm")))

	state := t.TempDir()
	e := newKindEnv(t, state, kind.VLLM, "hip:gfx90a:64", f.ref("caches:*"))
	ixRefresh(t, e.ix)
	var units []string
	for _, u := range p.Tree.Units {
		units = append(units, u.Path)
	}
	if got := e.ix.Keys(); !slices.Equal(got, units) {
		t.Fatalf("Keys() = %q\nwant %q", got, units)
	}
	var triton catalog.ImageInfo
	for _, im := range e.ix.Images() {
		if strings.HasSuffix(im.Ref, ":triton") {
			triton = im
		}
	}
	if triton.Kind != kind.Triton || triton.Fits || triton.Keys != 0 || !strings.Contains(triton.Why, "triton cache") {
		t.Errorf("the Triton image: %+v, want listed, not indexed, with why", triton)
	}

	// The skeleton, from the index alone.
	for rel, want := range map[string]catalog.DirInfo{
		"":                               {Exists: true, Children: []string{"torch_compile_cache"}},
		"torch_compile_cache/d4ec7c2a7d": {Exists: true, Children: []string{"rank_0_0"}},
		"torch_compile_cache/d4ec7c2a7d/rank_0_0/inductor_cache/fxgraph": {Exists: true, Children: []string{"eo", "ih", "r4"}},
		"torch_compile_cache/d4ec7c2a7d/rank_0_0/inductor_cache/sy":      {Exists: true, Unit: true},
		"torch_compile_cache/d4ec7c2a7d/rank_0_0/inductor_cache/zz":      {},
	} {
		if got := e.ix.Dir(rel); got.Exists != want.Exists || got.Unit != want.Unit || !slices.Equal(got.Children, want.Children) {
			t.Errorf("Dir(%q) = %+v, want %+v", rel, got, want)
		}
	}
	if d := e.ix.Dir("torch_compile_cache/d4ec7c2a7d/rank_0_0"); !d.Unit || !slices.Equal(d.Children, []string{"inductor_cache", "triton_cache"}) {
		t.Errorf("the rank dir: %+v, want a unit holding inductor_cache and triton_cache", d)
	}

	const (
		rank   = "torch_compile_cache/d4ec7c2a7d/rank_0_0"
		nested = rank + "/triton_cache/CLGERUUZRLHT73J2VAUCCDR5ZG34VIZXGHFLZH6HGZRILMOKHGQQ"
		module = rank + "/inductor_cache/sy"
	)
	for _, unit := range []string{nested, rank, module} {
		files := ixEntryFiles(t, e, unit, src)
		for _, fl := range files {
			want := kind.RewriteNone
			switch {
			case unit == nested && strings.HasPrefix(fl.Name, "__grp__"):
				want = kind.RewriteGroup
			case unit == rank && fl.Name == "vllm_compile_cache.py":
				want = kind.RewriteVLLM
			}
			if fl.Rewrite != want {
				t.Errorf("%s/%s: Rewrite %d, want %d", unit, fl.Name, fl.Rewrite, want)
			}
		}
	}

	// A GPU the image's targets do not fit: listed, nothing indexed.
	other := newKindEnv(t, "", kind.VLLM, "cuda:90:32", f.ref("caches:vllm"))
	ixRefresh(t, other.ix)
	if ims := other.ix.Images(); len(other.ix.Keys()) != 0 || len(ims) != 1 || ims[0].Fits || !strings.Contains(ims[0].Why, "fits") {
		t.Errorf("unfit GPU: %d keys, images %+v", len(other.ix.Keys()), ims)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := other.ix.Entry(ctx, rank); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Entry on an unfit GPU: %v, want ErrNotExist", err)
	}

	// The Triton catalog of the same repository: the other way round.
	tr := newKindEnv(t, "", kind.Triton, "hip:gfx90a:64", f.ref("caches:*"))
	ixRefresh(t, tr.ix)
	if keys := tr.ix.Keys(); len(keys) != 1 || strings.Contains(keys[0], "/") {
		t.Errorf("Triton catalog keys %q: want the one KEY of the Triton image", keys)
	}

	again, err := catalog.New(e.r, e.eng, catalog.Config{Sources: []string{f.ref("caches:*")}, Kind: kind.Inductor,
		Targets: ixTargets(t, "hip:gfx90a:64"), StateDir: state})
	if err != nil {
		t.Fatal(err)
	}
	if err := again.Load(); !errors.Is(err, catalog.ErrStaleState) {
		t.Errorf("Load of a vLLM catalog's state as Inductor: %v, want ErrStaleState", err)
	}
}

func newKindEnv(tb testing.TB, state string, k kind.Kind, ts string, sources ...string) *ixEnv {
	tb.Helper()
	return newIxEnvKind(tb, state, ixOptions(tb), k, sources, ts)
}
