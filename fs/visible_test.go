package fs

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"cargohold/test/replay"
)

// The kernel keeps the view's answers (entries, attributes, "not there",
// pages) for a long time. These tests make a change through the mount in
// this process after another process (a probe) has looked, so that the
// kernel holds the old answer, and check that the probe sees the change at
// once.

const enoent = "no such file or directory"

func wantProbe(t *testing.T, what, got, want string) {
	t.Helper()
	if got != want {
		t.Fatalf("%s: the other process sees %.300s, want %.300s", what, got, want)
	}
}

// trueStat is the upper dir's own stat of p, in the probe's format.
func trueStat(t *testing.T, p string) string {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	return statOf(&st)
}

// TestUpperChangesShowAtOnce: creating, appending, writing in place,
// truncating, chmod, utimes, rename, rename over, unlink, mkdir and rmdir of
// upper entries, each seen by another process at once.
func TestUpperChangesShowAtOnce(t *testing.T) {
	l := newFakeLower(t)
	upper := t.TempDir()
	_, mp := testMount(t, Options{Lower: l, Upper: upper})
	p := startProbe(t)

	for _, dir := range []string{"", "sub"} { // at the root, and in a plain dir
		if dir != "" {
			wantProbe(t, "a dir before mkdir", p.stat(filepath.Join(mp, dir)), enoent)
			if err := os.Mkdir(filepath.Join(mp, dir), 0o755); err != nil {
				t.Fatal(err)
			}
			wantProbe(t, "a dir after mkdir", p.stat(filepath.Join(mp, dir)), trueStat(t, filepath.Join(upper, dir)))
		}
		f := filepath.Join(mp, dir, "notes.txt")
		real := filepath.Join(upper, dir, "notes.txt")
		wantProbe(t, "a file before it is made", p.stat(f), enoent)
		if err := os.WriteFile(f, []byte("v1"), 0o644); err != nil {
			t.Fatal(err)
		}
		wantProbe(t, "a new file", p.read(f), `"v1"`)
		wantProbe(t, "a new file's attributes", p.stat(f), trueStat(t, real))

		a, err := os.OpenFile(f, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := a.WriteString("+more"); err != nil {
			t.Fatal(err)
		}
		a.Close()
		wantProbe(t, "size after an append", p.stat(f), trueStat(t, real))
		wantProbe(t, "content after an append", p.read(f), `"v1+more"`)

		// A write in place shows through a descriptor opened before it.
		wantProbe(t, "open", p.do("open", "h", f), "ok")
		wantProbe(t, "pread", p.do("pread", "h"), `"v1+more"`)
		w, err := os.OpenFile(f, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.WriteAt([]byte("V2"), 0); err != nil {
			t.Fatal(err)
		}
		w.Close()
		wantProbe(t, "pread after a write in place", p.do("pread", "h"), `"V2+more"`)
		wantProbe(t, "read after a write in place", p.read(f), `"V2+more"`)
		p.do("close", "h")

		if err := os.Truncate(f, 3); err != nil {
			t.Fatal(err)
		}
		wantProbe(t, "size after truncate", p.stat(f), trueStat(t, real))
		wantProbe(t, "content after truncate", p.read(f), `"V2+"`)
		if err := os.Chmod(f, 0o600); err != nil {
			t.Fatal(err)
		}
		wantProbe(t, "mode after chmod", p.stat(f), trueStat(t, real))
		when := time.Date(2020, 1, 2, 3, 4, 5, 6, time.UTC)
		if err := os.Chtimes(f, when, when); err != nil {
			t.Fatal(err)
		}
		wantProbe(t, "mtime after utimes", p.stat(f), trueStat(t, real))

		g := filepath.Join(mp, dir, "renamed.txt")
		wantProbe(t, "a rename target before", p.stat(g), enoent)
		if err := os.Rename(f, g); err != nil {
			t.Fatal(err)
		}
		wantProbe(t, "a renamed file's old name", p.stat(f), enoent)
		wantProbe(t, "a renamed file's new name", p.read(g), `"V2+"`)

		o := filepath.Join(mp, dir, "other.txt")
		if err := os.WriteFile(o, []byte("other"), 0o644); err != nil {
			t.Fatal(err)
		}
		wantProbe(t, "before a rename over", p.read(o), `"other"`)
		if err := os.Rename(o, g); err != nil {
			t.Fatal(err)
		}
		wantProbe(t, "a file renamed over", p.read(g), `"other"`)
		wantProbe(t, "the file renamed over it", p.stat(o), enoent)
		wantProbe(t, "its attributes", p.stat(g), trueStat(t, filepath.Join(upper, dir, "renamed.txt")))

		if err := os.Remove(g); err != nil {
			t.Fatal(err)
		}
		wantProbe(t, "a deleted file", p.stat(g), enoent)
		if dir != "" {
			wantProbe(t, "a dir after deleting its file", p.do("ls", filepath.Join(mp, dir)), listing(t, filepath.Join(upper, dir)))
			if err := os.Remove(filepath.Join(mp, dir)); err != nil {
				t.Fatal(err)
			}
			wantProbe(t, "a dir after rmdir", p.stat(filepath.Join(mp, dir)), enoent)
		}
	}
	wantProbe(t, "the root", p.stat(mp), trueStat(t, upper))
}

// listing is the names in an upper dir, as the view lists them (no
// whiteouts), for a dir with no image entries.
func listing(t *testing.T, dir string) string {
	t.Helper()
	var names []string
	for _, n := range readDirNames(t, dir) {
		if !isWhiteoutName(n) {
			names = append(names, n)
		}
	}
	return strings.Join(names, ",")
}

// TestKeyDirChangesShowAtOnce: in a KEY dir from an image, Triton's rename
// over an image file, the deletion of one (whiteout) and a new file of that
// name, a new name; the KEY dir's and the root's attributes once the KEY
// dir has its upper half; a KEY an image lists only after it was looked up.
func TestKeyDirChangesShowAtOnce(t *testing.T) {
	l := newFakeLower(t)
	upper := t.TempDir()
	_, mp := testMount(t, Options{Lower: l, Upper: upper})
	p := startProbe(t)
	kdir := filepath.Join(mp, cudaKey)

	const name = "add_kernel.ttir"
	wantProbe(t, "an image file", p.read(filepath.Join(kdir, name)), strconv.Quote(string(source(t, cudaKey, name))))
	rootBefore := p.stat(mp)
	if rootBefore != trueStat(t, upper) {
		t.Fatalf("root: %s, want %s", rootBefore, trueStat(t, upper))
	}
	p.stat(kdir)
	wantProbe(t, "a new name in the KEY dir", p.stat(filepath.Join(kdir, "extra.bin")), enoent)

	writeViaTmp(t, kdir, name, []byte("compiled here"))
	wantProbe(t, "an image file renamed over", p.read(filepath.Join(kdir, name)), `"compiled here"`)
	wantProbe(t, "its attributes", p.stat(filepath.Join(kdir, name)), trueStat(t, filepath.Join(upper, cudaKey, name)))
	wantProbe(t, "the KEY dir with its upper half", p.stat(kdir), trueStat(t, filepath.Join(upper, cudaKey)))
	wantProbe(t, "the root once a KEY dir has its upper half", p.stat(mp), trueStat(t, upper))

	writeViaTmp(t, kdir, "extra.bin", []byte("x"))
	wantProbe(t, "a new file in the KEY dir", p.read(filepath.Join(kdir, "extra.bin")), `"x"`)

	const gone = "add_kernel.ptx"
	wantProbe(t, "an image file", p.read(filepath.Join(kdir, gone)), strconv.Quote(string(source(t, cudaKey, gone))))
	if err := os.Remove(filepath.Join(kdir, gone)); err != nil {
		t.Fatal(err)
	}
	wantProbe(t, "a deleted image file", p.stat(filepath.Join(kdir, gone)), enoent)
	if err := os.WriteFile(filepath.Join(kdir, gone), []byte("mine"), 0o644); err != nil {
		t.Fatal(err)
	}
	wantProbe(t, "a new file where an image file was deleted", p.read(filepath.Join(kdir, gone)), `"mine"`)
	if err := os.Remove(filepath.Join(kdir, gone)); err != nil {
		t.Fatal(err)
	}
	wantProbe(t, "that file deleted (the image's stays hidden)", p.stat(filepath.Join(kdir, gone)), enoent)

	// The images list a KEY only after it was looked up (a catalog refresh).
	later := keyOf("listed later")
	wantProbe(t, "a KEY no image lists", p.stat(filepath.Join(mp, later)), enoent)
	copyDir(t, filepath.Join(l.dir, cudaKey), filepath.Join(l.dir, later))
	wantProbe(t, "a KEY the images list now", p.read(filepath.Join(mp, later, name)), strconv.Quote(string(source(t, cudaKey, name))))
}

// TestLateLowerHalfShowsAtOnce: a KEY dir whose files came in after its
// lookups gave up shows them to another process at once.
func TestLateLowerHalfShowsAtOnce(t *testing.T) {
	l := newFakeLower(t)
	release := l.hold(t, rocmKey)
	s, mp := testMount(t, Options{Lower: l, LookupTimeout: 100 * time.Millisecond})
	p := startProbe(t)
	kdir := filepath.Join(mp, rocmKey)
	const name = "add_kernel.json"
	if got := p.stat(kdir); strings.HasPrefix(got, "no ") {
		t.Fatalf("a KEY the images list: %s", got)
	}
	wantProbe(t, "a file of a KEY whose fetch is late", p.stat(filepath.Join(kdir, name)), enoent)
	hits := s.Stats().Snapshot().Hits
	release()
	for deadline := time.Now().Add(10 * time.Second); s.Stats().Snapshot().Hits == hits; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the late fetch was not adopted")
		}
	}
	wantProbe(t, "a file of a KEY whose fetch came in", p.read(filepath.Join(kdir, name)), strconv.Quote(string(source(t, rocmKey, name))))
}

