package e2e

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"cargohold/test/cachetest"
	"cargohold/test/proxy"
	"cargohold/test/registry"
	"cargohold/test/replay"
)

// Units of the shared real data (../shared/testdata/vllm).
const (
	binaryHash   = "edf531ca35"
	unpackedHash = "d4ec7c2a7d"
	fxUnit       = "fxgraph/r4/fr4t73hg7nisksrnalktc6oq7w4kf5xjy7couij4xnicybdtk65e"
)

// copyTree copies src's contents into dst (made).
func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	if err := os.MkdirAll(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-r", src+"/.", dst).CombinedOutput(); err != nil {
		t.Fatalf("copy %s: %v: %s", src, err, out)
	}
}

// pushKind packs root (its kind detected; targets from gpu where no
// kernel JSON says) and pushes it to the real registry; it returns the
// reference through a counting proxy and the layer's size.
func pushKind(t *testing.T, reg *registry.Registry, name, root, gpu string) (*proxy.Proxy, string, int64) {
	t.Helper()
	p := proxy.New(reg.URL)
	t.Cleanup(func() { p.Close() })
	env := []string{"CARGOHOLD_STORE=" + t.TempDir(), "CARGOHOLD_GPU=" + gpu}
	must(t, env, "cargohold", "-c", "-i", reg.Addr+"/kinds/"+name+":v1", "-d", root, "--push")
	return p, p.Addr + "/kinds/" + name + ":v1", layerSize(t, reg.Addr+"/kinds/"+name+":v1")
}

// blobBytes is what the proxy sent of blobs since its last Reset.
func blobBytes(p *proxy.Proxy) int64 {
	var n int64
	for _, r := range p.Requests() {
		if r.IsBlob() {
			n += r.Bytes
		}
	}
	return n
}

// TestMountVLLM: a vLLM root with two hash dirs (the binary format and
// the unpacked one, each a real cache) pushed to a real registry and
// mounted with --cache vllm as $VLLM_CACHE_ROOT: each hash replays as
// vLLM's hit (the binary one only if vllm_compile_cache.py names the
// artifacts under the mount), and costs its own span, not the layer; a
// compile of a hash the image lacks lands in the dir under the mount,
// visible at once.
func TestMountVLLM(t *testing.T) {
	reg := registry.Start(t)
	root := filepath.Join(t.TempDir(), "vllm")
	copyTree(t, cachetest.VLLMTestdata(t, "llama-binary-cache"), root)
	copyTree(t, filepath.Join(cachetest.VLLMTestdata(t, "unpacked-vllm-cache"), "torch_compile_cache", unpackedHash),
		filepath.Join(root, "torch_compile_cache", unpackedHash))
	p, ref, layer := pushKind(t, reg, "vllm", root, "hip:gfx90a:64")

	m := startFS(t, "", "", "-i", ref, "--plain-http", "--cache", "vllm", "--gpu", "hip:gfx90a:64", "--prefetch", "none")
	p.Reset()
	if got := readNames(t, filepath.Join(m.mnt, "torch_compile_cache")); strings.Join(got, " ") != unpackedHash+" "+binaryHash {
		t.Fatalf("torch_compile_cache lists %v", got)
	}
	if n := blobGets(p); n != 0 {
		t.Errorf("listing the hash dirs made %d blob GETs", n)
	}
	for _, hash := range []string{unpackedHash, binaryHash} {
		p.Reset()
		res, err := replay.VLLMHit(m.mnt, hash, "", root)
		if err != nil || res.Outcome != replay.OutcomeHit {
			t.Fatalf("vLLM hit of %s on the mount: %+v, %v", hash, res, err)
		}
		got := blobBytes(p)
		span := treeSize(t, filepath.Join(root, "torch_compile_cache", hash))
		t.Logf("vllm: hash dir %s (%d files, %d bytes on disk): %d blob GETs, %d bytes fetched (layer %d bytes)", hash, res.Files, span, blobGets(p), got, layer)
		if hash == unpackedHash && got*4 > layer {
			t.Errorf("hash dir %s cost %d bytes of a %d-byte layer: not lazy", hash, got, layer)
		}
	}
	cf, err := os.ReadFile(filepath.Join(m.mnt, "torch_compile_cache", binaryHash, "rank_0_0", "backbone", "vllm_compile_cache.py"))
	if err != nil || !strings.Contains(string(cf), "'"+m.mnt+"/torch_compile_cache/"+binaryHash+"/rank_0_0/backbone/artifact_compile_range_") {
		t.Errorf("vllm_compile_cache.py does not name the mount (%v):\n%.400s", err, cf)
	}

	// A compile of a hash the image lacks: written through, seen at once.
	from := filepath.Join(t.TempDir(), "from")
	copyTree(t, cachetest.VLLMTestdata(t, "unpacked-vllm-cache"), from)
	const newHash = "0a1b2c3d4e"
	if err := os.Rename(filepath.Join(from, "torch_compile_cache", unpackedHash), filepath.Join(from, "torch_compile_cache", newHash)); err != nil {
		t.Fatal(err)
	}
	if res, err := replay.VLLMMiss(m.mnt, newHash, "", from, false); err != nil || res.Outcome != replay.OutcomeMiss {
		t.Fatalf("vLLM compile through the mount: %+v, %v", res, err)
	}
	if res, err := replay.VLLMHit(m.mnt, newHash, "", from); err != nil || res.Outcome != replay.OutcomeHit {
		t.Fatalf("vLLM hit of its own compile: %+v, %v", res, err)
	}
	m.stop(t)
	if _, err := os.Stat(filepath.Join(m.mnt, "torch_compile_cache", newHash, "rank_0_0", "vllm_compile_cache.py")); err != nil {
		t.Errorf("the compile is not in the dir under the mount: %v", err)
	}
}

