package replay

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"cargohold/triton/gen"
)

func TestMissThenHit(t *testing.T) {
	for name, key := range map[string]string{"vector-add-cache": cudaKey, "vector-add-cache-rocm": rocmKey} {
		src := testdata(t, name)
		root := filepath.Join(t.TempDir(), "fresh", "cache") // makedirs creates the parents
		p := newPyos()
		r, err := p.miss(root, key, src)
		if err != nil {
			t.Fatalf("%s: %v\n%s", name, err, strings.Join(r.Trace, "\n"))
		}
		if r.Outcome != OutcomeMiss || r.Files != 7 || r.Name != "add_kernel" {
			t.Fatalf("%s: %+v", name, r)
		}
		des, _ := os.ReadDir(filepath.Join(root, key))
		if len(des) != 7 {
			t.Fatalf("%s: %d entries left in KEY dir (tmp dirs?)", name, len(des))
		}
		// Each put: tmp dir, write, rename, rmdir tmp, rmdir KEY refused; the
		// group file is renamed in last.
		var renames []string
		refused := 0
		for _, l := range r.Trace {
			if strings.HasPrefix(l, "rename(") {
				renames = append(renames, l)
			}
			if l == `rmdir("`+filepath.Join(root, key)+`") = ENOTEMPTY` {
				refused++
			}
		}
		if len(renames) != 7 || refused != 7 || !strings.Contains(renames[6], `/__grp__add_kernel.json") = 0`) ||
			!strings.Contains(renames[0], "/tmp.pid_") {
			t.Fatalf("%s: renames %v, %d refused rmdirs", name, renames, refused)
		}
		// Now a plain hit, compared with the source.
		if _, err := Hit(root, key, src); err != nil {
			t.Fatalf("%s: hit after miss: %v", name, err)
		}
		// A second miss renames over the existing files.
		if err := Miss(root, key, src); err != nil {
			t.Fatalf("%s: miss over existing: %v", name, err)
		}
	}
}

// brokenRmdir is a filesystem whose rmdir of a non-empty KEY dir says it
// succeeded (and leaves it): what the mount must never do.
func TestMissRemovedNonEmpty(t *testing.T) {
	src := testdata(t, "vector-add-cache")
	root := filepath.Join(t.TempDir(), "cache")
	p := newPyos()
	real := p.rmdir
	p.rmdir = func(dir string) error {
		if filepath.Base(dir) == cudaKey {
			return nil
		}
		return real(dir)
	}
	if _, err := p.miss(root, cudaKey, src); !errors.Is(err, ErrRemovedNonEmpty) {
		t.Fatalf("want ErrRemovedNonEmpty, got %v", err)
	}
}

func TestMissLaunchers(t *testing.T) {
	src := t.TempDir()
	es, err := gen.Generate(src, gen.Options{Kernels: 2, Launchers: 2, Seed: 9, Scale: 0.2, Root: src})
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(t.TempDir(), "cache")
	for _, e := range es {
		p := newPyos()
		r, err := p.miss(root, e.Key, src)
		if err != nil {
			t.Fatalf("%s: %v\n%s", e.Key, err, strings.Join(r.Trace, "\n"))
		}
		if r.Kind != string(e.Kind) {
			t.Fatalf("%s: kind %s, want %s", e.Key, r.Kind, e.Kind)
		}
		if e.Kind == "launcher" && !strings.Contains(strings.Join(r.Trace, "\n"), "PROT_EXEC") {
			t.Fatalf("%s: launcher not mapped executable", e.Key)
		}
	}
	// A launcher whose bytes changed is caught through the mapping.
	for _, e := range es {
		if e.Kind != "launcher" {
			continue
		}
		p := filepath.Join(root, e.Key, e.Files[0].Name)
		data, _ := os.ReadFile(p)
		data[len(data)-1] ^= 1
		os.WriteFile(p, data, 0o755)
		var m *MismatchError
		if _, err := Hit(root, e.Key, src); !errors.As(err, &m) || m.Offset != int64(len(data)-1) {
			t.Fatalf("corrupt launcher: %v", err)
		}
		os.WriteFile(p, []byte("not an ELF file"), 0o755)
		if _, err := Hit(root, e.Key, ""); err == nil || !strings.Contains(err.Error(), "ELF") {
			t.Fatalf("not an ELF: %v", err)
		}
	}
}

func TestMissBadSource(t *testing.T) {
	root := t.TempDir()
	if err := Miss(root, cudaKey, t.TempDir()); err == nil {
		t.Fatal("absent source: want error")
	}
	src := t.TempDir()
	os.MkdirAll(filepath.Join(src, cudaKey), 0o755)
	os.WriteFile(filepath.Join(src, cudaKey, "stray.txt"), []byte("x"), 0o644)
	if err := Miss(root, cudaKey, src); err == nil {
		t.Fatal("source without group or .so: want error")
	}
}
