package triton

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

// TestRenameNoReplace: a staged dir is renamed into place; an existing
// one, even an empty dir a concurrent Triton just made, is never replaced.
func TestRenameNoReplace(t *testing.T) {
	stage := filepath.Join(t.TempDir(), cudaKey)
	os.MkdirAll(stage, 0o755)
	os.WriteFile(filepath.Join(stage, "x"), []byte("x"), 0o644)
	cache := t.TempDir()
	if err := RenameNoReplace(stage, filepath.Join(cache, cudaKey)); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(cache, cudaKey, "x")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stage); !os.IsNotExist(err) {
		t.Fatal("staged dir still there")
	}

	other := t.TempDir()
	os.Mkdir(filepath.Join(other, cudaKey), 0o755)
	stage2 := filepath.Join(t.TempDir(), cudaKey)
	os.MkdirAll(stage2, 0o755)
	os.WriteFile(filepath.Join(stage2, "x"), []byte("x"), 0o644)
	if err := RenameNoReplace(stage2, filepath.Join(other, cudaKey)); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("want ErrExist, got %v", err)
	}
	if des, _ := os.ReadDir(filepath.Join(other, cudaKey)); len(des) != 0 {
		t.Fatal("existing entry was changed")
	}
}
