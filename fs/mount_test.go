package fs

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	iofs "io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"cargohold/triton"
)

// checkHit performs Triton's HIT sequence for key under root (the mount)
// and checks every byte against the fixture, group paths against prefix.
func checkHit(t *testing.T, l *fakeLower, root, prefix, key string) {
	t.Helper()
	if fi, err := os.Stat(root); err != nil || !fi.IsDir() {
		t.Fatalf("stat root: %v", err)
	}
	kdir := filepath.Join(root, key)
	wantErrno(t, "mkdir existing KEY", os.Mkdir(kdir, 0o777), syscall.EEXIST)
	if fi, err := os.Stat(kdir); err != nil || !fi.IsDir() {
		t.Fatalf("stat KEY: %v", err)
	}
	grp := filepath.Join(kdir, grpName)
	fi, err := os.Stat(grp)
	if err != nil {
		t.Fatalf("stat group file: %v", err)
	}
	firstSize := fi.Size()
	data, size := readAllOnce(t, grp)
	if int64(len(data)) != firstSize || size != firstSize {
		t.Fatalf("group file: first stat says %d bytes, fstat %d, read %d", firstSize, size, len(data))
	}
	children, err := triton.ParseGroup(data)
	if err != nil {
		t.Fatalf("group file served: %v", err)
	}
	for _, c := range children {
		if want := prefix + "/" + key + "/" + c.Name; c.Path != want {
			t.Errorf("child path %q, want %q", c.Path, want)
		}
	}
	names := sourceNames(t, l, key)
	if len(children) != len(names)-1 {
		t.Errorf("group names %d children, KEY has %d other files", len(children), len(names)-1)
	}
	for _, name := range names {
		if name == grpName {
			continue
		}
		p := filepath.Join(kdir, name) // the child path, seen through the mount
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatalf("stat child: %v", err)
		}
		want := source(t, key, name)
		if fi.Size() != int64(len(want)) {
			t.Errorf("%s: first stat says %d bytes, want %d", name, fi.Size(), len(want))
		}
		got, _ := readAllOnce(t, p)
		if !bytes.Equal(got, want) {
			t.Errorf("%s: content differs (%d bytes, want %d)", name, len(got), len(want))
		}
	}
}

func TestHit(t *testing.T) {
	l := newFakeLower(t)
	s, mp := testMount(t, Options{Lower: l})
	checkHit(t, l, mp, mp, cudaKey)
	checkHit(t, l, mp, mp, rocmKey)
	if n := l.callsFor(cudaKey); n != 1 {
		t.Errorf("Entry(%s) called %d times, want 1", cudaKey, n)
	}
	st := s.Stats().Snapshot()
	if st.Hits < 2 || st.Misses != 0 || st.LookupErrors != 0 || st.IOErrors != 0 {
		t.Errorf("stats %+v, want >= 2 hits and nothing else", st)
	}
}

func TestHitPathPrefix(t *testing.T) {
	l := newFakeLower(t)
	const prefix = "/home/triton/.triton/cache"
	_, mp := testMount(t, Options{Lower: l, PathPrefix: prefix})
	data, err := os.ReadFile(filepath.Join(mp, cudaKey, grpName))
	if err != nil {
		t.Fatal(err)
	}
	children, err := triton.ParseGroup(data)
	if err != nil || len(children) == 0 {
		t.Fatalf("group file: %v (%d children)", err, len(children))
	}
	for _, c := range children {
		if !strings.HasPrefix(c.Path, prefix+"/"+cudaKey+"/") {
			t.Errorf("child path %q is not under %s", c.Path, prefix)
		}
	}
}

