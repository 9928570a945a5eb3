package triton

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const (
	cudaKey = "5W7KJQDTJCL4UGPMKKCS7TEEPZKSWOY4774SZQ6674FWSXG5MNXQ"
	rocmKey = "MCELTMXFCSPAMZYLZ3C3WPPYYVTVR4QOYNE52X3X6FIH7Z6N6X5A"
)

func testdata(t *testing.T, name string) string {
	t.Helper()
	d := filepath.Join("..", "..", "shared", "testdata", "triton-cache", name)
	if _, err := os.Stat(d); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("shared test data missing: %v", err)
		}
		t.Skipf("shared test data missing: %v", err)
	}
	return d
}

func TestKeyHashRoundTrip(t *testing.T) {
	h := "edbea4c0734897ca19ec52852fcc847e552b3b1cfff92cc3deff0b695cdd636f"
	k, err := KeyOf(h)
	if err != nil || k != cudaKey {
		t.Fatalf("KeyOf = %s, %v; want %s", k, err, cudaKey)
	}
	back, err := HashOf(k)
	if err != nil || back != h {
		t.Fatalf("HashOf = %s, %v", back, err)
	}
	for _, bad := range []string{"", "xyz", h[:62], strings.ToUpper(h) + "00"} {
		if _, err := KeyOf(bad); err == nil {
			t.Errorf("KeyOf(%q): want error", bad)
		}
	}
	if _, err := HashOf("not-a-key"); err == nil {
		t.Error("HashOf(not-a-key): want error")
	}
}

// TestHexKeys: Triton 3.1 and older named KEY dirs (launchers included) by
// the hex hash itself; such dirs are KEYs, and a kernel JSON belongs in
// either form of its dir.
func TestHexKeys(t *testing.T) {
	h := "edbea4c0734897ca19ec52852fcc847e552b3b1cfff92cc3deff0b695cdd636f"
	if !IsKey(h) || !IsKey(cudaKey) {
		t.Fatal("IsKey: want both the base32 and the hex form")
	}
	for _, bad := range []string{strings.ToUpper(h), h[:63], h + "0", strings.Replace(h, "e", "g", 1), strings.ToLower(cudaKey)} {
		if IsKey(bad) {
			t.Errorf("IsKey(%q): want false", bad)
		}
	}
	if back, err := HashOf(h); err != nil || back != h {
		t.Errorf("HashOf(hex KEY) = %s, %v", back, err)
	}
	k := Kernel{Hash: h}
	if !k.In(h) || !k.In(cudaKey) || k.In(strings.Repeat("A", 52)) {
		t.Error("Kernel.In: want the KEY in either form, nothing else")
	}
}

func TestParseKernel(t *testing.T) {
	h := `"hash": "edbea4c0734897ca19ec52852fcc847e552b3b1cfff92cc3deff0b695cdd636f"`
	cases := []struct {
		json, target string
		ok, err      bool
	}{
		{`{` + h + `, "target": {"backend": "cuda", "arch": 90, "warp_size": 32}, "new_field": [1]}`, "cuda:90:32", true, false},
		{`{` + h + `, "target": {"backend": "hip", "arch": "gfx942", "warp_size": 64}}`, "hip:gfx942:64", true, false},
		{`{` + h + `, "backend_name": "hip", "arch": "gfx1100"}`, "hip:gfx1100:32", true, false}, // pre-3.0 shape
		{`{"child_paths": {}}`, "", false, false},
		{`[1,2]`, "", false, false},
		{`{"hash": "zz", "target": {"backend": "cuda", "arch": 80, "warp_size": 32}}`, "", false, true},
		{`{` + h + `, "target": {"backend": "cuda", "arch": [80], "warp_size": 32}}`, "", false, true},
		{`{` + h + `, "target": {"backend": "cuda"`, "", false, true},
	}
	for i, c := range cases {
		k, ok, err := ParseKernel([]byte(c.json))
		if ok != c.ok || (err != nil) != c.err {
			t.Errorf("case %d: ok=%v err=%v", i, ok, err)
			continue
		}
		if ok && k.Target.String() != c.target {
			t.Errorf("case %d: target %s, want %s", i, k.Target, c.target)
		}
	}
}

