package catalog_test

import (
	"bytes"
	"context"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"cargohold/catalog"
	"cargohold/fetch"
	"cargohold/gpu"
	"cargohold/image"
	"cargohold/kind"
	"cargohold/resolver"
	"cargohold/store"
	"cargohold/test/proxy"
	"cargohold/test/registry"
	"cargohold/triton"
	"cargohold/triton/gen"
)

// ixRegistry is a real registry with a counting proxy in front: images are
// pushed to the registry directly, the index reads through the proxy.
type ixRegistry struct {
	reg *registry.Registry
	p   *proxy.Proxy
}

func newIxRegistry(tb testing.TB) *ixRegistry {
	tb.Helper()
	reg := registry.Start(tb)
	p := proxy.New(reg.URL)
	tb.Cleanup(func() { p.Close() })
	return &ixRegistry{reg: reg, p: p}
}

// ref names repoTag as the index sees it: through the proxy.
func (f *ixRegistry) ref(repoTag string) string { return f.p.Addr + "/" + repoTag }

// push uploads img to the registry directly (not counted by the proxy).
func (f *ixRegistry) push(tb testing.TB, repoTag string, img v1.Image) v1.Hash {
	tb.Helper()
	h, err := resolver.Push(context.Background(), f.reg.Ref(repoTag), img, ixOptions(tb))
	if err != nil {
		tb.Fatal(err)
	}
	return h
}

func ixOptions(tb testing.TB) resolver.Options {
	return resolver.Options{
		Store:    tb.TempDir(),
		Keychain: authn.NewMultiKeychain(), // anonymous
		Timeout:  5 * time.Second,
		Backoff:  time.Millisecond,
	}
}

func ixTargets(tb testing.TB, s string) []gpu.Target {
	tb.Helper()
	ts, err := gpu.ParseList(s)
	if err != nil {
		tb.Fatal(err)
	}
	return ts
}

// ixGen writes a small generated cache and returns its dir and KEYs.
func ixGen(tb testing.TB, o gen.Options) (string, []triton.Entry) {
	tb.Helper()
	if o.Scale == 0 {
		o.Scale = 0.01
	}
	dir := filepath.Join(tb.TempDir(), "cache")
	es, err := gen.Generate(dir, o)
	if err != nil {
		tb.Fatal(err)
	}
	return dir, es
}

func ixKeys(es []triton.Entry) []string {
	var ks []string
	for _, e := range es {
		ks = append(ks, e.Key)
	}
	slices.Sort(ks)
	return ks
}

// ixPack builds the cache image of dir (removed when tb ends).
func ixPack(tb testing.TB, dir string) v1.Image {
	tb.Helper()
	p, err := image.Pack(context.Background(), dir, "test", tb.TempDir())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { p.Close() })
	return p.Image
}

// ixEditConfig returns img with its config changed by edit.
func ixEditConfig(tb testing.TB, img v1.Image, edit func(*v1.ConfigFile)) v1.Image {
	tb.Helper()
	cf, err := img.ConfigFile()
	if err != nil {
		tb.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.Config.Labels = maps.Clone(cf.Config.Labels)
	edit(cf)
	out, err := mutate.ConfigFile(img, cf)
	if err != nil {
		tb.Fatal(err)
	}
	return out
}

func ixWithCreated(tb testing.TB, img v1.Image, t time.Time) v1.Image {
	return ixEditConfig(tb, img, func(cf *v1.ConfigFile) { cf.Created = v1.Time{Time: t} })
}

func ixWithLabels(tb testing.TB, img v1.Image, edit func(map[string]string)) v1.Image {
	return ixEditConfig(tb, img, func(cf *v1.ConfigFile) { edit(cf.Config.Labels) })
}

// ixEnv is one Index with its Resolver, Engine and store, all under state.
type ixEnv struct {
	r     *resolver.Resolver
	st    *store.Store
	eng   *fetch.Engine
	ix    *catalog.Catalog
	state string
}

func newIxEnv(tb testing.TB, state string, opts resolver.Options, sources []string, ts string) *ixEnv {
	tb.Helper()
	return newIxEnvKind(tb, state, opts, kind.Triton, sources, ts)
}

// newIxEnvKind is newIxEnv for a catalog of cache kind k.
func newIxEnvKind(tb testing.TB, state string, opts resolver.Options, k kind.Kind, sources []string, ts string) *ixEnv {
	tb.Helper()
	if state == "" {
		state = tb.TempDir()
	}
	st, err := store.Open(fetch.StoreDir(state), 0)
	if err != nil {
		tb.Fatal(err)
	}
	r := resolver.New(opts)
	eng := fetch.NewEngine(r, st, state)
	ix, err := catalog.New(r, eng, catalog.Config{Sources: sources, Kind: k, Targets: ixTargets(tb, ts), StateDir: state})
	if err != nil {
		tb.Fatal(err)
	}
	e := &ixEnv{r: r, st: st, eng: eng, ix: ix, state: state}
	tb.Cleanup(e.close)
	return e
}

func (e *ixEnv) close() {
	e.eng.Close()
	e.st.Close()
}

func ixRefresh(tb testing.TB, ix *catalog.Catalog) {
	tb.Helper()
	if err := ix.Refresh(context.Background()); err != nil {
		tb.Fatal(err)
	}
}

// ixImages lists the Image of each location of key.
func ixImages(ix *catalog.Catalog, key string) []string {
	var out []string
	for _, l := range ix.Lookup(key) {
		out = append(out, l.Image)
	}
	return out
}

// ixEntryFiles calls Entry and checks that every file is stored with the
// content of want/KEY/<name>; it returns the files.
func ixEntryFiles(t *testing.T, e *ixEnv, key, want string) []fetch.KeyFile {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	files, err := e.ix.Entry(ctx, key)
	if err != nil {
		t.Fatalf("Entry(%s): %v", key, err)
	}
	if err := ixSameContent(e.st, files, filepath.Join(want, key)); err != nil {
		t.Fatalf("Entry(%s): %v", key, err)
	}
	return files
}

type ixContentError struct{ msg string }

func (e *ixContentError) Error() string { return e.msg }

// ixSameContent checks files against the regular files of dir (a unit: its
// subdirs are units of their own).
func ixSameContent(st *store.Store, files []fetch.KeyFile, dir string) error {
	all, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	des := slices.DeleteFunc(all, func(de os.DirEntry) bool { return de.IsDir() })
	if len(des) != len(files) {
		return &ixContentError{"file count differs from " + dir}
	}
	for _, f := range files {
		want, err := os.ReadFile(filepath.Join(dir, f.Name))
		if err != nil {
			return err
		}
		sf, err := st.Open(f.Digest)
		if err != nil {
			return err
		}
		got, err := io.ReadAll(sf)
		sf.Close()
		if err != nil {
			return err
		}
		if !bytes.Equal(got, want) {
			return &ixContentError{f.Name + ": content differs from " + dir}
		}
	}
	return nil
}