// TestMountInductor: an Inductor root pushed and mounted with --cache
// inductor as TORCHINDUCTOR_CACHE_DIR: one entry costs its span, every
// unit replays as Inductor's hit, FileLock's flock works on locks/ (never
// asked of the images), an entry saved with write_atomic (.<pid>.<tid>.tmp
// renamed over) lands in the dir under the mount.
func TestMountInductor(t *testing.T) {
	reg := registry.Start(t)
	src := filepath.Join(cachetest.VLLMTestdata(t, "unpacked-vllm-cache"), "torch_compile_cache", unpackedHash, "rank_0_0", "inductor_cache")
	p, ref, layer := pushKind(t, reg, "inductor", src, "hip:gfx90a:64")

	m := startFS(t, "", "", "-i", ref, "--plain-http", "--cache", "inductor", "--gpu", "hip:gfx90a:64", "--prefetch", "none")
	p.Reset()
	res, err := replay.InductorHit(m.mnt, fxUnit, src)
	if err != nil || res.Outcome != replay.OutcomeHit {
		t.Fatalf("Inductor hit of %s: %+v, %v", fxUnit, res, err)
	}
	got := blobBytes(p)
	t.Logf("inductor: entry %s (%d bytes on disk): %d blob GETs, %d bytes fetched (layer %d bytes)", fxUnit, treeSize(t, filepath.Join(src, fxUnit)), blobGets(p), got, layer)
	if got*4 > layer {
		t.Errorf("one entry cost %d bytes of a %d-byte layer: not lazy", got, layer)
	}
	if sum, bad, err := replay.HitAll(context.Background(), replay.KindInductor, m.mnt, src); err != nil || len(bad) > 0 || sum.Hits == 0 {
		t.Fatalf("Inductor hit of every unit: %+v, %v, %+v", sum, err, bad)
	}

	p.Reset()
	if res, err := replay.InductorMiss(m.mnt, "locks/"+strings.Repeat("0f", 32)+".lock", ""); err != nil {
		t.Fatalf("FileLock through the mount: %+v, %v", res, err)
	}
	if n := len(p.Requests()); n != 0 {
		t.Errorf("a lock made %d registry requests", n)
	}

	from := t.TempDir()
	const newUnit = "fxgraph/zz/fzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz"
	copyTree(t, filepath.Join(src, fxUnit), filepath.Join(from, newUnit))
	if res, err := replay.InductorMiss(m.mnt, newUnit, from); err != nil || res.Outcome != replay.OutcomeMiss {
		t.Fatalf("Inductor save through the mount: %+v, %v", res, err)
	}
	m.stop(t)
	des, err := os.ReadDir(filepath.Join(m.mnt, newUnit))
	if err != nil || len(des) == 0 {
		t.Fatalf("the saved entry is not in the dir under the mount: %v", err)
	}
	for _, de := range des {
		if strings.HasSuffix(de.Name(), ".tmp") {
			t.Errorf("tmp file %s left behind", de.Name())
		}
	}
}

// TestMountKindFitRefusal: an Inductor image whose targets (gfx90a) fit no
// local GPU, and a vLLM image on an Inductor mount, serve nothing; the
// status says why for each.
func TestMountKindFitRefusal(t *testing.T) {
	reg := registry.Start(t)
	src := filepath.Join(cachetest.VLLMTestdata(t, "unpacked-vllm-cache"), "torch_compile_cache", unpackedHash, "rank_0_0", "inductor_cache")
	p, ref, _ := pushKind(t, reg, "inductor", src, "hip:gfx90a:64")
	_, vref, _ := pushKind(t, reg, "vllm", cachetest.VLLMTestdata(t, "unpacked-vllm-cache"), "hip:gfx90a:64")

	m := startFS(t, "", "", "-i", ref, "-i", vref, "--plain-http", "--cache", "inductor", "--gpu", "cuda:90:32", "--prefetch", "none")
	p.Reset()
	if got := readNames(t, m.mnt); len(got) != 0 {
		t.Errorf("the mount shows %v from images that do not fit", got)
	}
	if _, err := replay.InductorHit(m.mnt, fxUnit, src); !errors.Is(err, replay.ErrNotFound) {
		t.Errorf("hit on a GPU the image does not fit: want a miss, got %v", err)
	}
	if n := p.Count(func(r proxy.Req) bool { return r.Range != "" }); n != 0 {
		t.Errorf("%d ranged blob reads from an image that fits no local GPU", n)
	}
	s := m.statusAfter(t)
	if why := s.NotServed[ref]; !strings.Contains(why, "fits the local GPU") {
		t.Errorf("status says of %s: %q, want why it is not served (%+v)", ref, why, s.NotServed)
	}
	if why := s.NotServed[vref]; !strings.Contains(why, "a vllm cache") {
		t.Errorf("status says of %s: %q, want that it is another kind", vref, why)
	}
	if s.Kind != "inductor" {
		t.Errorf("status cache %q", s.Kind)
	}
}

// readNames lists a dir through the mount.
func readNames(t *testing.T, dir string) []string {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("readdir %s: %v", dir, err)
	}
	var out []string
	for _, de := range des {
		out = append(out, de.Name())
	}
	return out
}

// treeSize sums the regular files' sizes under dir.
func treeSize(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			fi, err := d.Info()
			if err != nil {
				return err
			}
			n += fi.Size()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}
