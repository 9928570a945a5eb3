package fetch_test

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"cargohold/fetch"
	"cargohold/gpu"
	"cargohold/image"
	"cargohold/kind"
	"cargohold/resolver"
	"cargohold/test/cachetest"
)

// TestUnitsOfKinds: a vLLM image's units (dir paths with '/') are listed
// with the layer's kind, fetched one ranged read each, found again through
// a fresh engine's index cache, and installed (fetch -d) into their root
// with the kind's rewrites: a nested Triton group file names the dir its KEY
// dir is installed in, vllm_compile_cache.py the root.
func TestUnitsOfKinds(t *testing.T) {
	src := cachetest.VLLMTestdata(t, "unpacked-vllm-cache")
	ctx := context.Background()
	p, err := image.PackKind(ctx, src, image.Options{Targets: func() ([]gpu.Target, error) { return nil, nil }}, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	layout := t.TempDir()
	ropts := lzOptions(t, nil)
	if _, err := resolver.Save(ctx, "oci:"+layout+":v1", p.Image, ropts); err != nil {
		t.Fatal(err)
	}
	res := resolver.New(ropts)
	im, err := res.Fetch(ctx, "oci:"+layout+":v1")
	if err != nil {
		t.Fatal(err)
	}
	state := t.TempDir()
	st := lzStore(t, 0)
	const (
		rank   = "torch_compile_cache/d4ec7c2a7d/rank_0_0"
		nested = rank + "/triton_cache/CLGERUUZRLHT73J2VAUCCDR5ZG34VIZXGHFLZH6HGZRILMOKHGQQ"
	)
	for round := range 2 {
		eng := fetch.NewEngine(res, st, state)
		u, err := eng.Units(ctx, im.LayerRef(0))
		k, units := u.Kind, u.Keys
		if err != nil || k != kind.VLLM || len(units) != len(p.Tree.Units) {
			t.Fatalf("round %d: Units = %s, %d units, %v; want vllm, %d", round, k, len(units), err, len(p.Tree.Units))
		}
		if s := eng.Stats(); round == 1 && (s.IndexCacheHits != 1 || s.Indexes != 0) {
			t.Errorf("round 1: %+v: want the index from the disk cache", s)
		}
		root := filepath.Join(t.TempDir(), "vllm")
		for _, unit := range []string{rank, nested} { // a unit holding another goes first
			var c resolver.Counters
			files, _, err := eng.ImageKey(fetch.WithCounters(ctx, &c), im, unit)
			if err != nil {
				t.Fatal(err)
			}
			if round == 0 && c.Requests() != 1 {
				t.Errorf("unit %s: %d requests, want 1", unit, c.Requests())
			}
			if err := eng.Install(root, kind.VLLM, unit, files); err != nil {
				t.Fatal(err)
			}
			if err := eng.Install(root, kind.VLLM, unit, files); !errors.Is(err, fs.ErrExist) {
				t.Errorf("second install of %s: %v, want ErrExist", unit, err)
			}
		}
		grp, err := os.ReadFile(filepath.Join(root, nested, "__grp__triton_poi_fused_cat_1.json"))
		if err != nil || !bytes.Contains(grp, []byte(`"`+filepath.Join(root, nested)+`/triton_poi_fused_cat_1.json"`)) {
			t.Errorf("nested group file %s, %v: want paths into %s", grp, err, filepath.Join(root, nested))
		}
		cf, err := os.ReadFile(filepath.Join(root, rank, "vllm_compile_cache.py"))
		if err != nil || !bytes.Contains(cf, []byte("'"+root+"/torch_compile_cache/")) || bytes.Contains(cf, []byte("/home/vllm/")) {
			t.Errorf("vllm_compile_cache.py not rewritten to %s (%v)", root, err)
		}
		eng.Close()
	}
	if err := fetch.NewEngine(res, st, state).Install(t.TempDir(), kind.VLLM, "../escape", nil); err == nil {
		t.Error("Install of a path outside the root: want an error")
	}
}
