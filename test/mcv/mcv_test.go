package mcv

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"cargohold/gpu"
	"cargohold/kind"
	"cargohold/test/cachetest"
	"cargohold/test/registry"
	"cargohold/test/replay"
)

// kase is one shared real cache of a kind MCV knows.
type kase struct {
	name string
	k    kind.Kind
	src  string
	gpu  gpu.Target // the host: packed for units no kernel JSON describes, and fitted
	ptx  int        // the kernels' PTX version, which MCV's manifest check compares on CUDA
}

func kases(t *testing.T) []kase {
	cuda := gpu.Target{Backend: "cuda", Arch: "75", WarpSize: 32}
	hip := gpu.Target{Backend: "hip", Arch: "gfx90a", WarpSize: 64}
	return []kase{
		{"triton", kind.Triton, cachetest.Testdata(t, "vector-add-cache"), cuda, 0},
		{"triton-rocm", kind.Triton, cachetest.Testdata(t, "vector-add-cache-rocm"), hip, 0},
		{"vllm-binary", kind.VLLM, cachetest.VLLMTestdata(t, "llama-binary-cache"), cuda, 0},
		{"vllm-unpacked", kind.VLLM, cachetest.VLLMTestdata(t, "unpacked-vllm-cache"), hip, 0},
	}
}

// TestCargoholdToMCV: what cargohold packs and pushes, MCV extracts as its
// own. A copy of each cache "built" at a dir P (its absolute paths P's) is
// packed, moved away, and extracted with mcv -e into P: the label's size is
// what MCV extracts (no "cache size mismatch"), the tree is the copy's byte
// for byte (MCV rewrites nothing), the framework's replay HITs there, and
// MCV's own summary and manifest checks (mcvcheck) pass.
func TestCargoholdToMCV(t *testing.T) {
	needMCV(t)
	reg := registry.Start(t)
	for _, c := range kases(t) {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "built", c.name)
			buildAt(t, c, p)
			ref := reg.Ref("cargohold/" + c.name + ":v1")
			must(t, nil, filepath.Join(bin, "cargohold"), "-c", "-i", ref, "-d", p, "--push", "--gpu", c.gpu.String())
			orig := p + ".orig"
			if err := os.Rename(p, orig); err != nil {
				t.Fatal(err)
			}
			out := mustMCV(t, nil, "-e", "-i", ref, "-d", p, "--no-gpu")
			if strings.Contains(out, "mismatch") || !strings.Contains(out, "Cache size validated") {
				t.Fatalf("mcv -e did not validate the size:\n%s", out)
			}
			sameTree(t, orig, p)
			replayHit(t, c.k, p, orig)

			check := must(t, nil, filepath.Join(mcvBin, "mcvcheck"), "-i", ref, "-d", t.TempDir(), "-m", t.TempDir(),
				"-backend", c.gpu.Backend, "-arch", c.gpu.Arch, "-warp", fmt.Sprint(c.gpu.WarpSize), "-ptx", fmt.Sprint(c.ptx))
			for _, want := range []string{"type: " + string(c.k), "summary check: ok", "manifest check: ok"} {
				if !strings.Contains(check, want) {
					t.Errorf("mcvcheck: no %q in\n%s", want, check)
				}
			}
		})
	}
}

// TestMCVToCargohold: images mcv -c builds (from the caches as they are,
// their build hosts' absolute paths inside) are pushed to a real registry;
// cargohold inspect tells their kind and fit, cargohold -e extracts them
// into another root, and the framework's replay HITs there (after
// cargohold's rewrites of group files and vllm_compile_cache.py); a GPU
// that fits no target gets nothing.
func TestMCVToCargohold(t *testing.T) {
	needMCV(t)
	reg := registry.Start(t)
	for _, c := range kases(t) {
		t.Run(c.name, func(t *testing.T) {
			ref := reg.Ref("mcv/" + c.name + ":v1")
			registry.Skopeo(t, "copy", "--dest-tls-verify=false", mcvImage(t, c), "docker://"+ref)
			ch := filepath.Join(bin, "cargohold")
			info := must(t, nil, ch, "inspect", "-i", ref, "--gpu", c.gpu.String())
			if !strings.Contains(info, "kind:    "+string(c.k)) || strings.Contains(info, "will not hit") {
				t.Fatalf("inspect:\n%s", info)
			}
			root := filepath.Join(t.TempDir(), "root")
			out := must(t, nil, ch, "-e", "-i", ref, "-d", root, "--gpu", c.gpu.String())
			if !strings.Contains(out, "installed ") || strings.Contains(out, "installed 0,") {
				t.Fatalf("cargohold -e:\n%s", out)
			}
			replayHit(t, c.k, root, c.src)

			other := gpu.Target{Backend: "cuda", Arch: "90", WarpSize: 32}
			out = must(t, nil, ch, "-e", "-i", ref, "-d", filepath.Join(t.TempDir(), "none"), "--gpu", other.String())
			if !strings.Contains(out, "installed 0,") || !strings.Contains(out, "fits") {
				t.Fatalf("cargohold -e on a GPU that fits nothing:\n%s", out)
			}
		})
	}
}

