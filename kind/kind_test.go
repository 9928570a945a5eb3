package kind

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"cargohold/gpu"
	"cargohold/test/cachetest"
	"cargohold/triton"
)

const (
	key52 = "5W7KJQDTJCL4UGPMKKCS7TEEPZKSWOY4774SZQ6674FWSXG5MNXQ"
	key64 = "c4d45c65a1f8a3b1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5"
)

func TestParse(t *testing.T) {
	for _, k := range All {
		got, err := Parse(string(k))
		if err != nil || got != k {
			t.Errorf("Parse(%q) = %q, %v", k, got, err)
		}
	}
	if _, err := Parse("tensorrt"); err == nil || !strings.Contains(err.Error(), "triton, vllm or inductor") {
		t.Errorf("Parse(tensorrt) = %v, want an error naming the kinds", err)
	}
	if VLLM.Prefix() != "io.vllm.cache/" || Triton.ManifestPath() != "io.triton.manifest/manifest.json" ||
		Inductor.Label("summary") != "cache.inductor.image/summary" {
		t.Error("prefixes, manifest path or labels are not MCV's")
	}
}

func TestDetect(t *testing.T) {
	binary := cachetest.VLLMTestdata(t, "llama-binary-cache")
	unpacked := cachetest.VLLMTestdata(t, "unpacked-vllm-cache")
	for dir, want := range map[string]Kind{
		cachetest.Testdata(t, "vector-add-cache"): Triton,
		binary:   VLLM,
		unpacked: VLLM,
		filepath.Join(unpacked, "torch_compile_cache/d4ec7c2a7d/rank_0_0/inductor_cache"): Inductor,
		filepath.Join(unpacked, "torch_compile_cache/d4ec7c2a7d/rank_0_0/triton_cache"):   Triton,
	} {
		if got, err := Detect(dir); got != want || err != nil {
			t.Errorf("Detect(%s) = %q, %v; want %s", dir, got, err, want)
		}
	}
	// Modules only (no fxgraph/): Inductor; 64-hex launcher dirs: Triton.
	mods := t.TempDir()
	write(t, mods, "ab/cabc.py", "x")
	hex := t.TempDir()
	write(t, hex, key64+"/cuda_utils.so", "x")
	for dir, want := range map[string]Kind{mods: Inductor, hex: Triton} {
		if got, err := Detect(dir); got != want || err != nil {
			t.Errorf("Detect(%s) = %q, %v; want %s", dir, got, err, want)
		}
	}
	other := t.TempDir()
	write(t, other, "notes.txt", "x")
	write(t, other, "models/a.bin", "x")
	_, err := Detect(other)
	if !errors.Is(err, ErrUnknown) || !strings.Contains(err.Error(), "models, notes.txt") || !strings.Contains(err.Error(), "--cache") {
		t.Errorf("Detect(unknown) = %v: want ErrUnknown naming what it found and --cache", err)
	}
}