func TestScanTestdata(t *testing.T) {
	for name, want := range map[string]struct{ key, target string }{
		"vector-add-cache":      {cudaKey, "cuda:75:32"},
		"vector-add-cache-rocm": {rocmKey, "hip:gfx90a:64"},
	} {
		entries, _, err := Scan(testdata(t, name))
		if err != nil {
			t.Fatal(err)
		}
		if len(entries) != 1 || entries[0].Key != want.key || entries[0].Kind != KindKernel {
			t.Fatalf("%s: entries %+v", name, entries)
		}
		if ts := entries[0].Targets(); len(ts) != 1 || ts[0].String() != want.target {
			t.Fatalf("%s: targets %v", name, ts)
		}
		if len(entries[0].Files) != 7 {
			t.Fatalf("%s: %d files", name, len(entries[0].Files))
		}
	}
}

func TestScanKinds(t *testing.T) {
	dir := t.TempDir()
	launcher := filepath.Join(dir, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
	os.MkdirAll(filepath.Join(launcher, "tmp.pid_1_x"), 0o755)
	os.WriteFile(filepath.Join(launcher, "cuda_utils.so"), []byte("\x7fELF"), 0o755)
	os.WriteFile(filepath.Join(dir, "stray.txt"), nil, 0o644)
	entries, skipped, err := Scan(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Kind != KindLauncher || len(entries[0].Files) != 1 {
		t.Fatalf("entries %+v", entries)
	}
	if len(skipped) != 2 {
		t.Fatalf("skipped %+v", skipped)
	}

	// A kernel JSON in the wrong dir is refused.
	wrong := filepath.Join(dir, "BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB")
	os.MkdirAll(wrong, 0o755)
	os.WriteFile(filepath.Join(wrong, "k.json"), []byte(`{"hash": "edbea4c0734897ca19ec52852fcc847e552b3b1cfff92cc3deff0b695cdd636f", "target": {"backend": "cuda", "arch": 75, "warp_size": 32}}`), 0o644)
	if _, _, err := Scan(dir); err == nil || !strings.Contains(err.Error(), "belongs in dir") {
		t.Fatalf("want hash/dir mismatch error, got %v", err)
	}

	if _, _, err := Scan(t.TempDir()); !errors.Is(err, ErrNoEntries) {
		t.Fatalf("empty dir: %v", err)
	}
}

func TestRewriteGroup(t *testing.T) {
	src, err := os.ReadFile(filepath.Join(testdata(t, "vector-add-cache"), cudaKey, "__grp__add_kernel.json"))
	if err != nil {
		t.Fatal(err)
	}
	rel, err := RewriteGroup(src, ImageRoot)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(rel), `"add_kernel.ttir": ".triton/cache/`+cudaKey+`/add_kernel.ttir"`) {
		t.Fatalf("relative form: %s", rel)
	}
	abs, err := RewriteGroup(rel, "/opt/app-root/src/.triton/cache")
	if err != nil {
		t.Fatal(err)
	}
	// Back to the compiling machine's root gives Triton's own bytes.
	if string(abs) != string(src) {
		t.Fatalf("round trip:\n%s\n%s", abs, src)
	}
	children, _ := ParseGroup(abs)
	if len(children) != 6 || children[0].Name != "add_kernel.ttir" {
		t.Fatalf("order lost: %+v", children)
	}
	if _, err := RewriteGroup([]byte(`{"child_paths": {"a": "/x/notakey/a"}}`), "/r"); err == nil {
		t.Fatal("want error for a path without KEY")
	}
	if _, err := RewriteGroup([]byte(`{"child_paths": `), "/r"); err == nil {
		t.Fatal("want error for broken JSON")
	}
}
