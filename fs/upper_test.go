package fs

import (
	"bytes"
	"errors"
	iofs "io/fs"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

func TestMergedKeyAfterRemount(t *testing.T) {
	l := newFakeLower(t)
	upper := t.TempDir()
	s, mp := testMount(t, Options{Lower: l, Upper: upper})
	const name = "add_kernel.llir"
	local := []byte("; compiled here\n")
	writeViaTmp(t, filepath.Join(mp, cudaKey), name, local)
	if err := s.Unmount(); err != nil {
		t.Fatal(err)
	}

	_, mp2 := testMount(t, Options{Lower: l, Upper: upper})
	kdir := filepath.Join(mp2, cudaKey)
	if got, want := readDirNames(t, kdir), sourceNames(t, l, cudaKey); !slices.Equal(got, want) {
		t.Errorf("readdir merged KEY: %v, want %v", got, want)
	}
	for _, n := range sourceNames(t, l, cudaKey) {
		got, size := readAllOnce(t, filepath.Join(kdir, n))
		if int64(len(got)) != size {
			t.Errorf("%s: stat %d, read %d", n, size, len(got))
		}
		want := source(t, cudaKey, n)
		switch {
		case n == name:
			want = local
		case n == grpName:
			continue
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s: %d bytes, want %d", n, len(got), len(want))
		}
	}
	wantErrno(t, "rmdir merged KEY", syscall.Rmdir(kdir), syscall.ENOTEMPTY)
}

func TestUpperOps(t *testing.T) {
	l := newFakeLower(t)
	upper := t.TempDir()
	_, mp := testMount(t, Options{Lower: l, Upper: upper})
	kdir := filepath.Join(mp, cudaKey)
	lowerFile := filepath.Join(kdir, "add_kernel.json")

	// Image files are read-only and do not move; KEY dirs do not move.
	_, err := os.OpenFile(lowerFile, os.O_WRONLY, 0)
	wantErrno(t, "open lower file for writing", err, syscall.EROFS)
	wantErrno(t, "chmod lower file", os.Chmod(lowerFile, 0o600), syscall.EROFS)
	wantErrno(t, "rename lower file", os.Rename(lowerFile, filepath.Join(kdir, "moved")), syscall.EXDEV)
	wantErrno(t, "rename KEY dir", os.Rename(kdir, filepath.Join(mp, "elsewhere")), syscall.EXDEV)
	if err := os.WriteFile(filepath.Join(mp, "new.json"), []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	wantErrno(t, "rename NOREPLACE onto a lower file",
		unix.Renameat2(unix.AT_FDCWD, filepath.Join(mp, "new.json"), unix.AT_FDCWD, lowerFile, unix.RENAME_NOREPLACE), syscall.EEXIST)

	// Plain upper files: overwrite, truncate, chmod, symlink, rename, unlink.
	p := filepath.Join(mp, "notes.txt")
	if err := os.WriteFile(p, []byte("a long first version"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte("short"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(p); err != nil || string(got) != "short" {
		t.Errorf("overwritten file: %q %v", got, err)
	}
	if err := os.Truncate(p, 2); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, 0o600); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(p); err != nil || fi.Size() != 2 || fi.Mode().Perm() != 0o600 {
		t.Errorf("after truncate+chmod: %v %v", fi, err)
	}
	if err := os.Symlink("notes.txt", filepath.Join(mp, "link")); err != nil {
		t.Fatal(err)
	}
	if target, err := os.Readlink(filepath.Join(mp, "link")); err != nil || target != "notes.txt" {
		t.Errorf("readlink: %q %v", target, err)
	}
	if err := os.MkdirAll(filepath.Join(mp, "d", "e"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(p, filepath.Join(mp, "d", "e", "moved.txt")); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(mp, "d", "e", "moved.txt")); err != nil || string(got) != "sh" {
		t.Errorf("moved file: %q %v", got, err)
	}
	if err := os.Rename(filepath.Join(mp, "d"), filepath.Join(mp, "d2")); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(mp, "d2", "e", "moved.txt")); err != nil || string(got) != "sh" {
		t.Errorf("file in a moved dir: %q %v", got, err)
	}
	wantErrno(t, "rmdir non-empty plain dir", syscall.Rmdir(filepath.Join(mp, "d2")), syscall.ENOTEMPTY)
	if err := os.RemoveAll(filepath.Join(mp, "d2")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(upper, "d2")); !errors.Is(err, iofs.ErrNotExist) {
		t.Errorf("removed dir still in upper: %v", err)
	}
}