func TestClassify(t *testing.T) {
	for _, c := range []struct {
		k      Kind
		rel    string
		unit   string
		triton bool
		local  bool // not taken, silently
		skip   bool // not taken, named
	}{
		{k: Triton, rel: key52 + "/add_kernel.json", unit: key52, triton: true},
		{k: Triton, rel: key64 + "/hip_utils.so", unit: key64, triton: true},
		{k: Triton, rel: "lock", local: true},
		{k: Triton, rel: key52 + "/tmp.pid_1_abc/x.json", local: true},
		{k: Triton, rel: "README", skip: true},
		{k: Triton, rel: "notakey/x", skip: true},
		{k: Triton, rel: key52 + "/sub/x", skip: true},
		{k: VLLM, rel: "torch_compile_cache/edf531ca35/rank_0_0/backbone/vllm_compile_cache.py", unit: "torch_compile_cache/edf531ca35/rank_0_0/backbone"},
		{k: VLLM, rel: "modelinfos/m.json", unit: "modelinfos"},
		{k: VLLM, rel: "torch_compile_cache/h/rank_0_0/triton_cache/" + key52 + "/k.json", unit: "torch_compile_cache/h/rank_0_0/triton_cache/" + key52, triton: true},
		{k: VLLM, rel: "torch_compile_cache/h/rank_0_0/triton_cache/stray.json", skip: true},
		{k: VLLM, rel: "torch_compile_cache/h/rank_0_0/inductor_cache/fxgraph/ab/fabc/e1", unit: "torch_compile_cache/h/rank_0_0/inductor_cache/fxgraph/ab/fabc"},
		{k: VLLM, rel: "torch_compile_cache/h/rank_0_0/inductor_cache/locks/x.lock", local: true},
		{k: VLLM, rel: "torch_compile_cache/h/rank_0_0/p/artifact_compile_range_1_2_subgraph_0/triton/0/" + key52 + "/k.json",
			unit: "torch_compile_cache/h/rank_0_0/p/artifact_compile_range_1_2_subgraph_0/triton/0/" + key52, triton: true},
		{k: VLLM, rel: "xla_cache/x", skip: true},
		{k: VLLM, rel: "top.txt", skip: true},
		{k: Inductor, rel: "fxgraph/ab/fabc/entry", unit: "fxgraph/ab/fabc"},
		{k: Inductor, rel: "aotautograd/aabc/entry", unit: "aotautograd/aabc"},
		{k: Inductor, rel: "ab/cabc.py", unit: "ab"},
		{k: Inductor, rel: "ab/.123.456.tmp", local: true},
		{k: Inductor, rel: "triton/0/" + key52 + "/__grp__k.json", unit: "triton/0/" + key52, triton: true},
		{k: Inductor, rel: "triton/0/tmp.1234/k.json", local: true},
		{k: Inductor, rel: "locks/abc.lock", local: true},
		{k: Inductor, rel: "cache/0123abcd", local: true},
		{k: Inductor, rel: "py311_cu121/x.so", skip: true},
		{k: Inductor, rel: "stray", skip: true},
	} {
		pl, ok, why := Classify(c.k, c.rel)
		switch {
		case c.local && (ok || why != ""), c.skip && (ok || why == ""):
			t.Errorf("%s %s: ok %v why %q; want local %v, skipped %v", c.k, c.rel, ok, why, c.local, c.skip)
		case !c.local && !c.skip && (!ok || pl.Unit != c.unit || pl.Triton != c.triton || pl.File != c.rel[len(c.unit)+1:]):
			t.Errorf("%s %s: %+v ok %v (%s); want unit %s triton %v", c.k, c.rel, pl, ok, why, c.unit, c.triton)
		case !c.local && !c.skip:
			if !IsUnit(c.k, c.unit) || IsTritonUnit(c.k, c.unit) != c.triton {
				t.Errorf("%s %s: IsUnit %v IsTritonUnit %v", c.k, c.unit, IsUnit(c.k, c.unit), IsTritonUnit(c.k, c.unit))
			}
		}
	}
	for _, u := range []string{"", "torch_compile_cache/h/rank_0_0/triton_cache", "triton/0"} {
		if IsUnit(VLLM, u) && IsUnit(Inductor, u) {
			t.Errorf("IsUnit(%q): a root or Triton cache dir is no unit", u)
		}
	}
}

func TestScan(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "fxgraph/ab/fabc/e1", "graph")
	write(t, dir, "fxgraph/ab/fabc/.12.34.tmp", "partial")
	write(t, dir, "ab/cabc.py", "module")
	write(t, dir, "ab/cabc.best_config", "{}")
	write(t, dir, "locks/x.lock", "")
	write(t, dir, "cache/timings", "{}")
	write(t, dir, "triton/0/tmp.abcd/k.json", "{}")
	write(t, dir, "unknown/x", "x")
	write(t, dir, "toplevel.txt", "x")
	kdir := filepath.Join(dir, "triton", "0", key52)
	src := filepath.Join(cachetest.Testdata(t, "vector-add-cache"), key52)
	des, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, de := range des {
		data, _ := os.ReadFile(filepath.Join(src, de.Name()))
		write(t, kdir, de.Name(), string(data))
	}
	if err := os.Symlink("ab/cabc.py", filepath.Join(dir, "ab", "link.py")); err != nil {
		t.Fatal(err)
	}
	tr, err := Scan(dir, Inductor)
	if err != nil {
		t.Fatal(err)
	}
	var units []string
	for _, u := range tr.Units {
		units = append(units, u.Path)
	}
	want := []string{"ab", "fxgraph/ab/fabc", "triton/0/" + key52}
	if !slices.Equal(units, want) {
		t.Fatalf("units %q, want %q", units, want)
	}
	if n := len(tr.Units[0].Files); n != 2 || len(tr.Units[1].Files) != 1 {
		t.Errorf("unit files %d, %d: want 2, 1 (temp file left out)", n, len(tr.Units[1].Files))
	}
	if u := tr.Units[2]; !u.Triton || len(u.Kernels) != 1 || u.Kernels[0].Target != (gpu.Target{Backend: "cuda", Arch: "75", WarpSize: 32}) {
		t.Errorf("nested Triton unit %+v: want a Triton unit with its kernel", u)
	}
	var skipped []string
	for _, s := range tr.Skipped {
		rel, _ := filepath.Rel(dir, s.Path)
		skipped = append(skipped, rel)
	}
	slices.Sort(skipped)
	if want := []string{"ab/link.py", "toplevel.txt", "unknown"}; !slices.Equal(skipped, want) {
		t.Errorf("skipped %q, want %q (local-only paths silently)", skipped, want)
	}
	if _, err := Scan(t.TempDir(), VLLM); !errors.Is(err, ErrNoUnits) {
		t.Errorf("Scan(empty) = %v, want ErrNoUnits", err)
	}
	// A kernel JSON in the wrong KEY dir is an error, nested too.
	bad := t.TempDir()
	data, _ := os.ReadFile(filepath.Join(src, "add_kernel.json"))
	write(t, bad, "torch_compile_cache/h/rank_0_0/triton_cache/"+strings.Repeat("A", 52)+"/add_kernel.json", string(data))
	if _, err := Scan(bad, VLLM); err == nil || !strings.Contains(err.Error(), "belongs in dir") {
		t.Errorf("Scan(misplaced kernel) = %v", err)
	}
}

