package image

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/stream"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"cargohold/gpu"
	"cargohold/layer"
	"cargohold/resolver"
	"cargohold/test/cachetest"
	"cargohold/triton"
)

const cudaKey = "5W7KJQDTJCL4UGPMKKCS7TEEPZKSWOY4774SZQ6674FWSXG5MNXQ"

func targets(t *testing.T, s string) []gpu.Target {
	t.Helper()
	ts, err := gpu.ParseList(s)
	if err != nil {
		t.Fatal(err)
	}
	return ts
}

// save stores img in a fresh local store and fetches it back as the
// extract path sees it.
// testResolver streams the layers of images in local layouts.
var testResolver = resolver.New(resolver.Options{})

func save(t *testing.T, img v1.Image) *resolver.Image {
	t.Helper()
	ctx := context.Background()
	opts := resolver.Options{Store: t.TempDir()}
	if _, err := resolver.WriteLocal(ctx, opts.Store, "test/cache:latest", img); err != nil {
		t.Fatal(err)
	}
	im, err := resolver.Fetch(ctx, "test/cache:latest", opts)
	if err != nil {
		t.Fatal(err)
	}
	return im
}

func TestPackReproducible(t *testing.T) {
	ctx := context.Background()
	src := cachetest.Testdata(t, "vector-add-cache")
	// A copy with other mtimes must give the same digest.
	cp := t.TempDir()
	copyTree(t, src, cp)
	var digests []v1.Hash
	for _, dir := range []string{src, cp, src} {
		p, err := Pack(ctx, dir, "vector-add", t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		d, err := p.Image.Digest()
		if err != nil {
			t.Fatal(err)
		}
		digests = append(digests, d)
		p.Close()
	}
	if digests[0] != digests[1] || digests[0] != digests[2] {
		t.Fatalf("digests differ: %v", digests)
	}
}

func TestPackRefusesEmpty(t *testing.T) {
	_, err := Pack(context.Background(), t.TempDir(), "x", t.TempDir())
	if !errors.Is(err, triton.ErrNoEntries) {
		t.Fatalf("empty dir: %v", err)
	}
	d := t.TempDir()
	os.WriteFile(filepath.Join(d, "README"), []byte("not a cache"), 0o644)
	if _, err := Pack(context.Background(), d, "x", t.TempDir()); !errors.Is(err, triton.ErrNoEntries) {
		t.Fatalf("dir without entries: %v", err)
	}
}

func TestPackUnpackRoundTrip(t *testing.T) {
	for _, c := range []struct{ cache, gpu string }{
		{"vector-add-cache", "cuda:75:32"},
		{"vector-add-cache-rocm", "hip:gfx90a:64"},
	} {
		t.Run(c.cache, func(t *testing.T) {
			ctx := context.Background()
			src := cachetest.Testdata(t, c.cache)
			p, err := Pack(ctx, src, c.cache, t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			im := save(t, p.Image)
			out := filepath.Join(t.TempDir(), "cache")
			res, err := Unpack(ctx, testResolver, im, out, targets(t, c.gpu), nil)
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Installed) != 1 || res.Reason != "" {
				t.Fatalf("result %+v", res)
			}
			cachetest.Compare(t, src, out)
			// Nothing left behind but the KEY dir.
			if des, _ := os.ReadDir(out); len(des) != 1 {
				t.Fatalf("left in dir: %v", des)
			}
			// A second extract keeps the local dir and installs nothing.
			res, err = Unpack(ctx, testResolver, im, out, targets(t, c.gpu), nil)
			if err != nil || len(res.Kept) != 1 || len(res.Installed) != 0 {
				t.Fatalf("second unpack: %+v %v", res, err)
			}
			// A GPU that does not fit extracts nothing and says why.
			none := filepath.Join(t.TempDir(), "none")
			res, err = Unpack(ctx, testResolver, im, none, targets(t, "cuda:90:32"), nil)
			if err != nil || len(res.Installed) != 0 || !strings.Contains(res.Reason, "fits") {
				t.Fatalf("unfit: %+v %v", res, err)
			}
			if _, err := os.Stat(none); !os.IsNotExist(err) {
				t.Fatalf("unfit extract created %s", none)
			}
		})
	}
}

// cacheTar is the vector-add cache as a generic tool would tar it: the
// original absolute group paths, default owners and times.
func cacheTar(t *testing.T, src string) []cachetest.Entry {
	t.Helper()
	es := []cachetest.Entry{{Name: "io.triton.cache/", Type: tar.TypeDir, Mode: 0o755}}
	des, _ := os.ReadDir(src)
	for _, kd := range des {
		es = append(es, cachetest.Entry{Name: "io.triton.cache/" + kd.Name() + "/", Type: tar.TypeDir, Mode: 0o755})
		files, _ := os.ReadDir(filepath.Join(src, kd.Name()))
		for _, f := range files {
			b, _ := os.ReadFile(filepath.Join(src, kd.Name(), f.Name()))
			es = append(es, cachetest.Entry{Name: "io.triton.cache/" + kd.Name() + "/" + f.Name(), Body: b})
		}
	}
	return es
}

func imageOf(t *testing.T, manifest types.MediaType, labels map[string]string, layers ...v1.Layer) v1.Image {
	t.Helper()
	img := mutate.MediaType(empty.Image, manifest)
	img, err := mutate.ConfigFile(img, &v1.ConfigFile{OS: "linux", Architecture: "amd64", Config: v1.Config{Labels: labels}})
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		if img, err = mutate.AppendLayers(img, l); err != nil {
			t.Fatal(err)
		}
	}
	return img
}

