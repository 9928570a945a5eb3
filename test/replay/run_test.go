package replay

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"cargohold/gpu"
	"cargohold/triton"
	"cargohold/triton/gen"
)

// generated writes a synthetic cache whose group files point at itself.
func generated(t *testing.T, kernels, launchers int) (string, []string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "src")
	ts, _ := gpu.ParseList("cuda:80:32,hip:gfx90a:64")
	es, err := gen.Generate(dir, gen.Options{Kernels: kernels, Launchers: launchers, Targets: ts, Seed: 11, Root: dir, Scale: 0.1})
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, e := range es {
		keys = append(keys, e.Key)
	}
	return dir, keys
}

func TestRunGenerated500(t *testing.T) {
	src, keys := generated(t, 500, 4)
	// The generated cache itself is a valid cache to hit.
	sum, err := Run(context.Background(), Options{Mode: ModeHit, Root: src, Keys: keys, Expect: src}, nil)
	if err != nil || !sum.OK() || sum.Hits != len(keys) {
		t.Fatalf("hit: %+v, %v", sum, err)
	}
	// Four processes compile disjoint shares into a fresh cache...
	root := filepath.Join(t.TempDir(), "cache")
	sum, err = Run(context.Background(), Options{Mode: ModeMiss, Root: root, Keys: keys, From: src, Procs: 4, Split: true}, nil)
	if err != nil || !sum.OK() || sum.Misses != len(keys) || sum.Procs != 4 {
		t.Fatalf("miss: %+v, %v", sum, err)
	}
	// ...which then scans like the source and hits from eight processes.
	a, _, err := triton.Scan(root)
	if err != nil || len(a) != len(keys) {
		t.Fatalf("scan after miss: %d entries, %v", len(a), err)
	}
	sum, err = Run(context.Background(), Options{Mode: ModeHit, Root: root, Keys: keys, Expect: src, Procs: 8, Split: true}, nil)
	if err != nil || !sum.OK() || sum.Hits != len(keys) {
		t.Fatalf("hit -p 8: %+v, %v", sum, err)
	}
}

// TestRunConcurrentSameKeys runs eight processes on the same keys of an
// empty cache: some compile, some find what others compiled, writers
// rename over each other; nobody may fail or see a wrong byte.
func TestRunConcurrentSameKeys(t *testing.T) {
	src, keys := generated(t, 24, 2)
	keys = append(keys, cudaKey)
	if err := os.CopyFS(filepath.Join(src, cudaKey), os.DirFS(filepath.Join(testdata(t, "vector-add-cache"), cudaKey))); err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(t.TempDir(), "cache")
	procs := map[int]int{}
	sum, err := Run(context.Background(), Options{Mode: ModeAuto, Root: root, Keys: keys, From: src, Procs: 8}, func(r Result) {
		procs[r.Proc]++
		if r.Outcome == OutcomeError {
			t.Errorf("%s (process %d): %s", r.Key, r.Proc, r.Error)
		}
	})
	if err != nil || !sum.OK() || sum.Replays != 8*len(keys) || sum.Hits+sum.Misses != sum.Replays || sum.Misses < len(keys) {
		t.Fatalf("auto -p 8: %+v, %v", sum, err)
	}
	if len(procs) != 8 {
		t.Fatalf("results from processes %v", procs)
	}
	sum, err = Run(context.Background(), Options{Mode: ModeHit, Root: root, Keys: keys, Expect: src, Procs: 8}, nil)
	if err != nil || !sum.OK() || sum.Hits != 8*len(keys) {
		t.Fatalf("hit -p 8: %+v, %v", sum, err)
	}
}

func TestRunProcessDies(t *testing.T) {
	sum, err := Run(context.Background(), Options{Mode: ModeHit, Root: t.TempDir(), Keys: []string{cudaKey, rocmKey}, Procs: 2, Exe: "/bin/false"}, nil)
	if err != nil || sum.Errors != 4 || sum.OK() {
		t.Fatalf("%+v, %v", sum, err)
	}
}

func TestRunBadOptions(t *testing.T) {
	for _, o := range []Options{
		{Mode: "peek", Root: "/r", Keys: []string{cudaKey}},
		{Mode: ModeHit, Keys: []string{cudaKey}},
		{Mode: ModeHit, Root: "/r"},
		{Mode: ModeMiss, Root: "/r", Keys: []string{cudaKey}},
	} {
		if _, err := Run(context.Background(), o, nil); err == nil {
			t.Errorf("%+v: want error", o)
		}
	}
}

