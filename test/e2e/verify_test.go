package e2e

import (
	"bytes"
	"errors"
	"math/rand"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"cargohold/layer"
	"cargohold/test/cachetest"
	"cargohold/test/proxy"
	"cargohold/test/registry"
)

// TestMountTarCorruptionNeverServed: an uncompressed tar layer (as buildah
// builds them) whose KEY dir holds a 3 MiB binary, larger than a block of
// the old block-read index: a byte flipped in the range a lookup reads is
// never served (the dir misses and Triton compiles), and after a remount
// through a clean registry, on the same state dir, the right bytes are.
func TestMountTarCorruptionNeverServed(t *testing.T) {
	src := t.TempDir()
	if err := os.CopyFS(filepath.Join(src, vectorAddKey), os.DirFS(filepath.Join(cachetest.Testdata(t, "vector-add-cache"), vectorAddKey))); err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 3<<20)
	rand.New(rand.NewSource(1)).Read(big)
	if err := os.WriteFile(filepath.Join(src, vectorAddKey, "big.bin"), big, 0o644); err != nil {
		t.Fatal(err)
	}
	tarBytes := cachetest.KeyDirTar(t, src, []string{vectorAddKey})
	idx, err := layer.ScanTar(bytes.NewReader(tarBytes), int64(len(tarBytes)))
	if err != nil {
		t.Fatal(err)
	}
	d := idx.Dirs[vectorAddKey]
	var victim layer.File
	for _, f := range d.Files {
		if f.Name == "big.bin" {
			victim = f
		}
	}
	img, err := mutate.Append(mutate.MediaType(empty.Image, types.OCIManifestSchema1), mutate.Addendum{
		Layer: static.NewLayer(tarBytes, types.OCIUncompressedLayer), MediaType: types.OCIUncompressedLayer})
	if err != nil {
		t.Fatal(err)
	}
	reg := registry.Start(t)
	push(t, reg.Addr+"/ml/tar:v1", img)
	p := proxy.New(reg.URL)
	t.Cleanup(func() { p.Close() })
	ref := p.Addr + "/ml/tar:v1"

	mnt := filepath.Join(t.TempDir(), "mnt")
	state := t.TempDir()
	args := []string{"-i", ref, "--plain-http", "--gpu", "cuda:75:32", "--prefetch", "none"}
	m := startFS(t, mnt, state, args...)
	// The lookup's range starts at the dir's span.
	p.FlipByte("/blobs/", victim.Offset-d.Offset+victim.Size/2)
	p.Reset()
	got, err := os.ReadFile(filepath.Join(mnt, vectorAddKey, "big.bin"))
	switch {
	case err == nil && !bytes.Equal(got, big):
		t.Errorf("a tar body with a flipped byte was served (%d bytes)", len(got))
	case err == nil:
		t.Errorf("served big.bin intact: the flip did not reach the lookup, the test tested nothing")
	case !errors.Is(err, os.ErrNotExist):
		t.Errorf("read of a corrupt KEY dir: %v, want a miss (ENOENT)", err)
	}
	p.Settle(t)
	if n := p.Count(func(r proxy.Req) bool { return r.Flipped }); n != 1 {
		t.Errorf("%d responses flipped, want 1", n)
	}
	m.stop(t)

	if err := p.ClearFaults(); err != nil {
		t.Fatal(err)
	}
	m2 := startFS(t, mnt, state, args...)
	got, err = os.ReadFile(filepath.Join(m2.mnt, vectorAddKey, "big.bin"))
	if err != nil || !bytes.Equal(got, big) {
		t.Fatalf("after a remount through a clean registry: %d bytes, %v; want the right %d", len(got), err, len(big))
	}
}
