package fetch_test

// External test package: these tests build images with cargohold/image,
// which imports resolver.

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"cargohold/fetch"
	"cargohold/gpu"
	"cargohold/image"
	"cargohold/layer"
	"cargohold/resolver"
	"cargohold/store"
	"cargohold/test/proxy"
	"cargohold/test/registry"
	"cargohold/triton"
	"cargohold/triton/gen"
)

// lzTmp holds what the whole test binary shares (the generated caches).
var lzTmp string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "cargohold-resolver-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	lzTmp = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// lzGenerated is a cache made once per test binary.
type lzGenerated struct {
	once sync.Once
	dir  string
	keys []string // sorted
	err  error
}

var lzCache500, lzCacheBig lzGenerated

// lzCache is a generated cache of 500 kernel dirs (small files: sizes do
// not matter where it is used).
func lzCache(t *testing.T) (string, []string) {
	t.Helper()
	lzCache500.once.Do(func() {
		lzCache500.dir = filepath.Join(lzTmp, "lzCache500")
		var es []triton.Entry
		es, lzCache500.err = gen.Generate(lzCache500.dir, gen.Options{Kernels: 500, Seed: 1, Scale: 0.25,
			Targets: []gpu.Target{{Backend: "cuda", Arch: "80", WarpSize: 32}, {Backend: "hip", Arch: "gfx90a", WarpSize: 64}}})
		for _, e := range es {
			lzCache500.keys = append(lzCache500.keys, e.Key)
		}
		sort.Strings(lzCache500.keys)
	})
	if lzCache500.err != nil {
		t.Fatal(lzCache500.err)
	}
	return lzCache500.dir, lzCache500.keys
}

// lzBigCache is 12 kernel dirs of the shared cache whose binaries are grown
// to 2-3 MiB of incompressible bytes: a layer mostly made of large bodies.
func lzBigCache(t *testing.T) (string, []string) {
	t.Helper()
	src, keys := lzCache(t)
	lzCacheBig.once.Do(func() {
		lzCacheBig.dir = filepath.Join(lzTmp, "cachebig")
		lzCacheBig.keys = append([]string(nil), keys[:12]...)
		r := rand.New(rand.NewSource(7))
		for _, k := range lzCacheBig.keys {
			if lzCacheBig.err = os.CopyFS(filepath.Join(lzCacheBig.dir, k), os.DirFS(filepath.Join(src, k))); lzCacheBig.err != nil {
				return
			}
			des, _ := os.ReadDir(filepath.Join(lzCacheBig.dir, k))
			for _, de := range des {
				if ext := filepath.Ext(de.Name()); ext != ".cubin" && ext != ".hsaco" {
					continue
				}
				pad := make([]byte, 2<<20+r.Intn(1<<20))
				r.Read(pad)
				f, err := os.OpenFile(filepath.Join(lzCacheBig.dir, k, de.Name()), os.O_WRONLY|os.O_APPEND, 0)
				if err == nil {
					_, err = f.Write(pad)
					if cerr := f.Close(); err == nil {
						err = cerr
					}
				}
				if err != nil {
					lzCacheBig.err = err
					return
				}
			}
		}
	})
	if lzCacheBig.err != nil {
		t.Fatal(lzCacheBig.err)
	}
	return lzCacheBig.dir, lzCacheBig.keys
}

// env is a real registry behind a counting, fault-injecting proxy, and a
// resolver that talks to the proxy.
type lzEnv struct {
	reg *registry.Registry
	px  *proxy.Proxy
	rt  *http.Transport
	res *resolver.Resolver
}

func newLzEnv(t *testing.T) *lzEnv {
	t.Helper()
	reg := registry.Start(t)
	px, err := proxy.Listen(reg.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { px.Close() })
	rt := http.DefaultTransport.(*http.Transport).Clone()
	rt.ResponseHeaderTimeout = 5 * time.Second
	t.Cleanup(rt.CloseIdleConnections)
	return &lzEnv{reg: reg, px: px, rt: rt, res: resolver.New(lzOptions(t, rt))}
}

func lzOptions(t *testing.T, rt http.RoundTripper) resolver.Options {
	return resolver.Options{
		Store:     t.TempDir(),
		Keychain:  authn.NewMultiKeychain(), // anonymous
		Timeout:   5 * time.Second,
		Backoff:   time.Millisecond,
		Transport: rt,
	}
}

// push stores img in the registry (not through the proxy) and returns its
// reference through the proxy.
func (e *lzEnv) push(t *testing.T, repoTag string, img v1.Image) string {
	t.Helper()
	if _, err := resolver.Push(context.Background(), e.reg.Ref(repoTag), img, resolver.Options{Keychain: authn.NewMultiKeychain()}); err != nil {
		t.Fatal(err)
	}
	return e.px.Addr + "/" + repoTag
}

