package fs

import (
	"context"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"cargohold/kind"
	"cargohold/test/cachetest"
	"cargohold/test/replay"
)

// Units of the real test data.
const (
	vllmHash     = "edf531ca35"
	vllmBackbone = "torch_compile_cache/" + vllmHash + "/rank_0_0/backbone"
	unpackedHash = "d4ec7c2a7d"
	unpackedRank = "torch_compile_cache/" + unpackedHash + "/rank_0_0"
	fxUnit       = "fxgraph/r4/fr4t73hg7nisksrnalktc6oq7w4kf5xjy7couij4xnicybdtk65e"
)

// newKindLower serves a cache root of kind k as the images would: every
// unit's files as they are on disk (absolute paths of the build host
// inside), rewrites marked by kind.
func newKindLower(t *testing.T, k kind.Kind, src string) *fakeLower {
	t.Helper()
	dir := t.TempDir()
	if out, err := exec.Command("cp", "-r", src+"/.", dir).CombinedOutput(); err != nil {
		t.Fatalf("copy %s: %v: %s", src, err, out)
	}
	return &fakeLower{dir: dir, kind: k, entered: make(chan string, 64), calls: map[string]int{},
		fails: map[string]error{}, gates: map[string]chan struct{}{}}
}

// inductorRoot is the Inductor cache of the unpacked vLLM test data.
func inductorRoot(t *testing.T) string {
	return filepath.Join(cachetest.VLLMTestdata(t, "unpacked-vllm-cache"), unpackedRank, "inductor_cache")
}

func hitAll(t *testing.T, k replay.Kind, root, expect string) replay.Summary {
	t.Helper()
	sum, bad, err := replay.HitAll(context.Background(), k, root, expect)
	if err != nil || len(bad) > 0 || sum.Hits == 0 {
		t.Fatalf("replay hit --all of %s: %+v, %v, not hits: %+v", root, sum, err, bad)
	}
	return sum
}

// TestVLLMView: a vLLM root shows the images' dirs without fetching, a
// unit is fetched once on the first lookup inside it, its
// vllm_compile_cache.py names the artifacts under the mount with its size
// exact at first sight, and vLLM's hit replays.
func TestVLLMView(t *testing.T) {
	src := cachetest.VLLMTestdata(t, "llama-binary-cache")
	l := newKindLower(t, kind.VLLM, src)
	s, mp := testMount(t, Options{Lower: l, Kind: kind.VLLM})

	if _, err := os.Stat(filepath.Join(mp, "torch_compile_cache", "0000000000")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a hash no image has: %v", err)
	}
	if st := s.Stats().Snapshot(); st.Misses != 1 {
		t.Errorf("a hash no image has counted %d misses, want 1", st.Misses)
	}
	if got := readDirNames(t, mp); !slices.Equal(got, []string{"modelinfos", "torch_compile_cache"}) {
		t.Fatalf("root lists %v", got)
	}
	if got := readDirNames(t, filepath.Join(mp, "torch_compile_cache", vllmHash, "rank_0_0")); !slices.Equal(got, []string{"backbone"}) {
		t.Fatalf("rank dir lists %v", got)
	}
	if n := l.totalCalls(); n != 0 {
		t.Fatalf("listing the dirs above the units fetched %d units", n)
	}
	data, size := readAllOnce(t, filepath.Join(mp, vllmBackbone, "vllm_compile_cache.py"))
	if int64(len(data)) != size {
		t.Errorf("vllm_compile_cache.py: stat says %d bytes, read %d", size, len(data))
	}
	want := "'" + filepath.Join(mp, vllmBackbone, "artifact_compile_range_1_2048_subgraph_0") + "'"
	if !strings.Contains(string(data), want) {
		t.Errorf("vllm_compile_cache.py does not name %s:\n%.600s", want, data)
	}
	orig, err := os.ReadFile(filepath.Join(src, vllmBackbone, "vllm_compile_cache.py"))
	if err != nil {
		t.Fatal(err)
	}
	if string(orig) == string(data) {
		t.Error("vllm_compile_cache.py served as the image holds it, not rewritten")
	}
	if l.callsFor(vllmBackbone) != 1 || l.totalCalls() != 1 {
		t.Errorf("Entry calls: %v, want one of %s", l.calls, vllmBackbone)
	}
	// vLLM's hit in three processes at once (the artifacts read from the
	// content's descriptors in processes other than the one serving).
	sum, err := replay.Run(context.Background(), replay.Options{
		Mode: replay.ModeHit, Cache: replay.KindVLLM, Root: mp, Keys: []string{vllmHash}, Expect: src, Procs: 3,
	}, func(r replay.Result) {
		if r.Outcome != replay.OutcomeHit {
			t.Errorf("replay %s (proc %d): %s %s", r.Key, r.Proc, r.Outcome, r.Error)
		}
	})
	if err != nil || !sum.OK() || sum.Hits != 3 {
		t.Fatalf("vLLM hit in 3 processes: %+v, %v", sum, err)
	}
	if n := l.callsFor(vllmBackbone); n != 1 {
		t.Errorf("backbone fetched %d times", n)
	}
}