func TestRewriteOf(t *testing.T) {
	for _, c := range []struct {
		k          Kind
		unit, name string
		want       Rewrite
	}{
		{Triton, key52, "__grp__add.json", RewriteGroup},
		{Triton, key52, "add.json", RewriteNone},
		{VLLM, "torch_compile_cache/h/rank_0_0/backbone", "vllm_compile_cache.py", RewriteVLLM},
		{VLLM, "torch_compile_cache/h/rank_0_0", "vllm_compile_cache.py", RewriteVLLM},
		{VLLM, "torch_compile_cache/h/rank_0_0/triton_cache/" + key52, "__grp__k.json", RewriteGroup},
		{VLLM, "torch_compile_cache/h/rank_0_0/inductor_cache/ab", "vllm_compile_cache.py", RewriteVLLM}, // an odd place, still vLLM's file
		{VLLM, "torch_compile_cache/h/rank_0_0", "__grp__k.json", RewriteNone},
		{Inductor, "triton/0/" + key52, "__grp__k.json", RewriteGroup},
		{Inductor, "ab", "vllm_compile_cache.py", RewriteNone},
	} {
		if got := RewriteOf(c.k, c.unit, c.name); got != c.want {
			t.Errorf("RewriteOf(%s, %s, %s) = %d, want %d", c.k, c.unit, c.name, got, c.want)
		}
	}
	// A nested group file is rewritten to the dir that holds its KEY dir.
	grp := []byte(`{"child_paths": {"k.json": "/old/root/torch_compile_cache/h/rank_0_0/triton_cache/` + key52 + `/k.json"}}`)
	out, err := RewriteGroup.Apply(grp, "/new", "torch_compile_cache/h/rank_0_0/triton_cache/"+key52)
	if err != nil || !bytes.Contains(out, []byte(`"/new/torch_compile_cache/h/rank_0_0/triton_cache/`+key52+`/k.json"`)) {
		t.Errorf("nested group rewrite: %s, %v", out, err)
	}
}

// TestRewriteVLLMCache rewrites the real cache files to another root and
// back: every path moves, nothing else changes.
func TestRewriteVLLMCache(t *testing.T) {
	for _, c := range []struct{ data, file, old string }{
		{"llama-binary-cache", "torch_compile_cache/edf531ca35/rank_0_0/backbone/vllm_compile_cache.py", "/home/ec2-user/.cache/vllm"},
		{"unpacked-vllm-cache", "torch_compile_cache/d4ec7c2a7d/rank_0_0/vllm_compile_cache.py", "/home/vllm/.cache/vllm"},
	} {
		orig, err := os.ReadFile(filepath.Join(cachetest.VLLMTestdata(t, c.data), c.file))
		if err != nil {
			t.Fatal(err)
		}
		out, err := RewriteVLLMCache(orig, "/srv/cache/vllm/")
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(out, []byte(c.old)) || bytes.Count(out, []byte("'/srv/cache/vllm/torch_compile_cache/")) != bytes.Count(orig, []byte("'"+c.old+"/torch_compile_cache/")) {
			t.Errorf("%s: not every path moved to the new root", c.data)
		}
		back, err := RewriteVLLMCache(out, c.old)
		if err != nil || !bytes.Equal(back, orig) {
			t.Errorf("%s: rewriting back does not give the original (%v)", c.data, err)
		}
	}
	for _, root := range []string{"relative/root", "/with'quote", "/new\nline"} {
		if _, err := RewriteVLLMCache([]byte("{}"), root); err == nil {
			t.Errorf("root %q: want an error", root)
		}
	}
	if _, err := RewriteVLLMCache([]byte("{ 'unterminated"), "/r"); err == nil {
		t.Error("an unterminated string: want an error")
	}
}