// image fetches ref and returns the image and its layer i.
func (e *lzEnv) image(t *testing.T, ref string, i int) (*resolver.Image, resolver.LayerRef) {
	t.Helper()
	im, err := e.res.Fetch(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	return im, im.LayerRef(i)
}

// engine is a new Engine over st and state with a fresh Resolver (and a
// fresh transport cache) through the proxy.
func (e *lzEnv) engine(t *testing.T, st *store.Store, state string) *fetch.Engine {
	t.Helper()
	eng := fetch.NewEngine(resolver.New(lzOptions(t, e.rt)), st, state)
	t.Cleanup(func() { eng.Close() })
	return eng
}

func lzStore(t *testing.T, limit int64) *store.Store {
	t.Helper()
	st, err := store.Open(t.TempDir(), limit)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

type lzPackedImage struct {
	once sync.Once
	img  v1.Image
	err  error
}

var lzPacked, lzPackedBig lzPackedImage

// lzPackImage is the eStargz cache image of the shared cache, as cargohold -c
// builds it; built once per test binary.
func lzPackImage(t *testing.T) v1.Image {
	t.Helper()
	src, _ := lzCache(t)
	return lzPacked.get(t, src)
}

// lzPackBigImage is lzPackImage of lzBigCache: large incompressible
// files, stored by deflate as they are.
func lzPackBigImage(t *testing.T) v1.Image {
	t.Helper()
	src, _ := lzBigCache(t)
	return lzPackedBig.get(t, src)
}

func (p *lzPackedImage) get(t *testing.T, src string) v1.Image {
	t.Helper()
	p.once.Do(func() {
		// The staged layer lives in lzTmp until the binary ends.
		var packed *image.Packed
		packed, p.err = image.Pack(context.Background(), src, "test", lzTmp)
		if p.err == nil {
			p.img = packed.Image
		}
	})
	if p.err != nil {
		t.Fatal(p.err)
	}
	return p.img
}

// lzTarImage is a one-layer OCI image whose layer is the uncompressed tar b.
func lzTarImage(t *testing.T, b []byte) v1.Image {
	t.Helper()
	base := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	base = mutate.ConfigMediaType(base, types.OCIConfigJSON)
	img, err := mutate.Append(base, mutate.Addendum{Layer: static.NewLayer(b, types.OCIUncompressedLayer), MediaType: types.OCIUncompressedLayer})
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// lzGzipImage is a one-layer Docker schema 2 image whose layer is tar b
// gzipped as docker does: one gzip stream, no eStargz TOC.
func lzGzipImage(t *testing.T, b []byte) v1.Image {
	t.Helper()
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(b)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	blob := gz.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(blob)), nil },
		tarball.WithMediaType(types.DockerLayer))
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, l)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// checkFiles checks that files are dir/key of the source cache, in the
// store, byte for byte: images store files as they are on disk (group files
// too, since cargohold's images no longer rewrite them; imageForm is
// ignored).
func lzCheckFiles(t *testing.T, st *store.Store, src, key string, files []fetch.KeyFile, imageForm bool) {
	t.Helper()
	des, err := os.ReadDir(filepath.Join(src, key))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != len(des) {
		t.Fatalf("KEY %s: %d files fetched, the source has %d", key, len(files), len(des))
	}
	for i, f := range files {
		if f.Name != des[i].Name() {
			t.Fatalf("KEY %s: file %d is %q, want %q", key, i, f.Name, des[i].Name())
		}
		want, err := os.ReadFile(filepath.Join(src, key, f.Name))
		if err != nil {
			t.Fatal(err)
		}
		got := lzReadStored(t, st, f)
		if !bytes.Equal(got, want) {
			t.Errorf("%s/%s: stored content (%d bytes) differs from the source (%d bytes)", key, f.Name, len(got), len(want))
		}
		if f.Size != int64(len(want)) {
			t.Errorf("%s/%s: Size %d, want %d", key, f.Name, f.Size, len(want))
		}
	}
}

func lzReadStored(t *testing.T, st *store.Store, f fetch.KeyFile) []byte {
	t.Helper()
	sf, err := st.Open(f.Digest)
	if err != nil {
		t.Fatalf("%s: %v", f.Name, err)
	}
	defer sf.Close()
	b, err := io.ReadAll(sf)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// pick returns n keys spread over keys.
func lzPick(keys []string, n int) []string {
	var out []string
	for i := range n {
		out = append(out, keys[i*(len(keys)-1)/max(n-1, 1)])
	}
	return out
}

// blobReqs counts the proxy's logged blob requests of layer l.
func lzBlobReqs(px *proxy.Proxy, l resolver.LayerRef) int {
	return px.Count(func(r proxy.Req) bool { return r.IsBlob() && strings.Contains(r.Path, l.Desc.Digest.String()) })
}

// fetch is FetchDir with its own counters.
func lzFetch(t *testing.T, eng *fetch.Engine, l resolver.LayerRef, key string) ([]fetch.KeyFile, *resolver.Counters) {
	t.Helper()
	var c resolver.Counters
	files, err := eng.Dir(fetch.WithCounters(context.Background(), &c), l, key)
	if err != nil {
		t.Fatal(err)
	}
	return files, &c
}

func lzIndex(t *testing.T, eng *fetch.Engine, l resolver.LayerRef) (*layer.Index, *resolver.Counters) {
	t.Helper()
	var c resolver.Counters
	idx, err := eng.Index(fetch.WithCounters(context.Background(), &c), l)
	if err != nil {
		t.Fatal(err)
	}
	return idx, &c
}