// TestWarmHitRequests: a warm hit is answered from the kernel's caches but
// for what the kernel always asks: the mkdir's lookup, and each file's
// open, ioctl (CPython asks isatty) and release. Nothing for stat, read or
// close: no GETATTR, READ or FLUSH. The same for a KEY compiled locally.
func TestWarmHitRequests(t *testing.T) {
	l := newFakeLower(t)
	if err := os.RemoveAll(filepath.Join(l.dir, rocmKey)); err != nil { // compiled here
		t.Fatal(err)
	}
	s, mp := testMount(t, Options{Lower: l})
	if err := replay.Miss(mp, rocmKey, filepath.Join(testdata, "vector-add-cache-rocm")); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{cudaKey, rocmKey} {
		// The first hit fetches and reads the pages; the second asks the
		// attributes once more (a read drops the kernel's atime).
		for range 2 {
			if _, err := replay.HitNamed(mp, key, "add_kernel", ""); err != nil {
				t.Fatal(err)
			}
		}
		before := settledRequests(s)
		r, err := replay.HitNamed(mp, key, "add_kernel", "")
		if err != nil || r.Outcome != replay.OutcomeHit {
			t.Fatalf("warm hit %s: %+v %v", key, r, err)
		}
		after := settledRequests(s)
		got := map[string]int64{}
		for op, n := range after {
			if d := n - before[op]; d > 0 {
				got[op] = d
			}
		}
		files := int64(r.Files)
		want := map[string]int64{"LOOKUP": 1, "OPEN": files, "IOCTL": files, "RELEASE": files}
		for op, n := range got {
			if n != want[op] {
				t.Errorf("warm hit of %s: %d %s requests, want %d (all: %v)", key, n, op, want[op], got)
			}
		}
	}
}

// settledRequests reads the request counters once RELEASE (sent after
// close returns) has come in.
func settledRequests(s *Server) map[string]int64 {
	last := s.Stats().Snapshot().Requests
	for range 100 {
		time.Sleep(10 * time.Millisecond)
		now := s.Stats().Snapshot().Requests
		if now["RELEASE"] == last["RELEASE"] && now["OPEN"] == last["OPEN"] {
			return now
		}
		last = now
	}
	return last
}