func TestMissLandsInUpperAndSurvivesRemount(t *testing.T) {
	l := newFakeLower(t)
	upper := t.TempDir()
	s, mp := testMount(t, Options{Lower: l, Upper: upper})
	kdir := filepath.Join(mp, missKey)
	if _, err := os.Stat(kdir); !errors.Is(err, iofs.ErrNotExist) {
		t.Fatalf("stat of a KEY no one has: %v, want ENOENT", err)
	}
	if err := os.Mkdir(kdir, 0o777); err != nil {
		t.Fatalf("mkdir KEY: %v", err)
	}
	// Triton's put() per file, group file last; sources from the CUDA cache.
	names := sourceNames(t, l, cudaKey)
	slices.SortFunc(names, func(a, b string) int {
		return cmpBool(triton.IsGroupFile(a), triton.IsGroupFile(b))
	})
	want := map[string][]byte{}
	for _, name := range names {
		want[name] = append(source(t, cudaKey, name), "miss"...)
		writeViaTmp(t, kdir, name, want[name])
		wantErrno(t, "rmdir KEY after put", syscall.Rmdir(kdir), syscall.ENOTEMPTY)
	}
	for name, data := range want {
		got, err := os.ReadFile(filepath.Join(upper, missKey, name))
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("upper %s: %v, equal=%v", name, err, bytes.Equal(got, data))
		}
	}
	if got := readDirNames(t, kdir); !slices.Equal(got, sortedKeys(want)) {
		t.Errorf("readdir KEY: %v, want %v", got, sortedKeys(want))
	}
	if st := s.Stats().Snapshot(); st.Misses < 1 {
		t.Errorf("stats %+v, want a miss", st)
	}
	if err := s.Unmount(); err != nil {
		t.Fatal(err)
	}

	before := l.totalCalls()
	_, mp2 := testMount(t, Options{Lower: l, Upper: upper})
	for name, data := range want {
		got, size := readAllOnce(t, filepath.Join(mp2, missKey, name))
		if !bytes.Equal(got, data) || size != int64(len(data)) {
			t.Errorf("after remount %s: %d bytes (stat %d), want %d", name, len(got), size, len(data))
		}
	}
	wantErrno(t, "mkdir KEY after remount", os.Mkdir(filepath.Join(mp2, missKey), 0o777), syscall.EEXIST)
	if n := l.totalCalls() - before; n != 0 {
		t.Errorf("reading a KEY the upper dir holds asked the images %d times", n)
	}
}

func cmpBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}

func sortedKeys(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func TestRenameOverOpenFile(t *testing.T) {
	l := newFakeLower(t)
	upper := t.TempDir()
	_, mp := testMount(t, Options{Lower: l, Upper: upper})
	kdir := filepath.Join(mp, cudaKey)
	const name = "add_kernel.json"
	old := source(t, cudaKey, name)

	f, err := os.Open(filepath.Join(kdir, name)) // a lower file
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	v2 := []byte(`{"replaced": 2}`)
	writeViaTmp(t, kdir, name, v2)
	got := make([]byte, len(old)+10)
	n, _ := f.ReadAt(got, 0)
	if !bytes.Equal(got[:n], old) {
		t.Errorf("open lower file after rename over it: read %q…, want the old content", got[:min(n, 40)])
	}
	if data, err := os.ReadFile(filepath.Join(kdir, name)); err != nil || !bytes.Equal(data, v2) {
		t.Errorf("by path after rename: %q, %v; want the new content", data, err)
	}
	if data, err := os.ReadFile(filepath.Join(upper, cudaKey, name)); err != nil || !bytes.Equal(data, v2) {
		t.Errorf("upper after rename: %q, %v", data, err)
	}

	// An upper file renamed over while open keeps its content too.
	g, err := os.Open(filepath.Join(kdir, name))
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	writeViaTmp(t, kdir, name, []byte(`{"replaced": 3}`))
	got = make([]byte, 100)
	n, _ = g.ReadAt(got, 0)
	if !bytes.Equal(got[:n], v2) {
		t.Errorf("open upper file after rename over it: %q, want %q", got[:n], v2)
	}
	if fi, err := g.Stat(); err != nil || fi.Size() != int64(len(v2)) {
		t.Errorf("fstat of the renamed-over file: %v, size %d, want %d", err, fi.Size(), len(v2))
	}
}

func TestUnlinkLowerFileWhiteoutPersists(t *testing.T) {
	l := newFakeLower(t)
	upper := t.TempDir()
	s, mp := testMount(t, Options{Lower: l, Upper: upper})
	const name = "add_kernel.ttir"
	p := filepath.Join(mp, cudaKey, name)
	if err := os.Remove(p); err != nil {
		t.Fatalf("unlink lower file: %v", err)
	}
	if _, err := os.Stat(p); !errors.Is(err, iofs.ErrNotExist) {
		t.Fatalf("stat after unlink: %v", err)
	}
	if names := readDirNames(t, filepath.Join(mp, cudaKey)); slices.Contains(names, name) || hasWhiteoutEntry(names) {
		t.Fatalf("readdir after unlink: %v", names)
	}
	if _, err := os.Stat(filepath.Join(upper, cudaKey, ".wh."+name)); err != nil {
		t.Fatalf("whiteout file in upper: %v", err)
	}
	wantErrno(t, "unlink again", os.Remove(p), syscall.ENOENT)
	if err := s.Unmount(); err != nil {
		t.Fatal(err)
	}

	_, mp2 := testMount(t, Options{Lower: l, Upper: upper})
	p2 := filepath.Join(mp2, cudaKey, name)
	if _, err := os.Stat(p2); !errors.Is(err, iofs.ErrNotExist) {
		t.Fatalf("stat after remount: %v, want ENOENT", err)
	}
	if names := readDirNames(t, filepath.Join(mp2, cudaKey)); slices.Contains(names, name) || len(names) != len(sourceNames(t, l, cudaKey))-1 {
		t.Fatalf("readdir after remount: %v", names)
	}
	// A new file of that name shows, replaces the whiteout, and unlinking it
	// hides the image's file again.
	if err := os.WriteFile(p2, []byte("new"), 0o644); err != nil {
		t.Fatalf("create over whiteout: %v", err)
	}
	if data, err := os.ReadFile(p2); err != nil || string(data) != "new" {
		t.Fatalf("read new file: %q %v", data, err)
	}
	if _, err := os.Stat(filepath.Join(upper, cudaKey, ".wh."+name)); !errors.Is(err, iofs.ErrNotExist) {
		t.Errorf("whiteout after create: %v, want gone", err)
	}
	if err := os.Remove(p2); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p2); !errors.Is(err, iofs.ErrNotExist) {
		t.Fatalf("stat after unlinking the upper file: %v: the image's file came back", err)
	}
}