func TestMainCLI(t *testing.T) {
	src := testdata(t, "vector-add-cache")
	root := extracted(t, src)
	var out, errb bytes.Buffer
	code := Main(context.Background(), []string{"hit", "--root", root, "--expect", src, "-p", "2", "--all"}, &out, &errb)
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if code != 0 || len(lines) != 3 || lines[0] != "HIT "+cudaKey || lines[1] != "HIT "+cudaKey {
		t.Fatalf("exit %d:\n%s\n%s", code, out.String(), errb.String())
	}
	var sum Summary
	if err := json.Unmarshal([]byte(lines[2]), &sum); err != nil || sum.Hits != 2 || sum.Procs != 2 {
		t.Fatalf("summary %q: %v", lines[2], err)
	}

	// A corrupt byte: an ERROR line and exit status 1.
	p := filepath.Join(root, cudaKey, "add_kernel.ptx")
	data, _ := os.ReadFile(p)
	data[10] ^= 1
	os.WriteFile(p, data, 0o644)
	out.Reset()
	code = Main(context.Background(), []string{"hit", "--root", root, "--expect", src, cudaKey}, &out, &errb)
	if code != 1 || !strings.HasPrefix(out.String(), "ERROR "+cudaKey+": ") || !strings.Contains(out.String(), `"mismatches":1`) {
		t.Fatalf("corrupt: exit %d:\n%s", code, out.String())
	}

	// miss then auto into a fresh root, with a trace.
	fresh := filepath.Join(t.TempDir(), "c")
	out.Reset()
	if code := Main(context.Background(), []string{"miss", "--root", fresh, "--from", src, "--trace", cudaKey}, &out, &errb); code != 0 ||
		!strings.HasPrefix(out.String(), "MISS "+cudaKey+"\n  stat(") {
		t.Fatalf("miss: exit %d:\n%s", code, out.String())
	}
	out.Reset()
	if code := Main(context.Background(), []string{"auto", "--root", fresh, "--from", src, "--all"}, &out, &errb); code != 0 ||
		!strings.HasPrefix(out.String(), "HIT "+cudaKey+"\n") {
		t.Fatalf("auto: exit %d:\n%s", code, out.String())
	}

	for _, args := range [][]string{
		{}, {"hit"}, {"hit", "--root", root}, {"miss", "--root", root, cudaKey}, {"peek", "--root", root, cudaKey},
		{"hit", "--root", root, "--all"}, {"hit", "--root", root, "--expect", src, "--all", cudaKey}, {"hit", "--bogus"},
	} {
		if code := Main(context.Background(), args, &out, &errb); code != 2 {
			t.Errorf("%q: exit %d, want 2", args, code)
		}
	}
}

func TestMainCLIKinds(t *testing.T) {
	src, root := relocated(t, binaryData, binaryOldRoot)
	var out, errb bytes.Buffer
	if code := Main(context.Background(), []string{"hit", "--cache", "vllm", "--root", root, "--expect", src, "--all"}, &out, &errb); code != 0 ||
		!strings.HasPrefix(out.String(), "HIT "+binaryHash+"\n") || !strings.Contains(out.String(), `"cache":"vllm"`) {
		t.Fatalf("vllm hit: exit %d:\n%s\n%s", code, out.String(), errb.String())
	}
	out.Reset()
	fresh := filepath.Join(t.TempDir(), "vllm")
	if code := Main(context.Background(), []string{"miss", "--cache", "vllm", "--root", fresh, "--from", src, "--atomic", "--name", binaryName, "-p", "2", binaryHash}, &out, &errb); code != 0 ||
		strings.Count(out.String(), "MISS "+binaryHash+"\n") != 2 {
		t.Fatalf("vllm miss -p 2: exit %d:\n%s\n%s", code, out.String(), errb.String())
	}
	out.Reset()
	isrc := inductorSource(t)
	if code := Main(context.Background(), []string{"auto", "--cache", "inductor", "--root", filepath.Join(t.TempDir(), "ind"), "--from", isrc, "--all"}, &out, &errb); code != 0 ||
		!strings.Contains(out.String(), `"replays":39,`) || !strings.Contains(out.String(), `"errors":0,`) {
		t.Fatalf("inductor auto: exit %d:\n%s\n%s", code, out.String(), errb.String())
	}
	// A corrupt artifact: exit status 1.
	flipByte(t, filepath.Join(root, vllmCacheDir, binaryHash, binaryName, "artifact_compile_range_1_2048_subgraph_0"), 1)
	out.Reset()
	if code := Main(context.Background(), []string{"hit", "--cache", "vllm", "--root", root, "--expect", src, binaryHash}, &out, &errb); code != 1 ||
		!strings.Contains(out.String(), `"mismatches":1`) {
		t.Fatalf("corrupt: exit %d:\n%s", code, out.String())
	}
	for _, args := range [][]string{
		{"hit", "--cache", "nope", "--root", root, binaryHash},
		{"hit", "--cache", "nope", "--root", root, "--expect", src, "--all"},
		{"hit", "--cache", "inductor", "--root", root, "--name", "x", "fxgraph/ab/fabc"},
		{"miss", "--root", root, "--from", src, "--atomic", cudaKey},
	} {
		if code := Main(context.Background(), args, &out, &errb); code != 2 {
			t.Errorf("%q: exit %d, want 2", args, code)
		}
	}
}