// Images built by other tools: the plain way (tar + gzip, no labels),
// Docker media types, an uncompressed OCI tar (buildah), several layers.
func TestUnpackForeignImages(t *testing.T) {
	src := cachetest.Testdata(t, "vector-add-cache")
	plain := cachetest.Tar(t, cacheTar(t, src)...)
	junk := cachetest.Tar(t, []cachetest.Entry{{Name: "etc/passwd", Body: []byte("root:x:0:0")}}...)
	// An earlier layer with a wrong version of a file that the later layer fixes.
	stale := cachetest.Tar(t, []cachetest.Entry{{Name: "io.triton.cache/" + cudaKey + "/add_kernel.ptx", Body: []byte("stale")}}...)
	cases := map[string]v1.Image{
		"plain gzip, no labels": imageOf(t, types.OCIManifestSchema1, nil, static.NewLayer(cachetest.Gzip(t, plain), types.OCILayer)),
		"docker gzip":           imageOf(t, types.DockerManifestSchema2, nil, static.NewLayer(cachetest.Gzip(t, plain), types.DockerLayer)),
		"uncompressed OCI tar":  imageOf(t, types.OCIManifestSchema1, nil, static.NewLayer(plain, types.OCIUncompressedLayer)),
		"several layers": imageOf(t, types.OCIManifestSchema1, nil,
			static.NewLayer(cachetest.Gzip(t, junk), types.OCILayer), static.NewLayer(cachetest.Gzip(t, stale), types.OCILayer), static.NewLayer(cachetest.Gzip(t, plain), types.OCILayer)),
	}
	for name, img := range cases {
		t.Run(name, func(t *testing.T) {
			im := save(t, img)
			out := t.TempDir()
			res, err := Unpack(context.Background(), testResolver, im, out, targets(t, "cuda:75:32"), nil)
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Installed) != 1 || gpu.FormatList(res.Targets) != "cuda:75:32" {
				t.Fatalf("result %+v", res)
			}
			cachetest.Compare(t, src, out)
			if _, err := os.Stat(filepath.Join(out, "etc")); err == nil {
				t.Fatal("entry outside io.triton.cache/ was extracted")
			}
		})
	}
}

// Hostile layers fail with a clear error and write nothing, inside or
// outside the dir.
func TestUnpackHostile(t *testing.T) {
	key := "io.triton.cache/" + cudaKey + "/"
	cases := map[string][]cachetest.Entry{
		"dotdot":          {{Name: key + "../../../escape", Body: []byte("x")}},
		"absolute":        {{Name: "/io.triton.cache/" + cudaKey + "/x", Body: []byte("x")}},
		"symlink out":     {{Name: key + "link", Type: tar.TypeSymlink, Link: "/etc/passwd"}},
		"hardlink out":    {{Name: key + "hard", Type: tar.TypeLink, Link: "etc/passwd"}},
		"device":          {{Name: key + "dev", Type: tar.TypeChar}},
		"fifo":            {{Name: key + "fifo", Type: tar.TypeFifo}},
		"symlinked key":   {{Name: "io.triton.cache/" + cudaKey, Type: tar.TypeSymlink, Link: "/tmp"}},
		"dotdot in later": {{Name: key + "ok", Body: []byte("fine")}, {Name: "io.triton.cache/../x", Body: []byte("x")}},
	}
	for name, es := range cases {
		t.Run(name, func(t *testing.T) {
			root := t.TempDir()
			out := filepath.Join(root, "cache")
			im := save(t, imageOf(t, types.OCIManifestSchema1, nil, static.NewLayer(cachetest.Gzip(t, cachetest.Tar(t, es...)), types.OCILayer)))
			_, err := Unpack(context.Background(), testResolver, im, out, targets(t, "cuda:75:32"), nil)
			var ue *layer.UnsafeEntryError
			if !errors.As(err, &ue) {
				t.Fatalf("want UnsafeEntryError, got %v", err)
			}
			var left []string
			filepath.Walk(root, func(p string, info os.FileInfo, err error) error {
				if p != root && p != out {
					left = append(left, p)
				}
				return nil
			})
			if len(left) != 0 {
				t.Fatalf("hostile layer left %v", left)
			}
		})
	}
}

