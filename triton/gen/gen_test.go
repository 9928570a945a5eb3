package gen

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"cargohold/gpu"
	"cargohold/triton"
)

func targets(t *testing.T, s string) []gpu.Target {
	t.Helper()
	ts, err := gpu.ParseList(s)
	if err != nil {
		t.Fatal(err)
	}
	return ts
}

// TestGenerateScans checks the contract: every dir passes triton.Scan with
// the Kind and target it was made for, and the returned entries are what
// Scan reads.
func TestGenerateScans(t *testing.T) {
	dir := t.TempDir()
	ts := targets(t, "cuda:80:32,hip:gfx90a:64,cuda:90:32")
	const root = "/home/u/.triton/cache"
	got, err := Generate(dir, Options{Kernels: 500, Launchers: 5, Targets: ts, Seed: 42, Root: root})
	if err != nil {
		t.Fatal(err)
	}
	scanned, skipped, err := triton.Scan(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(skipped) != 0 {
		t.Fatalf("skipped %+v", skipped)
	}
	if !reflect.DeepEqual(got, scanned) {
		t.Fatal("Generate's entries differ from Scan's")
	}
	perTarget := map[string]int{}
	names := map[string]bool{}
	launchers := map[string]int{}
	for _, e := range scanned {
		switch e.Kind {
		case triton.KindKernel:
			if len(e.Kernels) != 1 || len(e.Files) != 7 {
				t.Fatalf("%s: %d kernels, %d files", e.Key, len(e.Kernels), len(e.Files))
			}
			k := e.Kernels[0]
			perTarget[k.Target.String()]++
			names[k.Name] = true
			checkKernelDir(t, filepath.Join(dir, e.Key), root, k)
		case triton.KindLauncher:
			if len(e.Files) != 1 || e.Files[0].Mode != 0o755 || !strings.HasSuffix(e.Files[0].Name, ".cpython-311-x86_64-linux-gnu.so") {
				t.Fatalf("launcher %s: %+v", e.Key, e.Files)
			}
			launchers[strings.SplitN(e.Files[0].Name, ".", 2)[0]]++
			data, _ := os.ReadFile(filepath.Join(dir, e.Key, e.Files[0].Name))
			if !bytes.HasPrefix(data, []byte("\x7fELF\x02\x01\x01")) || binary.LittleEndian.Uint16(data[18:]) != 0x3e {
				t.Fatalf("launcher %s is not an x86-64 ELF", e.Key)
			}
		default:
			t.Fatalf("%s: kind %s", e.Key, e.Kind)
		}
	}
	// ParseList sorts: cuda:80, cuda:90, hip.
	want := map[string]int{"cuda:80:32": 167, "cuda:90:32": 167, "hip:gfx90a:64": 166}
	if !reflect.DeepEqual(perTarget, want) {
		t.Fatalf("kernels per target %v, want %v", perTarget, want)
	}
	if !reflect.DeepEqual(launchers, map[string]int{"cuda_utils": 1, "hip_utils": 1, "__triton_launcher": 3}) {
		t.Fatalf("launchers %v", launchers)
	}
	if len(names) < 50 {
		t.Fatalf("only %d distinct kernel names", len(names))
	}
}

// checkKernelDir checks one kernel dir against Triton's layout.
func checkKernelDir(t *testing.T, kd, root string, k triton.Kernel) {
	t.Helper()
	key := filepath.Base(kd)
	ir, bin, machine := "ptx", "cubin", uint16(0xbe)
	if k.Target.Backend == "hip" {
		ir, bin, machine = "amdgcn", "hsaco", 0xe0
	}
	grp, err := os.ReadFile(filepath.Join(kd, "__grp__"+k.Name+".json"))
	if err != nil {
		t.Fatal(err)
	}
	children, err := triton.ParseGroup(grp)
	if err != nil {
		t.Fatal(err)
	}
	var order []string
	for _, c := range children {
		order = append(order, strings.TrimPrefix(c.Name, k.Name))
		if c.Path != root+"/"+key+"/"+c.Name {
			t.Fatalf("%s: child path %s", key, c.Path)
		}
	}
	if want := []string{".ttir", ".ttgir", ".llir", "." + ir, "." + bin, ".json"}; !slices.Equal(order, want) {
		t.Fatalf("%s: group order %v, want %v", key, order, want)
	}
	// Python's json.dumps bytes: rewriting to the same root changes nothing.
	if again, err := triton.RewriteGroup(grp, root); err != nil || !bytes.Equal(again, grp) {
		t.Fatalf("%s: group file is not in Python's format:\n%s", key, grp)
	}
	b, err := os.ReadFile(filepath.Join(kd, k.Name+"."+bin))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(b, []byte("\x7fELF\x02\x01\x01")) || binary.LittleEndian.Uint16(b[18:]) != machine {
		t.Fatalf("%s: %s has no %#x ELF header", key, bin, machine)
	}
	if len(b) < 4<<10 || len(b) > 240<<10 {
		t.Fatalf("%s: %s is %d bytes", key, bin, len(b))
	}
	for _, ext := range []string{".ttir", ".ttgir", ".llir", "." + ir} {
		txt, err := os.ReadFile(filepath.Join(kd, k.Name+ext))
		if err != nil {
			t.Fatal(err)
		}
		if len(txt) < 1<<10 || len(txt) > 80<<10 || bytes.Contains(txt, []byte("%!")) || !bytes.Contains(txt, []byte(k.Name)) {
			t.Fatalf("%s%s: %d bytes, bad format verbs or no kernel name", key, ext, len(txt))
		}
	}
}

// TestMetadataFieldSet compares the generated kernel JSON with the real
// Triton caches in the shared test data: same members in the same order
// (the CUDA sample predates triton_version).
func TestMetadataFieldSet(t *testing.T) {
	for _, c := range []struct{ sample, target string }{
		{"vector-add-cache", "cuda:75:32"},
		{"vector-add-cache-rocm", "hip:gfx90a:64"},
	} {
		matches, _ := filepath.Glob(filepath.Join("..", "..", "..", "shared", "testdata", "triton-cache", c.sample, "*", "add_kernel.json"))
		if len(matches) != 1 {
			if os.Getenv("CI") == "true" {
				t.Fatalf("shared test data missing (%v)", matches)
			}
			t.Skipf("shared test data missing (%v)", matches)
		}
		real, err := os.ReadFile(matches[0])
		if err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		es, err := Generate(dir, Options{Kernels: 1, Targets: targets(t, c.target), Seed: 1})
		if err != nil {
			t.Fatal(err)
		}
		k := es[0].Kernels[0]
		gen, err := os.ReadFile(filepath.Join(dir, es[0].Key, k.Name+".json"))
		if err != nil {
			t.Fatal(err)
		}
		want, got := topKeys(t, real), topKeys(t, gen)
		if !slices.Contains(want, "triton_version") {
			got = slices.DeleteFunc(got, func(s string) bool { return s == "triton_version" })
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s: members\n got %v\nwant %v", c.target, got, want)
		}
		if k.Target.String() != c.target || k.TritonVersion != TritonVersion {
			t.Errorf("%s: parsed %+v", c.target, k)
		}
		// The same separators as Python's json.dumps.
		if !bytes.HasPrefix(gen, []byte(`{"hash": "`)) || bytes.Contains(gen, []byte(`":"`)) {
			t.Errorf("%s: not json.dumps style: %.80s", c.target, gen)
		}
	}
}

func topKeys(t *testing.T, data []byte) []string {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(data))
	if _, err := dec.Token(); err != nil {
		t.Fatal(err)
	}
	var keys []string
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, tok.(string))
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			t.Fatal(err)
		}
	}
	return keys
}