func hasWhiteoutEntry(names []string) bool {
	for _, n := range names {
		if strings.HasPrefix(n, ".wh.") {
			return true
		}
	}
	return false
}

func TestRmdirKeyCountsLowerFiles(t *testing.T) {
	l := newFakeLower(t)
	upper := t.TempDir()
	_, mp := testMount(t, Options{Lower: l, Upper: upper})
	kdir := filepath.Join(mp, cudaKey)
	wantErrno(t, "rmdir lower KEY", syscall.Rmdir(kdir), syscall.ENOTEMPTY)
	wantErrno(t, "mkdir lower KEY", syscall.Mkdir(kdir, 0o777), syscall.EEXIST)
	if _, err := os.Stat(filepath.Join(upper, cudaKey)); !errors.Is(err, iofs.ErrNotExist) {
		t.Errorf("a failed rmdir/mkdir made an upper dir: %v", err)
	}
	// Empty in both layers, the KEY goes; a new one starts empty.
	names := sourceNames(t, l, cudaKey)
	for i, name := range names {
		if err := os.Remove(filepath.Join(kdir, name)); err != nil {
			t.Fatal(err)
		}
		if i < len(names)-1 {
			wantErrno(t, "rmdir with files left", syscall.Rmdir(kdir), syscall.ENOTEMPTY)
		}
	}
	if err := syscall.Rmdir(kdir); err != nil {
		t.Fatalf("rmdir of an emptied KEY: %v", err)
	}
	if _, err := os.Stat(kdir); !errors.Is(err, iofs.ErrNotExist) {
		t.Fatalf("stat after rmdir: %v", err)
	}
	if slices.Contains(readDirNames(t, mp), cudaKey) {
		t.Fatalf("readdir root lists the removed KEY")
	}
	if _, err := os.Stat(filepath.Join(upper, ".wh."+cudaKey)); err != nil {
		t.Fatalf("root whiteout: %v", err)
	}
	if err := os.Mkdir(kdir, 0o755); err != nil {
		t.Fatalf("mkdir over a whiteout: %v", err)
	}
	if names := readDirNames(t, kdir); len(names) != 0 {
		t.Fatalf("new KEY dir shows %v, want empty (opaque)", names)
	}
	if _, err := os.Stat(filepath.Join(upper, ".wh."+cudaKey)); !errors.Is(err, iofs.ErrNotExist) {
		t.Errorf("root whiteout after mkdir: %v, want gone", err)
	}
	if _, err := os.Stat(filepath.Join(kdir, grpName)); !errors.Is(err, iofs.ErrNotExist) {
		t.Errorf("image file shows through the new dir: %v", err)
	}
}

