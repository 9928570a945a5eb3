package fs

import (
	"bytes"
	"context"
	"errors"
	iofs "io/fs"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"cargohold/test/replay"
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

// TestMissWhileImagesSlow: a KEY dir with an upper half (a remount after a
// partial compile) whose images do not answer within the lookup timeout.
// Triton's whole MISS sequence (tmp dir, rename onto KEY/file, rmdir of tmp,
// rmdir of KEY) must go through; only rmdir of the KEY still answers
// ENOTEMPTY.
func TestMissWhileImagesSlow(t *testing.T) {
	l := newFakeLower(t)
	upper := t.TempDir()
	s, mp := testMount(t, Options{Lower: l, Upper: upper})
	writeViaTmp(t, filepath.Join(mp, cudaKey), "add_kernel.llir", []byte("; partial compile\n"))
	if err := s.Unmount(); err != nil {
		t.Fatal(err)
	}

	l.hold(t, cudaKey)
	s2, mp2 := testMount(t, Options{Lower: l, Upper: upper, LookupTimeout: 200 * time.Millisecond})
	if err := replay.Miss(mp2, cudaKey, filepath.Join(testdata, "vector-add-cache")); err != nil {
		t.Fatalf("Triton's MISS while the images are slow: %v", err)
	}
	kdir := filepath.Join(mp2, cudaKey)
	wantErrno(t, "rmdir KEY", syscall.Rmdir(kdir), syscall.ENOTEMPTY)
	for _, n := range sourceNames(t, l, cudaKey) {
		if _, err := os.Stat(filepath.Join(upper, cudaKey, n)); err != nil {
			t.Errorf("compiled file not in the upper dir: %v", err)
		}
	}
	if st := s2.Stats().Snapshot(); st.LookupErrors == 0 || st.IOErrors != 0 {
		t.Errorf("stats %+v: want the images' failure recorded, and no I/O error", st)
	}
}

// TestRmdirOpaqueKeyKeepsItDeleted: rm -rf of an image's KEY, mkdir of it
// (opaque), rmdir of that: the image's KEY stays deleted, remount or not.
func TestRmdirOpaqueKeyKeepsItDeleted(t *testing.T) {
	l := newFakeLower(t)
	upper := t.TempDir()
	s, mp := testMount(t, Options{Lower: l, Upper: upper})
	kdir := filepath.Join(mp, cudaKey)
	if err := os.RemoveAll(kdir); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(kdir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Rmdir(kdir); err != nil {
		t.Fatalf("rmdir of the new, empty KEY: %v", err)
	}
	if _, err := os.Stat(kdir); !errors.Is(err, iofs.ErrNotExist) {
		t.Fatalf("the image's KEY is back after rmdir: %v", err)
	}
	if _, err := os.Stat(filepath.Join(upper, ".wh."+cudaKey)); err != nil {
		t.Fatalf("root whiteout: %v", err)
	}
	if err := s.Unmount(); err != nil {
		t.Fatal(err)
	}
	_, mp2 := testMount(t, Options{Lower: l, Upper: upper})
	if _, err := os.Stat(filepath.Join(mp2, cudaKey)); !errors.Is(err, iofs.ErrNotExist) {
		t.Fatalf("the image's KEY is back after remount: %v", err)
	}
	if slices.Contains(readDirNames(t, mp2), cudaKey) {
		t.Fatal("readdir root lists the deleted KEY after remount")
	}
}

// TestDirOverDeletedLowerFile: a dir made where an image's file was deleted
// can be removed again, and the image's file stays deleted.
func TestDirOverDeletedLowerFile(t *testing.T) {
	l := newFakeLower(t)
	_, mp := testMount(t, Options{Lower: l})
	p := filepath.Join(mp, cudaKey, "add_kernel.ttir")
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(p, 0o755); err != nil {
		t.Fatalf("mkdir over a deleted image file: %v", err)
	}
	if names := readDirNames(t, p); len(names) != 0 {
		t.Errorf("new dir lists %v", names)
	}
	if err := syscall.Rmdir(p); err != nil {
		t.Fatalf("rmdir of the new, empty dir: %v", err)
	}
	if _, err := os.Stat(p); !errors.Is(err, iofs.ErrNotExist) {
		t.Fatalf("stat after rmdir: %v: the image's file is back", err)
	}
}

// TestRenamedOverNodeKeepsItsFile: a process that looked a name up just
// before another renamed a file over it still opens and stats the file it
// found (Triton's concurrent compiles rename over each other's files):
// while the tree still has the node under the name (the rename is done on
// disk, the bridge has not moved the nodes yet), and after it moved out.
func TestRenamedOverNodeKeepsItsFile(t *testing.T) {
	root, v := newTestRoot(t, Options{})
	ctx := context.Background()
	for name, data := range map[string]string{"f": "old", "g": "new file"} {
		if err := os.WriteFile(filepath.Join(v.upper, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	lookup := func(name string) *gofs.Inode {
		var out fuse.EntryOut
		in, errno := root.Lookup(ctx, name, &out)
		if errno != 0 {
			t.Fatalf("lookup %s: %v", name, errno)
		}
		root.AddChild(name, in, true) // as the bridge does
		return in
	}
	n := lookup("f").Operations().(*upperFile)
	lookup("g")
	if errno := root.Rename(ctx, "g", root, "f", 0); errno != 0 {
		t.Fatalf("rename over: %v", errno)
	}
	check := func(when string) {
		t.Helper()
		fh, _, errno := n.Open(ctx, syscall.O_RDONLY)
		if errno != 0 {
			t.Fatalf("%s: open of the node renamed over: %v", when, errno)
		}
		h := fh.(*upperHandle)
		defer h.Release(ctx)
		buf := make([]byte, 100)
		k, _ := syscall.Pread(h.fd, buf, 0)
		if string(buf[:k]) != "old" {
			t.Errorf("%s: the node renamed over reads %q, want its own file %q", when, buf[:k], "old")
		}
		var a fuse.AttrOut
		if errno := n.Getattr(ctx, nil, &a); errno != 0 || a.Size != 3 {
			t.Errorf("%s: getattr of the node renamed over: %v, size %d, want 3", when, errno, a.Size)
		}
	}
	check("before the tree moved")
	root.MvChild("g", root.EmbeddedInode(), "f", true) // as the bridge does after the rename
	check("after the tree moved")

	n.OnForget()
	if _, _, errno := n.Open(ctx, syscall.O_RDONLY); errno != syscall.ENOENT {
		t.Errorf("open once the kernel forgot the node: %v, want ENOENT", errno)
	}
}
