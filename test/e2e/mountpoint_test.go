package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"cargohold/test/replay"
	"cargohold/triton/gen"
)

// Medium 7: a state dir inside the mountpoint, or a mountpoint inside the
// state dir, would make the daemon serve its own state through itself; it
// is refused at start with a clear error, whichever way the paths are
// written (a symlink too), and nothing is left mounted.
func TestMountStateOverlapRefused(t *testing.T) {
	store, _ := localImage(t)
	args := []string{"-i", "life/cache:v1", "--store", store, "--gpu", "cuda:75:32"}
	cases := []struct {
		name       string
		state, mnt func(base string) string
	}{
		{"state inside mountpoint",
			func(b string) string { return filepath.Join(b, "mnt", "state") },
			func(b string) string { return filepath.Join(b, "mnt") }},
		{"mountpoint inside state upper",
			func(b string) string { return filepath.Join(b, "state") },
			func(b string) string { return filepath.Join(b, "state", "upper", "mnt") }},
		{"mountpoint is the state dir",
			func(b string) string { return filepath.Join(b, "state") },
			func(b string) string { return filepath.Join(b, "state") }},
		{"state inside mountpoint through a symlink",
			func(b string) string {
				os.MkdirAll(filepath.Join(b, "mnt"), 0o755)
				os.Symlink(filepath.Join(b, "mnt"), filepath.Join(b, "link"))
				return filepath.Join(b, "link", "state")
			},
			func(b string) string { return filepath.Join(b, "mnt") }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			base := t.TempDir()
			state, mnt := c.state(base), c.mnt(base)
			a := tryMountAt(t, mnt, os.Environ(), "", append(args, "--state-dir", state)...)
			if !a.exited || a.err == nil || !strings.Contains(a.log, "state dir") || !strings.Contains(a.log, "mountpoint") {
				t.Fatalf("want a refusal naming the state dir and the mountpoint, got exited=%v err=%v\n%s", a.exited, a.err, a.log)
			}
		})
	}
}

