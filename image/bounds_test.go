package image

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"syscall"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"cargohold/test/cachetest"
)

// TestUnpackLeavesOutBadKeys: KEY dirs whose own content is bad (a group
// file that is not JSON, a kernel JSON filed under another KEY) are left
// out and listed with their cause; every other KEY dir is installed and
// listed; the error says some failed.
func TestUnpackLeavesOutBadKeys(t *testing.T) {
	src := cachetest.Testdata(t, "vector-add-cache")
	es := cacheTar(t, src)
	kernelJSON, err := os.ReadFile(filepath.Join(src, cudaKey, "add_kernel.json"))
	if err != nil {
		t.Fatal(err)
	}
	// Launcher-like KEYs (no kernel JSON): installed along with the kernel.
	const (
		goodKey     = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
		badGroupKey = "BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB"
		wrongKey    = "CCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC"
		lastKey     = "ZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZ"
	)
	p := "io.triton.cache/"
	es = append(es,
		cachetest.Entry{Name: p + goodKey + "/cuda_utils.so", Body: []byte("\x7fELF good")},
		cachetest.Entry{Name: p + badGroupKey + "/__grp__k.json", Body: []byte("{not json")},
		cachetest.Entry{Name: p + badGroupKey + "/k.cubin", Body: []byte("cubin")},
		cachetest.Entry{Name: p + wrongKey + "/add_kernel.json", Body: kernelJSON},
		cachetest.Entry{Name: p + lastKey + "/cuda_utils.so", Body: []byte("\x7fELF last")})
	for _, media := range []types.MediaType{types.OCIUncompressedLayer, types.OCILayer} {
		t.Run(string(media), func(t *testing.T) {
			body := cachetest.Tar(t, es...)
			if media == types.OCILayer {
				body = cachetest.Gzip(t, body)
			}
			im := save(t, imageOf(t, types.OCIManifestSchema1, nil, static.NewLayer(body, media)))
			out := t.TempDir()
			res, err := Unpack(context.Background(), testResolver, im, out, targets(t, "cuda:75:32"), nil)
			if !errors.Is(err, ErrSomeFailed) || res == nil {
				t.Fatalf("unpack with two bad KEY dirs: %+v, %v; want ErrSomeFailed with a result", res, err)
			}
			want := []string{cudaKey, goodKey, lastKey}
			sort.Strings(want)
			if !slices.Equal(res.Installed, want) {
				t.Errorf("installed %v, want %v", res.Installed, want)
			}
			var failed []string
			for _, f := range res.Failed {
				failed = append(failed, f.Key)
				t.Logf("left out %s: %v", f.Key, f.Err)
			}
			if !slices.Equal(failed, []string{badGroupKey, wrongKey}) {
				t.Errorf("failed %v, want %v", failed, []string{badGroupKey, wrongKey})
			}
			var got []string
			des, _ := os.ReadDir(out)
			for _, de := range des {
				got = append(got, de.Name())
			}
			if !slices.Equal(got, want) {
				t.Errorf("dir holds %v, want exactly what was listed as installed %v", got, want)
			}
		})
	}
}

// TestUnpackBoundedByFreeSpace: an image whose files (64 MiB of zeros in
// a small compressed layer) would not fit the free space of the target's
// file system is refused before they are written, leaving nothing: an
// eStargz layer (sizes from its TOC, checked for the whole layer), a gzip
// layer (sizes from its tar headers, file by file), and an uncompressed
// tar whose blob alone does not fit.
func TestUnpackBoundedByFreeSpace(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "mnt")
	os.Mkdir(dir, 0o755)
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=16m"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("mount tmpfs: %v", err)
		}
		t.Skipf("SKIPPED: cannot mount a tmpfs (%v); needs root", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, 0) })
	src := cachetest.Testdata(t, "vector-add-cache")
	withZeros := t.TempDir()
	copyTree(t, src, withZeros)
	if err := os.WriteFile(filepath.Join(withZeros, cudaKey, "zeros.bin"), make([]byte, 64<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	packed, err := Pack(context.Background(), withZeros, "zeros", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer packed.Close()
	plain := cachetest.Tar(t, append(cacheTar(t, src), cachetest.Entry{Name: "io.triton.cache/" + cudaKey + "/zeros.bin", Body: make([]byte, 64<<20)})...)
	cases := map[string]v1.Image{
		"estargz": packed.Image,
		"gzip":    imageOf(t, types.OCIManifestSchema1, nil, static.NewLayer(cachetest.Gzip(t, plain), types.OCILayer)),
		"tar":     imageOf(t, types.OCIManifestSchema1, nil, static.NewLayer(plain, types.OCIUncompressedLayer)),
	}
	for name, img := range cases {
		t.Run(name, func(t *testing.T) {
			im := save(t, img)
			out := filepath.Join(dir, "cache")
			_, err := Unpack(context.Background(), testResolver, im, out, targets(t, "cuda:75:32"), nil)
			if !errors.Is(err, ErrNoSpace) {
				t.Fatalf("unpack of 64 MiB onto 16 MiB: %v, want ErrNoSpace", err)
			}
			t.Logf("refused: %v", err)
			if des, _ := os.ReadDir(out); len(des) != 0 {
				t.Errorf("left %v", des)
			}
		})
	}
}