// The kernel JSON decides fit, not a lying label.
func TestUnpackLabelsMalformed(t *testing.T) {
	src := cachetest.Testdata(t, "vector-add-cache")
	plain := cachetest.Tar(t, cacheTar(t, src)...)
	img := imageOf(t, types.OCIManifestSchema1, map[string]string{triton.LabelSummary: "{broken"}, static.NewLayer(cachetest.Gzip(t, plain), types.OCILayer))
	res, err := Unpack(context.Background(), testResolver, save(t, img), t.TempDir(), targets(t, "cuda:75:32"), nil)
	if err != nil || len(res.Installed) != 1 {
		t.Fatalf("%+v %v", res, err)
	}
}

func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.Walk(src, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if info.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		in, err := os.Open(p)
		if err != nil {
			return err
		}
		defer in.Close()
		out, err := os.Create(filepath.Join(dst, rel))
		if err != nil {
			return err
		}
		_, err = io.Copy(out, in)
		out.Close()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A layer blob whose bytes no longer match its digest installs nothing: the
// digest is checked when the download ends, before anything is unpacked.
func TestUnpackCorruptBlob(t *testing.T) {
	src := cachetest.Testdata(t, "vector-add-cache")
	img := imageOf(t, types.OCIManifestSchema1, nil, static.NewLayer(cachetest.Tar(t, cacheTar(t, src)...), types.OCIUncompressedLayer))
	store := t.TempDir()
	if _, err := resolver.WriteLocal(context.Background(), store, "test/cache:latest", img); err != nil {
		t.Fatal(err)
	}
	ls, _ := img.Layers()
	d, _ := ls[0].Digest()
	p := filepath.Join(store, "blobs", "sha256", d.Hex)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(b, []byte(".version")) // inside the PTX file's body
	if i < 0 {
		t.Fatal("no PTX body in the layer")
	}
	b[i] = 'X'
	os.Chmod(p, 0o644)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	im, err := resolver.Fetch(context.Background(), "test/cache:latest", resolver.Options{Store: store})
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	if _, err := Unpack(context.Background(), testResolver, im, out, targets(t, "cuda:75:32"), nil); !errors.Is(err, resolver.ErrDigest) {
		t.Fatalf("want a digest error, got %v", err)
	}
	if des, _ := os.ReadDir(out); len(des) != 0 {
		t.Fatalf("corrupt layer installed %v", des)
	}
}

// TestPrepareBuildsWhileWriting: the image of Prepare is built while it is
// written, to a layout and then pushed (built again), with Pack's digest
// and the eStargz annotations; its digests are unknown before.
func TestPrepareBuildsWhileWriting(t *testing.T) {
	ctx := context.Background()
	src := cachetest.Testdata(t, "vector-add-cache")
	packed, err := Pack(ctx, src, "v", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer packed.Close()
	want, err := packed.Image.Digest()
	if err != nil {
		t.Fatal(err)
	}
	wantLayer, err := packed.Built()
	if err != nil {
		t.Fatal(err)
	}

	p, err := Prepare(ctx, src, "v")
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if _, err := p.Built(); !errors.Is(err, stream.ErrNotComputed) {
		t.Fatalf("Built before writing: %v", err)
	}
	if _, err := p.Image.Digest(); !errors.Is(err, stream.ErrNotComputed) {
		t.Fatalf("digest before writing: %v", err)
	}
	got, err := resolver.Save(ctx, "oci:"+t.TempDir()+":v", p.Image, resolver.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatalf("saved as %s, Pack gives %s", got, want)
	}
	if b, err := p.Built(); err != nil || b != wantLayer {
		t.Fatalf("Built %+v %v, want %+v", b, err, wantLayer)
	}
	m, err := p.Image.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	if a := m.Layers[0].Annotations; a[layer.AnnotationTOCDigest] != wantLayer.TOCDigest.String() ||
		a[layer.AnnotationUncompressedSize] != fmt.Sprint(wantLayer.UncompressedSize) {
		t.Fatalf("layer annotations %v", a)
	}

	srv := httptest.NewServer(ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	ref := strings.TrimPrefix(srv.URL, "http://") + "/cache:v"
	if got, err = resolver.Push(ctx, ref, p.Image, resolver.Options{PlainHTTP: true}); err != nil || got != want {
		t.Fatalf("pushed as %s (%v), want %s", got, err, want)
	}
	im, err := resolver.Fetch(ctx, ref, resolver.Options{PlainHTTP: true})
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "cache")
	r := resolver.New(resolver.Options{PlainHTTP: true})
	if _, err := Unpack(ctx, r, im, out, targets(t, "cuda:75:32"), nil); err != nil {
		t.Fatal(err)
	}
	cachetest.Compare(t, src, out)
}