// Medium 8: mounting over a cache dir that holds the user's own kernels
// keeps them visible and writable through the mount; what is compiled
// while mounted lands in that dir, so after unmount nothing is lost or
// hidden.
func TestMountOverOwnKernels(t *testing.T) {
	store, src := localImage(t)
	mnt := filepath.Join(t.TempDir(), "cache")
	own := t.TempDir()
	if _, err := gen.Generate(own, gen.Options{Kernels: 2, Seed: 3, Root: mnt, Scale: 0.1}); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(mnt, 0o755)
	if out, err := exec.Command("cp", "-a", own+"/.", mnt).CombinedOutput(); err != nil {
		t.Fatalf("%s", out)
	}
	ownKeys := keysOf(t, own, "cuda:80:32")
	fresh := t.TempDir() // a kernel compiled while mounted
	if _, err := gen.Generate(fresh, gen.Options{Kernels: 1, Seed: 4, Root: mnt, Scale: 0.1}); err != nil {
		t.Fatal(err)
	}
	freshKey := keysOf(t, fresh, "cuda:80:32")[0]

	m := startFS(t, mnt, "", "-i", "life/cache:v1", "--store", store, "--gpu", "cuda:75:32")
	for _, k := range ownKeys {
		if _, err := replay.Hit(m.mnt, k, own); err != nil {
			t.Fatalf("own kernel %s through the mount: %v", k, err)
		}
	}
	if _, err := replay.Hit(m.mnt, vectorAddKey, src); err != nil {
		t.Fatalf("image kernel: %v", err)
	}
	// Writable: a file added to an own KEY dir, and a whole local compile.
	note := filepath.Join(m.mnt, ownKeys[0], "note.txt")
	if err := os.WriteFile(note, []byte("written through the mount\n"), 0o644); err != nil {
		t.Fatalf("write into an own KEY dir: %v", err)
	}
	if err := replay.Miss(m.mnt, freshKey, fresh); err != nil {
		t.Fatalf("compile while mounted: %v", err)
	}
	m.stop(t)

	// After unmount the dir holds its own kernels, the file written and the
	// kernel compiled while mounted.
	for _, k := range ownKeys {
		sameFiles(t, filepath.Join(own, k), filepath.Join(mnt, k))
	}
	if b, err := os.ReadFile(filepath.Join(mnt, ownKeys[0], "note.txt")); err != nil || !strings.Contains(string(b), "through the mount") {
		t.Fatalf("file written while mounted: %q %v", b, err)
	}
	if _, err := replay.Hit(mnt, freshKey, fresh); err != nil {
		t.Fatalf("kernel compiled while mounted, after unmount: %v", err)
	}
	if _, err := os.Stat(filepath.Join(mnt, vectorAddKey)); !os.IsNotExist(err) {
		t.Fatalf("the image's kernel must not be copied into the dir: %v", err)
	}
	// And a remount shows all of it again.
	m = startFS(t, mnt, "", "-i", "life/cache:v1", "--store", store, "--gpu", "cuda:75:32")
	if _, err := replay.Hit(m.mnt, freshKey, fresh); err != nil {
		t.Fatalf("after remount: %v", err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(m.mnt, ownKeys[1]), &st); err != nil {
		t.Fatal(err)
	}
}

// sameFiles fails unless every file of src is in got, byte for byte.
func sameFiles(t *testing.T, src, got string) {
	t.Helper()
	des, err := os.ReadDir(src)
	if err != nil || len(des) == 0 {
		t.Fatalf("%s: %v", src, err)
	}
	for _, de := range des {
		want, _ := os.ReadFile(filepath.Join(src, de.Name()))
		have, err := os.ReadFile(filepath.Join(got, de.Name()))
		if err != nil || !bytes.Equal(have, want) {
			t.Errorf("%s: lost or changed (%v)", filepath.Join(got, de.Name()), err)
		}
	}
}

// Medium 8, upgrade: local compiles an older version kept in
// <state>/upper move into the cache dir, so they are not hidden now that
// the cache dir is the upper dir.
func TestMountMovesOldUpper(t *testing.T) {
	store, _ := localImage(t)
	state := t.TempDir()
	mnt := filepath.Join(t.TempDir(), "cache")
	old := t.TempDir()
	if _, err := gen.Generate(old, gen.Options{Kernels: 1, Seed: 5, Root: mnt, Scale: 0.1}); err != nil {
		t.Fatal(err)
	}
	key := keysOf(t, old, "cuda:80:32")[0]
	os.MkdirAll(filepath.Join(state, "upper"), 0o755)
	if out, err := exec.Command("cp", "-a", filepath.Join(old, key), filepath.Join(state, "upper")).CombinedOutput(); err != nil {
		t.Fatalf("%s", out)
	}
	m := startFS(t, mnt, state, "-i", "life/cache:v1", "--store", store, "--gpu", "cuda:75:32")
	if _, err := replay.Hit(m.mnt, key, old); err != nil {
		t.Fatalf("old local compile through the mount: %v", err)
	}
	m.stop(t)
	sameFiles(t, filepath.Join(old, key), filepath.Join(mnt, key))
	if _, err := os.Stat(filepath.Join(state, "upper")); !os.IsNotExist(err) {
		t.Fatalf("old upper dir left: %v", err)
	}
}

// Low: on a root --allow-other mount, other users can compile into it (the
// root shows sticky and open to all, as /tmp; each KEY dir made is its
// maker's), not only read.
func TestMountAllowOtherCompiles(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the daemon of a shared mount")
	}
	store, src := localImage(t)
	m := startFS(t, "", "", "-i", "life/cache:v1", "--store", store, "--gpu", "cuda:75:32", "--allow-other")
	fresh := t.TempDir()
	if _, err := gen.Generate(fresh, gen.Options{Kernels: 1, Seed: 6, Root: m.mnt, Scale: 0.1}); err != nil {
		t.Fatal(err)
	}
	key := keysOf(t, fresh, "cuda:80:32")[0]
	exec.Command("chmod", "-R", "a+rX", fresh, bin).Run()
	for p := fresh; strings.HasPrefix(p, os.TempDir()+"/"); p = filepath.Dir(p) {
		os.Chmod(p, 0o755)
	}
	asOther := func(args ...string) error {
		cmd := exec.Command(filepath.Join(bin, "replay"), args...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: otherUID, Gid: otherGID}}
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v\n%s", err, out)
		}
		return nil
	}
	if err := asOther("hit", "--root", m.mnt, "--expect", src, vectorAddKey); err != nil {
		t.Fatalf("read as uid %d: %v", otherUID, err)
	}
	if err := asOther("miss", "--root", m.mnt, "--from", fresh, key); err != nil {
		t.Fatalf("compile as uid %d: %v", otherUID, err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(m.mnt, key), &st); err != nil || st.Uid != otherUID {
		t.Fatalf("KEY dir made by uid %d: owner %d, %v", otherUID, st.Uid, err)
	}
	if _, err := replay.Hit(m.mnt, key, fresh); err != nil {
		t.Fatalf("root reads the other user's compile: %v", err)
	}
}