// buildAt copies c's cache to p as if it had been built there: its
// absolute paths (group files, vllm_compile_cache.py) name p.
func buildAt(t *testing.T, c kase, p string) {
	t.Helper()
	if err := copyTree(c.src, p); err != nil {
		t.Fatal(err)
	}
	tree, err := kind.Scan(p, c.k)
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range tree.Units {
		for _, f := range u.Files {
			rw := kind.RewriteOf(c.k, u.Path, f.Name)
			if rw == kind.RewriteNone {
				continue
			}
			fp := filepath.Join(p, u.Path, f.Name)
			data, err := os.ReadFile(fp)
			if err == nil {
				data, err = rw.Apply(data, p, u.Path)
			}
			if err == nil {
				err = os.WriteFile(fp, data, 0o644)
			}
			if err != nil {
				t.Fatal(err)
			}
		}
	}
}

// mcvImages are the images mcv -c built, by case name, in an OCI layout
// (skopeo's oci:DIR:NAME): built once per test binary.
var (
	mcvOnce   sync.Once
	mcvMu     sync.Mutex
	mcvImages = map[string]string{}
	mcvWork   string
)

// mcvImage builds c's image with mcv -c (once) and returns its skopeo
// reference. mcv -c runs its buildah library without docker or buildah
// installed: stub buildah and netavark binaries (it checks they exist),
// containers.conf pointing at them, and a private vfs storage.
func mcvImage(t *testing.T, c kase) string {
	t.Helper()
	mcvOnce.Do(func() {
		d, err := os.MkdirTemp("", "cargohold-mcv-images-")
		if err != nil {
			t.Fatal(err)
		}
		mcvWork = d
	})
	mcvMu.Lock()
	defer mcvMu.Unlock()
	if ref, ok := mcvImages[c.name]; ok {
		return ref
	}
	w := mcvWork
	stub := []byte("#!/bin/sh\nexit 0\n")
	for _, f := range []string{"bin/buildah", "bin/netavark"} {
		if err := os.MkdirAll(filepath.Join(w, "bin"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(w, f), stub, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	conf := filepath.Join(w, "containers.conf")
	storage := filepath.Join(w, "storage.conf")
	os.WriteFile(conf, fmt.Appendf(nil, "[engine]\nhelper_binaries_dir = [%q]\n", filepath.Join(w, "bin")), 0o644)
	os.WriteFile(storage, fmt.Appendf(nil, "[storage]\ndriver = \"vfs\"\ngraphroot = %q\nrunroot = %q\n",
		filepath.Join(w, "graph"), filepath.Join(w, "run")), 0o644)
	env := []string{"PATH=" + filepath.Join(w, "bin") + ":" + os.Getenv("PATH"), "CONTAINERS_CONF=" + conf, "CONTAINERS_STORAGE_CONF=" + storage}
	src := filepath.Join(w, "src", c.name)
	if err := copyTree(c.src, src); err != nil {
		t.Fatal(err)
	}
	name := "quay.io/cargohold-test/" + c.name + ":v1" // a name only: never pushed there
	out := mustMCV(t, env, "-c", "-i", name, "-d", src, "--no-gpu")
	if !strings.Contains(out, "created successfully") {
		t.Fatalf("mcv -c:\n%s", out)
	}
	ref := "oci:" + filepath.Join(w, "layout") + ":" + c.name
	must(t, env, "skopeo", "copy", "containers-storage:"+name, ref)
	mcvImages[c.name] = ref
	return ref
}

// sameTree checks that got holds exactly the files of want, byte for byte.
func sameTree(t *testing.T, want, got string) {
	t.Helper()
	n := 0
	err := filepath.Walk(want, func(p string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(want, p)
		a, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		b, err := os.ReadFile(filepath.Join(got, rel))
		if err != nil {
			return err
		}
		if !bytes.Equal(a, b) {
			t.Errorf("%s differs", rel)
		}
		n++
		return nil
	})
	if err != nil || n == 0 {
		t.Fatalf("compare %s with %s: %d files, %v", want, got, n, err)
	}
	err = filepath.Walk(got, func(p string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(got, p)
		if _, err := os.Lstat(filepath.Join(want, rel)); err != nil {
			t.Errorf("%s: not in %s", rel, want)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", got, err)
	}
}

// replayHit replays the framework's HIT of every key of root, comparing
// what it reads with src.
func replayHit(t *testing.T, k kind.Kind, root, src string) {
	t.Helper()
	sum, bad, err := replay.HitAll(context.Background(), replay.Kind(k), root, src)
	for _, r := range bad {
		t.Errorf("replay %s %s: %s %s", k, r.Key, r.Outcome, r.Error)
	}
	if err != nil || !sum.OK() || sum.Hits == 0 {
		t.Fatalf("replay %s in %s: %+v, %v", k, root, sum, err)
	}
}

// mustMCV is must for MCV's binary, under a host-wide lock: MCV stages
// every build and extract in one fixed dir (its constants.MCVBuildDir,
// /tmp/.mcv), so two at once on one host (two test binaries, two
// checkouts) remove each other's files.
func mustMCV(t *testing.T, env []string, args ...string) string {
	t.Helper()
	unlock := lockMCVBuildDir(t)
	defer unlock()
	return must(t, env, filepath.Join(mcvBin, "mcv"), args...)
}

// lockMCVBuildDir takes the host-wide lock mustMCV holds.
func lockMCVBuildDir(t *testing.T) (unlock func()) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(os.TempDir(), "cargohold-mcv-build.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		t.Fatal(err)
	}
	return func() { f.Close() } // closing the only descriptor releases the lock
}