func TestDeterministic(t *testing.T) {
	opts := Options{Kernels: 30, Launchers: 2, Targets: targets(t, "cuda:80:32,hip:gfx942:64"), Seed: 7}
	a, b, c := t.TempDir(), t.TempDir(), t.TempDir()
	if _, err := Generate(a, opts); err != nil {
		t.Fatal(err)
	}
	if _, err := Generate(b, opts); err != nil {
		t.Fatal(err)
	}
	if ta, tb := tree(t, a), tree(t, b); !reflect.DeepEqual(ta, tb) {
		t.Fatal("same seed, different caches")
	}
	opts.Seed = 8
	if _, err := Generate(c, opts); err != nil {
		t.Fatal(err)
	}
	ta, tc := tree(t, a), tree(t, c)
	for p := range ta {
		if _, ok := tc[p]; ok {
			t.Fatalf("seeds 7 and 8 share %s", p)
		}
	}
}

// tree maps each file's path relative to dir to its content and mode.
func tree(t *testing.T, dir string) map[string]string {
	t.Helper()
	m := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(p)
		info, _ := d.Info()
		rel, _ := filepath.Rel(dir, p)
		m[rel] = info.Mode().String() + string(data)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestCompressesLikeReal keeps the bytes honest for benchmarks: binaries
// compress about 3:1 like real cubins and hsaco, IR text several times
// better; neither is a constant or pure noise.
func TestCompressesLikeReal(t *testing.T) {
	dir := t.TempDir()
	if _, err := Generate(dir, Options{Kernels: 40, Targets: targets(t, "cuda:80:32,hip:gfx90a:64"), Seed: 3}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		glob     string
		min, max float64
	}{
		{"*/*.cubin", 2.5, 4.5}, {"*/*.hsaco", 2.5, 4.5},
		{"*/*.ttir", 3, 12}, {"*/*.llir", 3, 12}, {"*/*.ptx", 3, 12}, {"*/*.amdgcn", 3, 12},
	} {
		files, _ := filepath.Glob(filepath.Join(dir, c.glob))
		var raw, z bytes.Buffer
		w := gzip.NewWriter(&z)
		for _, f := range files {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			raw.Write(data)
			w.Write(data)
		}
		w.Close()
		if raw.Len() == 0 {
			t.Fatalf("%s: no files", c.glob)
		}
		if r := float64(raw.Len()) / float64(z.Len()); r < c.min || r > c.max {
			t.Errorf("%s: ratio %.2f, want %.1f..%.1f", c.glob, r, c.min, c.max)
		}
	}
}

func TestScaleAndDefaults(t *testing.T) {
	small, big := t.TempDir(), t.TempDir()
	es, err := Generate(small, Options{Kernels: 20, Seed: 1, Scale: 0.1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Generate(big, Options{Kernels: 20, Seed: 1}); err != nil {
		t.Fatal(err)
	}
	size := func(es []triton.Entry) (n int64) {
		for _, e := range es {
			for _, f := range e.Files {
				n += f.Size
			}
		}
		return n
	}
	esBig, _, _ := triton.Scan(big)
	if s, b := size(es), size(esBig); s*5 > b {
		t.Fatalf("scale 0.1: %d bytes vs %d at scale 1", s, b)
	}
	k := es[0].Kernels[0]
	if k.Target.String() != "cuda:80:32" {
		t.Fatalf("default target %s", k.Target)
	}
	grp, _ := os.ReadFile(filepath.Join(small, es[0].Key, "__grp__"+k.Name+".json"))
	if !bytes.Contains(grp, []byte(`"`+DefaultRoot+"/"+es[0].Key+"/")) {
		t.Fatalf("default root not in %s", grp)
	}
}

func TestBadOptions(t *testing.T) {
	for _, o := range []Options{
		{Kernels: -1},
		{Kernels: 1, Scale: -1},
		{Kernels: 1, Targets: []gpu.Target{{Backend: "cuda", Arch: "sm80", WarpSize: 32}}},
		{Kernels: 1, Targets: []gpu.Target{{Backend: "tpu", Arch: "v5", WarpSize: 32}}},
		{Kernels: 1, Targets: []gpu.Target{{Backend: "CUDA", Arch: "80", WarpSize: 32}}},
	} {
		if _, err := Generate(t.TempDir(), o); err == nil {
			t.Errorf("%+v: want error", o)
		}
	}
}