func TestReaddirRoot(t *testing.T) {
	l := newFakeLower(t)
	upper := t.TempDir()
	// A KEY deleted in an earlier mount (documented whiteout format).
	if err := os.WriteFile(filepath.Join(upper, ".wh."+rocmKey), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_, mp := testMount(t, Options{Lower: l, Upper: upper})
	if err := os.Mkdir(filepath.Join(mp, missKey), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(mp, "notes.txt"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	want := []string{cudaKey, missKey, soKey, "notes.txt"}
	slices.Sort(want)
	before := l.totalCalls() // the mkdir's lookup asked for missKey
	if got := readDirNames(t, mp); !slices.Equal(got, want) {
		t.Errorf("readdir root: %v, want %v", got, want)
	}
	if _, err := os.Stat(filepath.Join(mp, rocmKey)); !errors.Is(err, iofs.ErrNotExist) {
		t.Errorf("whited-out KEY: %v", err)
	}
	if _, err := os.Stat(filepath.Join(mp, ".wh."+rocmKey)); !errors.Is(err, iofs.ErrNotExist) {
		t.Errorf("whiteout file is visible: %v", err)
	}
	if n := l.totalCalls() - before; n != 0 {
		t.Errorf("listing the root asked the images %d times", n)
	}
	if got := readDirNames(t, filepath.Join(mp, cudaKey)); !slices.Equal(got, sourceNames(t, l, cudaKey)) {
		t.Errorf("readdir lower KEY: %v", got)
	}
	wantErrno(t, "create a whiteout name", os.WriteFile(filepath.Join(mp, ".wh.x"), nil, 0o644), syscall.EPERM)
}

func TestMmapExecLowerFile(t *testing.T) {
	l := newFakeLower(t)
	_, mp := testMount(t, Options{Lower: l})
	p := filepath.Join(mp, soKey, soName)
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o755 {
		t.Errorf("launcher mode %v, want exec bits (0755)", fi.Mode())
	}
	// In another process: a page fault served by this one must not wait on
	// this process's garbage collector.
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperMmap$", "-test.count=1")
	cmd.Env = append(os.Environ(), "CARGOHOLD_FS_MMAP="+p)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("mmap helper: %v\n%s", err, out)
	}
	want := fmt.Sprintf("sha256=%x", sha256.Sum256(soSource))
	if !strings.Contains(string(out), want) {
		t.Fatalf("mmap helper says:\n%s\nwant %s", out, want)
	}
}

// TestHelperMmap maps a file PROT_READ|PROT_EXEC, MAP_PRIVATE as dlopen does
// and prints its hash; it runs only as TestMmapExecLowerFile's child.
func TestHelperMmap(t *testing.T) {
	p := os.Getenv("CARGOHOLD_FS_MMAP")
	if p == "" {
		t.Skip("helper process of TestMmapExecLowerFile")
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	mem, err := syscall.Mmap(int(f.Fd()), 0, int(fi.Size()), syscall.PROT_READ|syscall.PROT_EXEC, syscall.MAP_PRIVATE)
	if err != nil {
		t.Fatalf("mmap: %v", err)
	}
	defer syscall.Munmap(mem)
	fmt.Printf("sha256=%x\n", sha256.Sum256(mem))
}

func TestIoctlTCGETS(t *testing.T) {
	l := newFakeLower(t)
	_, mp := testMount(t, Options{Lower: l})
	if err := os.WriteFile(filepath.Join(mp, "upper.txt"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{filepath.Join(mp, cudaKey, "add_kernel.json"), filepath.Join(mp, cudaKey, grpName), filepath.Join(mp, "upper.txt")} {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		_, err = unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
		f.Close()
		wantErrno(t, "TCGETS on "+filepath.Base(p), err, syscall.ENOTTY)
	}
}

func TestConcurrentReaders(t *testing.T) {
	l := newFakeLower(t)
	s, mp := testMount(t, Options{Lower: l})
	keys := []string{cudaKey, rocmKey, soKey}
	want := map[string][]byte{}
	for _, key := range keys {
		for _, name := range sourceNames(t, l, key) {
			p := filepath.Join(mp, key, name)
			data, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if !triton.IsGroupFile(name) && !bytes.Equal(data, source(t, key, name)) {
				t.Fatalf("%s differs", p)
			}
			want[p] = data
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Go(func() {
			for round := range 20 {
				for p, data := range want {
					f, err := os.Open(p)
					if err != nil {
						errs <- err
						return
					}
					buf := make([]byte, len(data)+1)
					n, err := f.ReadAt(buf, 0)
					f.Close()
					if n != len(data) || !bytes.Equal(buf[:n], data) {
						errs <- fmt.Errorf("reader %d round %d: %s: %d bytes (%v), want %d", g, round, p, n, err, len(data))
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// Every open releases its content once the mount is gone. go-fuse runs
	// a RELEASE in its own goroutine, which the kernel may send just before
	// the unmount: Unmount does not wait for it, so give it a moment.
	if err := s.Unmount(); err != nil {
		t.Fatal(err)
	}
	for end := time.Now().Add(5 * time.Second); l.open.Load() != 0 && time.Now().Before(end); {
		time.Sleep(10 * time.Millisecond)
	}
	if n := l.open.Load(); n != 0 {
		t.Errorf("%d image contents left open 5 s after the unmount", n)
	}
}