// TestVLLMWrites: vLLM compiling a hash the images do not have writes
// through dirs only the images have (torch_compile_cache/) into the upper
// dir, visible at once; the images' hash stays served beside it.
func TestVLLMWrites(t *testing.T) {
	src := cachetest.VLLMTestdata(t, "llama-binary-cache")
	from := cachetest.VLLMTestdata(t, "unpacked-vllm-cache")
	l := newKindLower(t, kind.VLLM, src)
	upper := t.TempDir()
	_, mp := testMount(t, Options{Lower: l, Kind: kind.VLLM, Upper: upper})

	res, err := replay.VLLMMiss(mp, unpackedHash, "", from, false)
	if err != nil || res.Outcome != replay.OutcomeMiss {
		t.Fatalf("vLLM miss: %+v, %v", res, err)
	}
	if _, err := os.Stat(filepath.Join(upper, unpackedRank, "vllm_compile_cache.py")); err != nil {
		t.Errorf("the compile is not in the upper dir: %v", err)
	}
	if got := readDirNames(t, filepath.Join(mp, "torch_compile_cache")); !slices.Equal(got, []string{unpackedHash, vllmHash}) {
		t.Errorf("torch_compile_cache lists %v", got)
	}
	hitAll(t, replay.KindVLLM, mp, "")
	// The dir the images show cannot be removed while it holds their files.
	wantErrno(t, "rmdir torch_compile_cache", syscall.Rmdir(filepath.Join(mp, "torch_compile_cache")), syscall.ENOTEMPTY)
	wantErrno(t, "rmdir backbone", syscall.Rmdir(filepath.Join(mp, vllmBackbone)), syscall.ENOTEMPTY)
	wantErrno(t, "mkdir of the images' hash dir", syscall.Mkdir(filepath.Join(mp, "torch_compile_cache", vllmHash), 0o755), syscall.EEXIST)
}

// TestVLLMUnpackedChildUnits: an unpacked vLLM rank dir is a unit with
// child units (inductor_cache/..., triton_cache/<KEY>): a lookup of a child
// dir fetches nothing, the nested Triton group files name the mount, and
// vLLM's legacy hit (Inductor and Triton hits inside) replays.
func TestVLLMUnpackedChildUnits(t *testing.T) {
	src := cachetest.VLLMTestdata(t, "unpacked-vllm-cache")
	l := newKindLower(t, kind.VLLM, src)
	_, mp := testMount(t, Options{Lower: l, Kind: kind.VLLM})

	if fi, err := os.Stat(filepath.Join(mp, unpackedRank, "triton_cache")); err != nil || !fi.IsDir() {
		t.Fatalf("stat triton_cache: %v", err)
	}
	if n := l.totalCalls(); n != 0 {
		t.Fatalf("a lookup of a child dir fetched %d units: %v", n, l.calls)
	}
	hitAll(t, replay.KindVLLM, mp, src)
	keys := readDirNames(t, filepath.Join(mp, unpackedRank, "triton_cache"))
	if len(keys) == 0 {
		t.Fatal("no Triton KEY in triton_cache")
	}
	res, err := replay.Hit(filepath.Join(mp, unpackedRank, "triton_cache"), keys[0], filepath.Join(src, unpackedRank, "triton_cache"))
	if err != nil || res.Outcome != replay.OutcomeHit {
		t.Fatalf("Triton hit in triton_cache (group file paths under the mount): %+v, %v", res, err)
	}
}

