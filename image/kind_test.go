package image

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"cargohold/gpu"
	"cargohold/kind"
	"cargohold/test/cachetest"
	"cargohold/test/replay"
)

// kindCase is one shared real cache of a kind, as its framework's root.
type kindCase struct {
	name string
	k    kind.Kind
	src  string
	gpu  string // the targets packed for units no kernel JSON describes, and the local GPU
}

func kindCases(t *testing.T) []kindCase {
	unpacked := cachetest.VLLMTestdata(t, "unpacked-vllm-cache")
	return []kindCase{
		{"vllm-binary", kind.VLLM, cachetest.VLLMTestdata(t, "llama-binary-cache"), "cuda:75:32"},
		{"vllm-unpacked", kind.VLLM, unpacked, "hip:gfx90a:64"},
		{"inductor", kind.Inductor, filepath.Join(unpacked, "torch_compile_cache/d4ec7c2a7d/rank_0_0/inductor_cache"), "hip:gfx90a:64"},
	}
}

// TestPackUnpackKinds packs each kind of the shared real caches (kind
// detected), extracts it elsewhere and replays the framework's HIT there:
// vLLM's paths and Triton's group files point into the new root, every
// other byte is the source's.
func TestPackUnpackKinds(t *testing.T) {
	for _, c := range kindCases(t) {
		t.Run(c.name, func(t *testing.T) {
			ctx := context.Background()
			gpus := targets(t, c.gpu)
			p, err := PackKind(ctx, c.src, Options{Title: c.name, Targets: func() ([]gpu.Target, error) { return gpus, nil }}, t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			if p.Tree.Kind != c.k || !slices.Equal(p.Targets, gpus) {
				t.Fatalf("packed kind %s targets %v, want %s %v", p.Tree.Kind, p.Targets, c.k, gpus)
			}
			im := save(t, p.Image)
			out := filepath.Join(t.TempDir(), "root")
			res, err := Unpack(ctx, testResolver, im, out, gpus, nil)
			if err != nil {
				t.Fatal(err)
			}
			if res.Kind != c.k || len(res.Installed) != len(p.Tree.Units) || res.Reason != "" || len(res.Skipped) != 0 {
				t.Fatalf("unpack %+v, want %d units installed", res, len(p.Tree.Units))
			}
			compareKind(t, c.k, c.src, out)
			replayHit(t, c.k, out, c.src)

			// Again: every unit is kept; a GPU that fits no target gets
			// nothing, and is told why.
			res, err = Unpack(ctx, testResolver, im, out, gpus, nil)
			if err != nil || len(res.Kept) != len(p.Tree.Units) || len(res.Installed) != 0 {
				t.Fatalf("second unpack: %+v %v", res, err)
			}
			none := filepath.Join(t.TempDir(), "none")
			res, err = Unpack(ctx, testResolver, im, none, targets(t, "cuda:90:32"), nil)
			if err != nil || len(res.Installed) != 0 || !strings.Contains(res.Reason, "fits") || res.Dir != none {
				t.Fatalf("unfit unpack: %+v %v", res, err)
			}
		})
	}
}

// TestUnpackKeepsLocalUnits: a unit that exists locally is kept whole, its
// siblings and the units below it are installed into the dirs that exist.
func TestUnpackKeepsLocalUnits(t *testing.T) {
	c := kindCases(t)[1] // the unpacked vLLM cache: a rank dir unit holding units
	ctx := context.Background()
	p, err := PackKind(ctx, c.src, Options{}, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	out := t.TempDir()
	rank := filepath.Join(out, "torch_compile_cache/d4ec7c2a7d/rank_0_0")
	if err := os.MkdirAll(rank, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(rank, "vllm_compile_cache.py"), []byte("{}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	res, err := Unpack(ctx, testResolver, save(t, p.Image), out, targets(t, c.gpu), nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.Kept, []string{"torch_compile_cache/d4ec7c2a7d/rank_0_0"}) || len(res.Installed) != len(p.Tree.Units)-1 {
		t.Fatalf("kept %q, installed %d of %d", res.Kept, len(res.Installed), len(p.Tree.Units))
	}
	if data, _ := os.ReadFile(filepath.Join(rank, "vllm_compile_cache.py")); string(data) != "{}\n" {
		t.Error("the local cache file was replaced")
	}
	if _, err := os.Stat(filepath.Join(rank, "computation_graph.py")); err == nil {
		t.Error("a file was added to a local unit")
	}
	if _, err := os.Stat(filepath.Join(rank, "inductor_cache/fxgraph/eo/feorwmj2xdtwpofkcuc6fdnluv2auo3zbui7xy2qcncgy2qnvds6")); err != nil {
		t.Errorf("a unit below the kept one: %v", err)
	}
}

// TestUnpackForeignVLLM: a vLLM cache in a plain gzip layer as other tools
// write it (names with and without "./", MCV's labels), with entries its
// kind does not take and a second kind in the layer, extracts into the
// default root of its kind ($VLLM_CACHE_ROOT) and names what it left out.
func TestUnpackForeignVLLM(t *testing.T) {
	src := cachetest.VLLMTestdata(t, "llama-binary-cache")
	var es []cachetest.Entry
	err := filepath.Walk(src, func(p string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		data, err := os.ReadFile(p)
		name := "io.vllm.cache/" + rel
		if len(es)%2 == 0 {
			name = "./" + name
		}
		es = append(es, cachetest.Entry{Name: name, Body: data})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	es = append(es,
		cachetest.Entry{Name: "io.vllm.cache/xla_cache/x.bin", Body: []byte("x")},
		cachetest.Entry{Name: "io.triton.cache/" + cudaKey + "/add_kernel.json", Body: []byte("{}")},
		cachetest.Entry{Name: "io.vllm.manifest/", Type: tar.TypeDir},
		cachetest.Entry{Name: "io.vllm.manifest/manifest.json", Body: []byte(`{"vllm":[]}`)})
	labels := map[string]string{
		"cache.vllm.image/summary":     `{"targets":[{"backend":"cuda","arch":"sm_75","warp_size":32,"cuda_version":"12.9"}]}`,
		"cache.vllm.image/entry-count": "1",
	}
	img := imageOf(t, types.DockerManifestSchema2, labels, static.NewLayer(cachetest.Gzip(t, cachetest.Tar(t, es...)), types.DockerLayer))
	root := filepath.Join(t.TempDir(), "vllm")
	t.Setenv("VLLM_CACHE_ROOT", root)
	res, err := Unpack(context.Background(), testResolver, save(t, img), "", targets(t, "cuda:75:32"), nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"io.vllm.cache/xla_cache/x.bin", "io.triton.cache/" + cudaKey + "/add_kernel.json"}
	if res.Kind != kind.VLLM || res.Dir != root || len(res.Installed) != 2 || !slices.Equal(res.Skipped, want) {
		t.Fatalf("unpack %+v; want 2 units in %s, skipped %q", res, root, want)
	}
	compareKind(t, kind.VLLM, src, root)
	replayHit(t, kind.VLLM, root, src)
}

// compareKind checks that every file of src is in got, byte for byte but
// for the kind's rewrites, which must name got.
func compareKind(t *testing.T, k kind.Kind, src, got string) {
	t.Helper()
	tree, err := kind.Scan(src, k)
	if err != nil {
		t.Fatal(err)
	}
	abs, _ := filepath.Abs(got)
	rewritten := 0
	for _, u := range tree.Units {
		for _, f := range u.Files {
			want, err := os.ReadFile(filepath.Join(src, u.Path, f.Name))
			if err != nil {
				t.Fatal(err)
			}
			have, err := os.ReadFile(filepath.Join(got, u.Path, f.Name))
			if err != nil {
				t.Fatal(err)
			}
			if rw := kind.RewriteOf(k, u.Path, f.Name); rw != kind.RewriteNone {
				rewritten++
				if want, err = rw.Apply(want, abs, u.Path); err != nil {
					t.Fatal(err)
				}
				if !bytes.Contains(have, []byte(abs+"/")) {
					t.Errorf("%s/%s: no path into %s", u.Path, f.Name, abs)
				}
			}
			if !bytes.Equal(have, want) {
				t.Errorf("%s/%s differs from the source", u.Path, f.Name)
			}
		}
	}
	if k == kind.VLLM && rewritten == 0 {
		t.Error("no file rewritten: the test proves nothing")
	}
}

// replayHit replays the framework's HIT of every key of root, comparing
// what it reads with src.
func replayHit(t *testing.T, k kind.Kind, root, src string) {
	t.Helper()
	sum, bad, err := replay.HitAll(context.Background(), replay.Kind(k), root, src)
	for _, r := range bad {
		t.Errorf("replay %s %s: %s %s", k, r.Key, r.Outcome, r.Error)
	}
	if err != nil || !sum.OK() || sum.Hits == 0 {
		t.Fatalf("replay %s in %s: %+v, %v", k, root, sum, err)
	}
}

// TestHexLauncherDirs: Triton 3.1 and older name launcher dirs by 64 hex
// digits; they are packed, and installed with an image that fits.
func TestHexLauncherDirs(t *testing.T) {
	src := t.TempDir()
	copyTree(t, cachetest.Testdata(t, "vector-add-cache"), src)
	hex := "c4d45c65a1f8a3b1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5"
	if err := os.MkdirAll(filepath.Join(src, hex), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, hex, "cuda_utils.so"), []byte("\x7fELF launcher"), 0o755); err != nil {
		t.Fatal(err)
	}
	p, err := Pack(context.Background(), src, "hex", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if len(p.Tree.Skipped) != 0 || len(p.Tree.Units) != 2 {
		t.Fatalf("packed %d units, skipped %v", len(p.Tree.Units), p.Tree.Skipped)
	}
	out := t.TempDir()
	res, err := Unpack(context.Background(), testResolver, save(t, p.Image), out, targets(t, "cuda:75:32"), nil)
	if err != nil || !slices.Contains(res.Installed, hex) || len(res.Installed) != 2 {
		t.Fatalf("unpack %+v, %v", res, err)
	}
	cachetest.Compare(t, src, out)
}