func TestLabels(t *testing.T) {
	cuda := []gpu.Target{{Backend: "cuda", Arch: "75", WarpSize: 32}}
	bin, err := Scan(cachetest.VLLMTestdata(t, "llama-binary-cache"), VLLM)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := Labels(bin, nil, "x"); !errors.Is(err, ErrNoTargets) || !strings.Contains(err.Error(), "--gpu") {
		t.Errorf("vLLM binary without targets: %v, want ErrNoTargets naming --gpu", err)
	}
	l, ts, err := Labels(bin, cuda, "llama")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"cache.vllm.image/entry-count":      "1",
		"cache.vllm.image/cache-size-bytes": "35691852",
		"cache.vllm.image/format":           "binary",
		"cache.vllm.image/summary":          `{"targets":[{"backend":"cuda","arch":"sm_75","warp_size":32}]}`,
		LabelKServeCacheHash:                "edf531ca35",
		LabelKServeMountSubpath:             "torch_compile_cache",
		LabelKServeRootEnv:                  "VLLM_CACHE_ROOT=/home/kserve/.cache/vllm",
	}
	for k, v := range want {
		if l[k] != v {
			t.Errorf("label %s = %q, want %q", k, l[k], v)
		}
	}
	if !slices.Equal(ts, cuda) {
		t.Errorf("targets %v", ts)
	}
	s, err := ParseLabels(l)
	if err != nil || s.Kind != VLLM || !slices.Equal(s.Targets, cuda) || s.EntryCount != 1 || s.CacheSize != 35691852 ||
		s.Format != "binary" || !slices.Equal(s.Hashes, []string{"edf531ca35"}) {
		t.Errorf("ParseLabels = %+v, %v", s, err)
	}

	// The unpacked (legacy) format: targets from its Triton kernels, MCV's
	// Triton summary; GPU targets are not needed.
	up, err := Scan(cachetest.VLLMTestdata(t, "unpacked-vllm-cache"), VLLM)
	if err != nil {
		t.Fatal(err)
	}
	l, ts, err = Labels(up, nil, "x")
	if err != nil || l["cache.vllm.image/format"] != "triton" || l["cache.vllm.image/cache-size-bytes"] != "2255554" ||
		!slices.Equal(ts, []gpu.Target{{Backend: "hip", Arch: "gfx90a", WarpSize: 64}}) {
		t.Errorf("unpacked labels %v, %v, %v", l, ts, err)
	}

	// Triton: entry-count is kernels (MCV's spec), size the bytes as
	// stored.
	tr, err := Scan(cachetest.Testdata(t, "vector-add-cache"), Triton)
	if err != nil {
		t.Fatal(err)
	}
	l, _, err = Labels(tr, nil, "va")
	if err != nil || l[triton.LabelEntryCount] != "1" || l[triton.LabelCacheSize] != "26712" {
		t.Errorf("Triton labels %v, %v", l, err)
	}
	if s, err := ParseLabels(l); err != nil || s.Kind != Triton || len(s.Kernels) != 1 {
		t.Errorf("ParseLabels(Triton) = %+v, %v", s, err)
	}
	if _, err := ParseLabels(map[string]string{"org.opencontainers.image.title": "x"}); !errors.Is(err, ErrNoLabels) {
		t.Errorf("ParseLabels(none) = %v", err)
	}
	// MCV's forms: sm_ arch, rocm backend.
	s, err = ParseLabels(map[string]string{"cache.vllm.image/summary": `{"targets":[{"backend":"cuda","arch":"sm_90","warp_size":32},{"backend":"rocm","arch":"gfx942","warp_size":64}]}`})
	if err != nil || !slices.Equal(s.Targets, []gpu.Target{{Backend: "cuda", Arch: "90", WarpSize: 32}, {Backend: "hip", Arch: "gfx942", WarpSize: 64}}) {
		t.Errorf("MCV summary: %+v, %v", s.Targets, err)
	}
}