// TestInductorView: an Inductor root: the images' units replay as hits;
// locks/ is never asked of the images and flock works on its files;
// write_atomic's tmp file renamed into an image's unit lands in the upper
// dir beside the image's files; a bundled Triton kernel's tmp dir renamed
// onto triton/<device>/<KEY>; deletions hide image files and dirs, and a
// dir made again starts empty.
func TestInductorView(t *testing.T) {
	src := inductorRoot(t)
	l := newKindLower(t, kind.Inductor, src)
	upper := t.TempDir()
	_, mp := testMount(t, Options{Lower: l, Kind: kind.Inductor, Upper: upper})

	hitAll(t, replay.KindInductor, mp, src)

	// Locks: local only, and flock holds (the replay checks that a second
	// open cannot take it).
	res, err := replay.InductorMiss(mp, "locks/"+strings.Repeat("ab", 10)+".lock", "")
	if err != nil {
		t.Fatalf("FileLock through the mount: %+v, %v", res, err)
	}
	for _, rel := range l.askedPaths() {
		if rel == "locks" || strings.HasPrefix(rel, "locks/") || rel == "cache" || strings.HasPrefix(rel, "cache/") {
			t.Errorf("the images were asked for the local-only %s", rel)
		}
	}

	// write_atomic into an image's unit.
	unit := filepath.Join(mp, fxUnit)
	tmp := filepath.Join(unit, ".4242.77.tmp")
	if err := os.WriteFile(tmp, []byte("new entry"), 0o644); err != nil {
		t.Fatalf("write tmp: %v", err)
	}
	if err := os.Rename(tmp, filepath.Join(unit, "newentry")); err != nil {
		t.Fatalf("rename onto the entry: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(upper, fxUnit, "newentry")); err != nil || string(b) != "new entry" {
		t.Errorf("entry in the upper dir: %q, %v", b, err)
	}
	names := readDirNames(t, unit)
	srcNames := readDirNames(t, filepath.Join(src, fxUnit))
	if !slices.Contains(names, "newentry") || !slices.Contains(names, srcNames[0]) || slices.Contains(names, ".4242.77.tmp") {
		t.Errorf("unit lists %v (image's %v)", names, srcNames)
	}

	// TritonBundler: tmp dir renamed onto triton/<device>/<KEY>.
	from := t.TempDir()
	copyDir(t, filepath.Join(testdata, "vector-add-cache", cudaKey), filepath.Join(from, "triton", "0", cudaKey))
	if res, err := replay.InductorMiss(mp, "triton/0/"+cudaKey, from); err != nil {
		t.Fatalf("bundled kernel written through the mount: %+v, %v", res, err)
	}
	if _, err := os.Stat(filepath.Join(upper, "triton", "0", cudaKey, grpName)); err != nil {
		t.Errorf("bundled kernel not in the upper dir: %v", err)
	}

	// Removal: a dir the images show holds their files; emptied, it goes,
	// and made again it is empty.
	wantErrno(t, "rmdir fxgraph", syscall.Rmdir(filepath.Join(mp, "fxgraph")), syscall.ENOTEMPTY)
	wantErrno(t, "mkdir fxgraph", syscall.Mkdir(filepath.Join(mp, "fxgraph"), 0o755), syscall.EEXIST)
	wantErrno(t, "rename an image's dir", syscall.Rename(filepath.Join(mp, "aotautograd"), filepath.Join(mp, "elsewhere")), syscall.EXDEV)
	aot := readDirNames(t, filepath.Join(mp, "aotautograd"))
	adir := filepath.Join(mp, "aotautograd", aot[0])
	wantErrno(t, "rmdir of a unit", syscall.Rmdir(adir), syscall.ENOTEMPTY)
	for _, n := range readDirNames(t, adir) {
		if err := os.Remove(filepath.Join(adir, n)); err != nil {
			t.Fatal(err)
		}
	}
	if err := syscall.Rmdir(adir); err != nil {
		t.Fatalf("rmdir of an emptied unit: %v", err)
	}
	if _, err := os.Stat(adir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("removed unit: stat %v", err)
	}
	if slices.Contains(readDirNames(t, filepath.Join(mp, "aotautograd")), aot[0]) {
		t.Error("removed unit still listed")
	}
	if err := os.Mkdir(adir, 0o755); err != nil {
		t.Fatalf("mkdir where a unit was removed: %v", err)
	}
	if got := readDirNames(t, adir); len(got) != 0 {
		t.Errorf("a unit made again shows %v", got)
	}
	// An atomic save onto a file of an image's unit.
	if err := unix.Access(filepath.Join(mp, fxUnit, srcNames[0]), unix.R_OK); err != nil {
		t.Errorf("image entry: %v", err)
	}
}

// dirNames lists a dir's names, or says why it cannot.
func dirNames(p string) []string {
	des, err := os.ReadDir(p)
	if err != nil {
		return []string{"error: " + err.Error()}
	}
	var out []string
	for _, de := range des {
		out = append(out, de.Name())
	}
	return out
}

// TestRenameMergedDirIsEXDEV: a vLLM hash dir compiled locally (no image
// has it) finds its upper half by its path, so rename(2) of it answers
// EXDEV and leaves it intact and writable under its name; mv copies it,
// and the copy keeps its files under the new name.
func TestRenameMergedDirIsEXDEV(t *testing.T) {
	upper := t.TempDir()
	_, mp := testMount(t, Options{Kind: kind.VLLM, Upper: upper})
	a := filepath.Join(mp, "torch_compile_cache", "aaaa")
	if err := os.MkdirAll(filepath.Join(a, "rank_0_0"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(a, "rank_0_0", "vllm_compile_cache.py"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	b := filepath.Join(mp, "torch_compile_cache", "bbbb")
	wantErrno(t, "rename of a merged dir", syscall.Rename(a, b), syscall.EXDEV)
	wantErrno(t, "rename of a merged child dir", syscall.Rename(filepath.Join(a, "rank_0_0"), filepath.Join(a, "rank_1_0")), syscall.EXDEV)
	if got := dirNames(a); !slices.Equal(got, []string{"rank_0_0"}) {
		t.Errorf("the dir lists %v after the refused rename, want [rank_0_0]", got)
	}
	if got := dirNames(filepath.Join(a, "rank_0_0")); !slices.Equal(got, []string{"vllm_compile_cache.py"}) {
		t.Errorf("the dir's child lists %v after the refused rename, want [vllm_compile_cache.py]", got)
	}
	if err := os.WriteFile(filepath.Join(a, "rank_0_0", "after"), []byte("z"), 0o644); err != nil {
		t.Errorf("write into the dir after the refused rename: %v", err)
	}
	if _, err := os.Stat(filepath.Join(upper, "torch_compile_cache", "aaaa", "rank_0_0", "after")); err != nil {
		t.Errorf("the write is not in the dir's upper half: %v", err)
	}
	if err := os.Remove(filepath.Join(a, "rank_0_0", "after")); err != nil {
		t.Fatal(err)
	}

	// mv copies: the new name holds the files, the old one is gone.
	if out, err := exec.Command("mv", a, b).CombinedOutput(); err != nil {
		t.Fatalf("mv: %v: %s", err, out)
	}
	if _, err := os.Stat(filepath.Join(upper, "torch_compile_cache", "bbbb", "rank_0_0", "vllm_compile_cache.py")); err != nil {
		t.Fatalf("upper: %v", err)
	}
	if got := dirNames(b); !slices.Equal(got, []string{"rank_0_0"}) {
		t.Errorf("the moved dir lists %v, want [rank_0_0]", got)
	}
	if got := dirNames(filepath.Join(b, "rank_0_0")); !slices.Equal(got, []string{"vllm_compile_cache.py"}) {
		t.Errorf("the moved dir's child lists %v, want [vllm_compile_cache.py]", got)
	}
	// A write through the moved dir lands in it, not under the old name.
	if err := os.WriteFile(filepath.Join(b, "rank_0_0", "new"), []byte("y"), 0o644); err != nil {
		t.Errorf("write into the moved dir: %v", err)
	}
	if _, err := os.Stat(filepath.Join(upper, "torch_compile_cache", "bbbb", "rank_0_0", "new")); err != nil {
		t.Errorf("the write is not in the moved dir's upper half: %v", err)
	}
	if got := dirNames(filepath.Join(mp, "torch_compile_cache")); !slices.Equal(got, []string{"bbbb"}) {
		t.Errorf("torch_compile_cache lists %v, want [bbbb]", got)
	}
}

// emptyUpperHalf gives the unit dir its upper half, left empty: a file
// made and removed.
func emptyUpperHalf(t *testing.T, unit string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(unit, "scratch"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(unit, "scratch")); err != nil {
		t.Fatal(err)
	}
}

// tmpDirWithMine makes dir/tmp.1234 holding the file "mine", and returns
// its path.
func tmpDirWithMine(t *testing.T, dir string) string {
	t.Helper()
	tmp := filepath.Join(dir, "tmp.1234")
	if err := os.Mkdir(tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tmp, "mine"), []byte("m"), 0o644); err != nil {
		t.Fatal(err)
	}
	return tmp
}

// TestRenameOntoImageUnitIsENOTEMPTY: a dir renamed onto a unit the images
// show fails ENOTEMPTY (the unit holds the images' files), even when the
// unit's upper half exists and is empty.
func TestRenameOntoImageUnitIsENOTEMPTY(t *testing.T) {
	src := cachetest.VLLMTestdata(t, "llama-binary-cache")
	l := newKindLower(t, kind.VLLM, src)
	upper := t.TempDir()
	_, mp := testMount(t, Options{Lower: l, Kind: kind.VLLM, Upper: upper})
	unit := filepath.Join(mp, vllmBackbone)
	before := readDirNames(t, unit)
	emptyUpperHalf(t, unit)
	tmp := tmpDirWithMine(t, filepath.Dir(unit))
	if err := syscall.Rename(tmp, unit); err != syscall.ENOTEMPTY {
		t.Errorf("rename onto the images' unit: %v, want ENOTEMPTY", err)
	}
	if got := readDirNames(t, unit); !slices.Equal(got, before) {
		t.Errorf("the unit lists %v, want %v", got, before)
	}
}

// TestRmdirOverDeletedImageFileKeepsItDeleted: an image file deleted, a
// dir renamed onto its name and removed: the image file stays deleted.
func TestRmdirOverDeletedImageFileKeepsItDeleted(t *testing.T) {
	src := cachetest.VLLMTestdata(t, "llama-binary-cache")
	l := newKindLower(t, kind.VLLM, src)
	_, mp := testMount(t, Options{Lower: l, Kind: kind.VLLM})
	unit := filepath.Join(mp, vllmBackbone)
	f := filepath.Join(unit, "computation_graph.py")
	if err := os.Remove(f); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(unit, "tmp.1")
	if err := os.Mkdir(tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, f); err != nil {
		t.Fatalf("rename: %v", err)
	}
	if err := syscall.Rmdir(f); err != nil {
		t.Fatalf("rmdir: %v", err)
	}
	if _, err := os.Lstat(f); !os.IsNotExist(err) {
		t.Errorf("the deleted image file is back: %v", err)
	}
}

// TestRenameOntoDeletedImageDirKeepsItDeleted: a dir renamed onto the name
// of an image's dir that was deleted keeps the image's files deleted: a
// fresh view of the upper dir (a remount) shows the renamed dir's files
// only.
func TestRenameOntoDeletedImageDirKeepsItDeleted(t *testing.T) {
	src := cachetest.VLLMTestdata(t, "llama-binary-cache")
	l := newKindLower(t, kind.VLLM, src)
	upper := t.TempDir()
	_, mp := testMount(t, Options{Lower: l, Kind: kind.VLLM, Upper: upper})
	unit := filepath.Join(mp, vllmBackbone)
	if err := os.RemoveAll(unit); err != nil {
		t.Fatal(err)
	}
	tmp := tmpDirWithMine(t, filepath.Dir(unit))
	if err := os.Rename(tmp, unit); err != nil {
		t.Fatalf("rename: %v", err)
	}
	if got := readDirNames(t, unit); !slices.Equal(got, []string{"mine"}) {
		t.Errorf("the renamed dir lists %v, want [mine]", got)
	}
	_, mp2 := testMount(t, Options{Lower: l, Kind: kind.VLLM, Upper: upper})
	if got := readDirNames(t, filepath.Join(mp2, vllmBackbone)); !slices.Equal(got, []string{"mine"}) {
		t.Errorf("remounted, the renamed dir lists %v, want [mine]", got)
	}
}

// TestRmdirUnitStillShowingFilesIsENOTEMPTY: a unit whose files the view
// shows is not removed when the images stop listing it (a refresh): its
// node still holds their files, and listings show them.
func TestRmdirUnitStillShowingFilesIsENOTEMPTY(t *testing.T) {
	src := cachetest.VLLMTestdata(t, "llama-binary-cache")
	l := newKindLower(t, kind.VLLM, src)
	_, mp := testMount(t, Options{Lower: l, Kind: kind.VLLM})
	unit := filepath.Join(mp, vllmBackbone)
	emptyUpperHalf(t, unit)
	before := readDirNames(t, unit)
	if len(before) == 0 {
		t.Fatal("the unit lists nothing")
	}
	if err := os.RemoveAll(filepath.Join(l.dir, vllmBackbone)); err != nil { // the refresh
		t.Fatal(err)
	}
	wantErrno(t, "rmdir of a unit showing files", syscall.Rmdir(unit), syscall.ENOTEMPTY)
	if got := readDirNames(t, unit); !slices.Equal(got, before) {
		t.Errorf("the unit lists %v, want %v", got, before)
	}
}

// direntInos reads dir's entries as getdents64 returns them: name → d_ino.
func direntInos(t *testing.T, dir string) map[string]uint64 {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	inos := map[string]uint64{}
	buf := make([]byte, 1<<16)
	for {
		n, err := unix.Getdents(fd, buf)
		if err != nil {
			t.Fatalf("getdents %s: %v", dir, err)
		}
		if n == 0 {
			return inos
		}
		// struct linux_dirent64: d_ino u64, d_off s64, d_reclen u16, d_type u8, d_name.
		for b := buf[:n]; len(b) > 0; {
			reclen := int(binary.NativeEndian.Uint16(b[16:18]))
			name, _, _ := strings.Cut(string(b[19:reclen]), "\x00")
			inos[name] = binary.NativeEndian.Uint64(b[:8])
			b = b[reclen:]
		}
	}
}

// TestDirMovedToMergedNameKeepsItsNode: Inductor's bundled kernel dir
// (tmp.<uuid> renamed onto triton/<device>/<KEY>) keeps the node it had:
// listings report the inode number stat reports, and a process holding
// the dir writes into it after the parent was listed.
func TestDirMovedToMergedNameKeepsItsNode(t *testing.T) {
	upper := t.TempDir()
	_, mp := testMount(t, Options{Kind: kind.Inductor, Upper: upper})
	dev := filepath.Join(mp, "triton", "0")
	tmp := filepath.Join(dev, "tmp.4242")
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tmp, grpName), []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	k := filepath.Join(dev, cudaKey)
	if err := os.Rename(tmp, k); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(k, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Stat(k, &st); err != nil {
		t.Fatal(err)
	}
	if got := direntInos(t, dev)[cudaKey]; got != st.Ino {
		t.Errorf("the listing says inode %d, stat %d", got, st.Ino)
	}
	if got := readDirNames(t, dev); !slices.Equal(got, []string{cudaKey}) {
		t.Errorf("triton/0 lists %v", got)
	}
	nfd, err := unix.Openat(fd, "after", unix.O_CREAT|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
	if err != nil {
		t.Fatalf("create through the held dir: %v", err)
	}
	unix.Close(nfd)
	if _, err := os.Stat(filepath.Join(upper, "triton", "0", cudaKey, "after")); err != nil {
		t.Errorf("the write is not in the dir's upper half: %v", err)
	}
}
