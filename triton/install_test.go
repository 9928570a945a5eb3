package triton

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestInstallEntry(t *testing.T) {
	src := filepath.Join(testdata(t, "vector-add-cache"), cudaKey)
	stage := filepath.Join(t.TempDir(), cudaKey)
	os.MkdirAll(stage, 0o755)
	des, _ := os.ReadDir(src)
	for _, de := range des {
		b, _ := os.ReadFile(filepath.Join(src, de.Name()))
		os.WriteFile(filepath.Join(stage, de.Name()), b, 0o644)
	}
	cache := t.TempDir()
	if err := InstallEntry(stage, cache); err != nil {
		t.Fatal(err)
	}
	grp, _ := os.ReadFile(filepath.Join(cache, cudaKey, "__grp__add_kernel.json"))
	if !strings.Contains(string(grp), `"`+cache+"/"+cudaKey+`/add_kernel.cubin"`) {
		t.Fatalf("group file not rewritten to the cache dir: %s", grp)
	}
	if _, err := os.Stat(stage); !os.IsNotExist(err) {
		t.Fatal("staged dir still there")
	}

	// An existing entry, even an empty dir a concurrent Triton just made,
	// is never replaced.
	other := t.TempDir()
	os.Mkdir(filepath.Join(other, cudaKey), 0o755)
	stage2 := filepath.Join(t.TempDir(), cudaKey)
	os.MkdirAll(stage2, 0o755)
	os.WriteFile(filepath.Join(stage2, "x"), []byte("x"), 0o644)
	if err := InstallEntry(stage2, other); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("want ErrExist, got %v", err)
	}
	if des, _ := os.ReadDir(filepath.Join(other, cudaKey)); len(des) != 0 {
		t.Fatal("existing entry was changed")
	}
}