func TestManifest(t *testing.T) {
	up, err := Scan(cachetest.VLLMTestdata(t, "unpacked-vllm-cache"), VLLM)
	if err != nil {
		t.Fatal(err)
	}
	m, err := Manifest(up)
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		VLLM []struct {
			Hash   string            `json:"vllmHash"`
			Format string            `json:"cacheFormat"`
			Triton []json.RawMessage `json:"triton"`
		} `json:"vllm"`
	}
	if err := json.Unmarshal(m, &got); err != nil || len(got.VLLM) != 1 || got.VLLM[0].Hash != "d4ec7c2a7d" ||
		got.VLLM[0].Format != "triton" || len(got.VLLM[0].Triton) != 6 {
		t.Errorf("manifest %s: %v", m, err)
	}
	again, _ := Manifest(up)
	if !bytes.Equal(m, again) {
		t.Error("manifest not reproducible")
	}
}

func TestCheckPath(t *testing.T) {
	for _, p := range []string{"a", "a/b", key52, "torch_compile_cache/h/rank_0_0"} {
		if err := CheckPath(p); err != nil {
			t.Errorf("CheckPath(%q) = %v", p, err)
		}
	}
	for _, p := range []string{"", "/a", "a/../b", "a//b", "./a", "a/", "..", "a/\x01", strings.Repeat("x", 256)} {
		if err := CheckPath(p); err == nil {
			t.Errorf("CheckPath(%q): want an error", p)
		}
	}
}

func write(t *testing.T, dir, rel, data string) {
	t.Helper()
	p := filepath.Join(dir, filepath.FromSlash(rel))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestHoldsDirs: HoldsDirs is false exactly where ClassifyDir takes no dir
// below, whatever its name.
func TestHoldsDirs(t *testing.T) {
	names := []string{key52, key64, "torch_compile_cache", "modelinfos", "triton_cache", "inductor_cache",
		"artifact_compile_range_1_2_subgraph_0", "fxgraph", "aotautograd", "triton", "ab", "0", "x", "locks"}
	for _, c := range []struct {
		k    Kind
		rel  string
		want bool
	}{
		{Triton, "", true},
		{Triton, key52, false},
		{Triton, "notakey", false},
		{Triton, key52 + "/tmp.pid_1_abc", false},
		{VLLM, "", true},
		{VLLM, "torch_compile_cache/h/rank_0_0", true},
		{VLLM, "torch_compile_cache/h/rank_0_0/triton_cache", true},
		{VLLM, "torch_compile_cache/h/rank_0_0/triton_cache/" + key52, false},
		{VLLM, "torch_compile_cache/h/rank_0_0/p/artifact_compile_range_1_2_subgraph_0/triton/0/" + key52, false},
		{VLLM, "xla_cache", false},
		{Inductor, "", true},
		{Inductor, "fxgraph/ab/fabc", true},
		{Inductor, "triton/0", true},
		{Inductor, "triton/0/" + key52, false},
		{Inductor, "locks", false},
	} {
		if got := HoldsDirs(c.k, c.rel); got != c.want {
			t.Errorf("HoldsDirs(%s, %q) = %v, want %v", c.k, c.rel, got, c.want)
		}
		taken := 0
		for _, n := range names {
			if ok, _ := ClassifyDir(c.k, strings.TrimPrefix(c.rel+"/"+n, "/")); ok {
				taken++
			}
		}
		if (taken > 0) != c.want {
			t.Errorf("%s %q: ClassifyDir takes %d of %v below, HoldsDirs %v", c.k, c.rel, taken, names, c.want)
		}
	}
}

// TestVLLMBinaries: what Manifest writes of a binary-format vLLM cache,
// VLLMBinaries reads back: each entry's place and the env factors of its
// hash, as cache_key_factors.json holds them (inspect compares those with
// the host).
func TestVLLMBinaries(t *testing.T) {
	tree, err := Scan(cachetest.VLLMTestdata(t, "llama-binary-cache"), VLLM)
	if err != nil {
		t.Fatal(err)
	}
	m, err := Manifest(tree)
	if err != nil {
		t.Fatal(err)
	}
	bs := VLLMBinaries(m)
	found := false
	for _, b := range bs {
		if b.Hash == "edf531ca35" && b.Rank == "rank_0_0" && b.Prefix == "backbone" &&
			b.Env["VLLM_CONFIG_ROOT"] == "/home/ec2-user/.config/vllm" {
			found = true
		}
	}
	if !found {
		t.Errorf("VLLMBinaries = %+v, want edf531ca35 rank_0_0/backbone with VLLM_CONFIG_ROOT=/home/ec2-user/.config/vllm; manifest:\n%s", bs, m)
	}
	if bs := VLLMBinaries([]byte("not json")); bs != nil {
		t.Errorf("VLLMBinaries(bad) = %v, want nil", bs)
	}
}
