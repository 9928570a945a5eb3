package catalog_test

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"cargohold/catalog"
	"cargohold/resolver"
	"cargohold/test/proxy"
	"cargohold/triton"
	"cargohold/triton/gen"
)

// ixPushThree pushes cache:a80 (cuda:80), cache:b90 (cuda:90) and
// cache:c90a (hip:gfx90a), all generated from one seed: the same KEYs, each
// with a kernel JSON for its own target (b90 has two more kernels).
type ixThreeTargets struct {
	dirA, dirB, dirC string
	keysA, keysB     []string
	onlyB            []string
	launcherA        string
	digestA          string
}

func ixPushThree(t *testing.T, f *ixRegistry) ixThreeTargets {
	t.Helper()
	var tt ixThreeTargets
	var esA, esB []triton.Entry
	tt.dirA, esA = ixGen(t, gen.Options{Kernels: 6, Launchers: 1, Seed: 1, Targets: ixTargets(t, "cuda:80:32")})
	tt.dirB, esB = ixGen(t, gen.Options{Kernels: 8, Launchers: 1, Seed: 1, Targets: ixTargets(t, "cuda:90:32")})
	tt.dirC, _ = ixGen(t, gen.Options{Kernels: 6, Launchers: 1, Seed: 1, Targets: ixTargets(t, "hip:gfx90a:64")})
	tt.keysA, tt.keysB = ixKeys(esA), ixKeys(esB)
	for _, e := range esA {
		if e.Kind == triton.KindLauncher {
			tt.launcherA = e.Key
		}
	}
	for _, k := range tt.keysB {
		if !slices.Contains(tt.keysA, k) {
			tt.onlyB = append(tt.onlyB, k)
		}
	}
	// The generator draws a dir's hash from (seed, index) alone: a80's
	// six kernels (and its launcher, b90's seventh kernel) are in b90.
	if shared := len(tt.keysB) - len(tt.onlyB); shared != len(tt.keysA) || len(tt.onlyB) == 0 {
		t.Fatalf("generator: a80 and b90 share %d of a80's %d KEYs; b90 has %d more", shared, len(tt.keysA), len(tt.onlyB))
	}
	tt.digestA = f.push(t, "cache:a80", ixPack(t, tt.dirA)).String()
	f.push(t, "cache:b90", ixPack(t, tt.dirB))
	f.push(t, "cache:c90a", ixPack(t, tt.dirC))
	return tt
}

// TestIndexRepositoryTargets: a repository with images for three targets
// and overlapping KEYs; with override cuda:80:32 only the arch-80 image's
// KEYs are indexed, and a second refresh of unchanged tags costs the tags
// list and one manifest GET per tag.
func TestIndexRepositoryTargets(t *testing.T) {
	f := newIxRegistry(t)
	tt := ixPushThree(t, f)
	e := newIxEnv(t, "", ixOptions(t), []string{f.ref("cache:*")}, "cuda:80:32")
	ixRefresh(t, e.ix)

	if got := e.ix.Keys(); !slices.Equal(got, tt.keysA) {
		t.Fatalf("Keys() = %d KEYs, want a80's %d:\n%v\n%v", len(got), len(tt.keysA), got, tt.keysA)
	}
	for _, k := range tt.keysA {
		ls := e.ix.Lookup(k)
		if len(ls) != 1 || !strings.Contains(ls[0].Image, "/cache@sha256:") {
			t.Fatalf("Lookup(%s) = %+v, want one location in cache", k, ls)
		}
		if k == tt.launcherA {
			if ls[0].Kernel != nil {
				t.Fatalf("launcher %s has kernel target %v", k, ls[0].Kernel)
			}
		} else if ls[0].Kernel == nil || ls[0].Kernel.String() != "cuda:80:32" {
			t.Fatalf("kernel %s: target %v, want cuda:80:32", k, ls[0].Kernel)
		}
	}
	for _, k := range tt.onlyB {
		if e.ix.Has(k) {
			t.Fatalf("b90-only KEY %s indexed with override cuda:80:32", k)
		}
	}
	infos := e.ix.Images()
	if len(infos) != 3 {
		t.Fatalf("Images() = %+v, want 3", infos)
	}
	for _, in := range infos {
		if fits := strings.HasSuffix(in.Ref, ":a80"); in.Fits != fits {
			t.Fatalf("image %s: Fits %v", in.Ref, in.Fits)
		}
	}
	// The KEY is served from a80, with a80's kernel JSON.
	ixEntryFiles(t, e, tt.keysA[0], tt.dirA)

	f.p.Reset()
	ixRefresh(t, e.ix)
	manifests := f.p.Count(func(r proxy.Req) bool { return r.IsManifest() })
	blobs := f.p.Count(func(r proxy.Req) bool { return r.IsBlob() })
	if all := f.p.Count(nil); manifests != 3 || blobs != 0 || all != 4 {
		t.Fatalf("unchanged refresh: %d requests (%d manifest, %d blob), want 4 (tags list + 3 manifests)\n%+v",
			all, manifests, blobs, f.p.Requests())
	}
	if got := e.ix.Keys(); !slices.Equal(got, tt.keysA) {
		t.Fatalf("after refresh Keys() = %v", got)
	}

	// A digest ref names its image: once known, a refresh asks nothing.
	e = newIxEnv(t, "", ixOptions(t), []string{f.ref("cache@" + tt.digestA)}, "cuda:80:32")
	ixRefresh(t, e.ix)
	if got := e.ix.Keys(); !slices.Equal(got, tt.keysA) {
		t.Fatalf("digest ref: Keys() = %v", got)
	}
	f.p.Reset()
	ixRefresh(t, e.ix)
	if n := f.p.Count(nil); n != 0 {
		t.Fatalf("refresh of a known digest ref: %d requests", n)
	}
}

// TestIndexPriority: user order first; within a repository newest config
// first, then ref descending.
func TestIndexPriority(t *testing.T) {
	f := newIxRegistry(t)
	tt := ixPushThree(t, f)
	// Same content as a80, but newer: z-old sorts first by ref, a-new by age.
	imgA := ixPack(t, tt.dirA)
	f.push(t, "prio:z-old", ixWithCreated(t, imgA, time.Unix(1e9, 0)))
	f.push(t, "prio:a-new", ixWithCreated(t, imgA, time.Unix(2e9, 0)))
	f.push(t, "prio:m-same", ixWithLabels(t, ixWithCreated(t, imgA, time.Unix(2e9, 0)), func(l map[string]string) { l["x"] = "m" }))

	key := tt.keysA[0]
	e := newIxEnv(t, "", ixOptions(t), []string{f.ref("prio:*")}, "cuda:80:32")
	ixRefresh(t, e.ix)
	got := e.ix.Lookup(key)
	var order []time.Time
	for _, l := range got {
		order = append(order, l.Created)
	}
	if len(got) != 3 || !order[0].Equal(time.Unix(2e9, 0)) || !order[2].Equal(time.Unix(1e9, 0)) {
		t.Fatalf("Lookup = %+v, want the two newer images first", got)
	}
	infos := e.ix.Images()
	if infos[0].Ref != f.ref("prio:m-same") || infos[1].Ref != f.ref("prio:a-new") || infos[2].Ref != f.ref("prio:z-old") {
		t.Fatalf("image order %s, %s, %s; want m-same, a-new (same age, ref descending), z-old", infos[0].Ref, infos[1].Ref, infos[2].Ref)
	}

	// The user's order beats age: z-old named first comes first. Its
	// image also appears in prio:* but counts once, at its best priority.
	e = newIxEnv(t, "", ixOptions(t), []string{f.ref("prio:z-old"), f.ref("cache:*"), f.ref("prio:*")}, "cuda:80:32,cuda:90:32")
	ixRefresh(t, e.ix)
	got = e.ix.Lookup(key)
	if len(got) != 5 || got[0].Source != 0 || !got[0].Created.Equal(time.Unix(1e9, 0)) {
		t.Fatalf("Lookup = %+v, want 5 locations, z-old first", got)
	}
	// cache:b90 before cache:a80 (same age, ref descending).
	if got[1].Source != 1 || got[1].Kernel.String() != "cuda:90:32" || got[2].Kernel.String() != "cuda:80:32" {
		t.Fatalf("Lookup = %+v, want b90 then a80 from source 1", got)
	}
	if got[3].Source != 2 || got[4].Source != 2 {
		t.Fatalf("Lookup = %+v, want the rest from source 2", got)
	}
	// z-old is first and fits.
	files, err := e.ix.Entry(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	if err := ixSameContent(e.st, files, tt.dirA+"/"+key); err != nil {
		t.Fatalf("z-old has a80's content: %v", err)
	}
}

// TestIndexTagMoved: a tag moved to another image is picked up on refresh.
func TestIndexTagMoved(t *testing.T) {
	f := newIxRegistry(t)
	tt := ixPushThree(t, f)
	f.push(t, "moving:latest", ixPack(t, tt.dirA))
	e := newIxEnv(t, "", ixOptions(t), []string{f.ref("moving:latest")}, "cuda:90:32,cuda:80:32")
	ixRefresh(t, e.ix)
	if got := e.ix.Keys(); !slices.Equal(got, tt.keysA) {
		t.Fatalf("before the move: %v", got)
	}
	f.push(t, "moving:latest", ixPack(t, tt.dirB))
	ixRefresh(t, e.ix)
	if got := e.ix.Keys(); !slices.Equal(got, tt.keysB) {
		t.Fatalf("after the move: %v, want b90's %v", got, tt.keysB)
	}
	l := e.ix.Lookup(tt.onlyB[0])
	if len(l) != 1 || l[0].Kernel.String() != "cuda:90:32" {
		t.Fatalf("Lookup after move = %+v", l)
	}
	ixEntryFiles(t, e, tt.keysA[0], tt.dirB)
}

// TestIndexRestartOffline: a restart loads the persisted index without any
// request and answers lookups; a KEY fetched before is served from the
// store, also without a request.
func TestIndexRestartOffline(t *testing.T) {
	f := newIxRegistry(t)
	tt := ixPushThree(t, f)
	state := t.TempDir()
	e := newIxEnv(t, state, ixOptions(t), []string{f.ref("cache:*")}, "cuda:80:32")
	ixRefresh(t, e.ix)
	ixEntryFiles(t, e, tt.keysA[1], tt.dirA)
	before := e.ix.Lookup(tt.keysA[1])
	e.close()

	f.p.Reset()
	e2 := newIxEnv(t, state, ixOptions(t), []string{f.ref("cache:*")}, "cuda:80:32")
	select {
	case <-e2.ix.Ready():
		t.Fatal("ready before Load")
	default:
	}
	if err := e2.ix.Load(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-e2.ix.Ready():
	default:
		t.Fatal("not ready after Load")
	}
	if got := e2.ix.Keys(); !slices.Equal(got, tt.keysA) {
		t.Fatalf("loaded Keys() = %v", got)
	}
	after := e2.ix.Lookup(tt.keysA[1])
	if len(after) != 1 || after[0].Image != before[0].Image || after[0].Layer.Desc.Digest != before[0].Layer.Desc.Digest ||
		*after[0].Kernel != *before[0].Kernel {
		t.Fatalf("loaded Lookup = %+v, was %+v", after, before)
	}
	ixEntryFiles(t, e2, tt.keysA[1], tt.dirA)
	if n := f.p.Count(nil); n != 0 {
		t.Fatalf("restart made %d requests: %+v", n, f.p.Requests())
	}

	// Sources are matched by how they are written, not by position.
	ix2 := ixMustIndex(t, e2, catalog.Config{Sources: []string{f.ref("cache:c90a"), f.ref("cache:*")},
		Targets: ixTargets(t, "cuda:80:32"), StateDir: state})
	if err := ix2.Load(); err != nil {
		t.Fatal(err)
	}
	if l := ix2.Lookup(tt.keysA[1]); len(l) != 1 || l[0].Source != 1 {
		t.Fatalf("reordered sources: Lookup = %+v, want source 1", l)
	}
	ix2 = ixMustIndex(t, e2, catalog.Config{Sources: []string{f.ref("cache:c90a")},
		Targets: ixTargets(t, "cuda:80:32"), StateDir: state})
	if err := ix2.Load(); err != nil || len(ix2.Keys()) != 0 {
		t.Fatalf("source no longer configured: Load = %v, %d KEYs", err, len(ix2.Keys()))
	}
	if n := f.p.Count(nil); n != 0 {
		t.Fatalf("loads made %d requests", n)
	}

	// A restart with other targets does not use the file.
	ix3 := ixMustIndex(t, e2, catalog.Config{Sources: []string{f.ref("cache:*")}, Targets: ixTargets(t, "cuda:90:32"), StateDir: state})
	if err := ix3.Load(); !errors.Is(err, catalog.ErrStaleState) {
		t.Fatalf("Load for other targets: %v, want ErrStaleState", err)
	}
}

func ixMustIndex(t *testing.T, e *ixEnv, cfg catalog.Config) *catalog.Catalog {
	t.Helper()
	ix, err := catalog.New(e.r, e.eng, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return ix
}

// TestIndexBadLabels: malformed labels index every KEY and leave the fit to
// Entry; a label that lies about the target loses to the kernel JSON; both
// fall back to the next image.
func TestIndexBadLabels(t *testing.T) {
	f := newIxRegistry(t)
	tt := ixPushThree(t, f)
	imgB := ixPack(t, tt.dirB) // cuda:90 kernels
	f.push(t, "bad:malformed", ixWithLabels(t, imgB, func(l map[string]string) {
		l[triton.LabelMetadata] = `[{"hash": "abc", "backend": `
	}))
	f.push(t, "bad:unlabelled", ixWithLabels(t, imgB, func(l map[string]string) {
		for k := range l {
			delete(l, k)
		}
	}))
	f.push(t, "bad:lies", ixWithLabels(t, imgB, func(l map[string]string) {
		for _, name := range []string{triton.LabelMetadata, triton.LabelSummary} {
			l[name] = strings.ReplaceAll(l[name], `"arch":"90"`, `"arch":"80"`)
		}
	}))
	for _, src := range []string{"bad:malformed", "bad:unlabelled", "bad:lies"} {
		t.Run(src, func(t *testing.T) {
			e := newIxEnv(t, "", ixOptions(t), []string{f.ref(src), f.ref("cache:a80")}, "cuda:80:32")
			ixRefresh(t, e.ix)
			st := e.ix.Stats()
			// Every KEY of the bad image is indexed: its labels do not
			// rule anything out (or wrongly admit all).
			for _, k := range tt.keysB {
				if !e.ix.Has(k) {
					t.Fatalf("KEY %s of %s not indexed", k, src)
				}
			}
			switch src {
			case "bad:malformed":
				if st.LabelErrors != 1 || e.ix.Images()[0].LabelError == "" {
					t.Fatalf("stats %+v, images %+v: want one label error", st, e.ix.Images())
				}
			case "bad:unlabelled":
				if st.Unlabelled != 1 {
					t.Fatalf("stats %+v: want one unlabelled image", st)
				}
			case "bad:lies":
				if l := e.ix.Lookup(tt.onlyB[0]); l[0].Kernel == nil || l[0].Kernel.String() != "cuda:80:32" {
					t.Fatalf("lying label: Lookup = %+v", l)
				}
			}
			// A shared KEY: the bad image comes first, its kernel JSON
			// says cuda:90, so a80's copy is served.
			shared := tt.keysA[0]
			if ls := e.ix.Lookup(shared); len(ls) != 2 || ls[0].Source != 0 {
				t.Fatalf("Lookup(%s) = %+v", shared, ls)
			}
			ixEntryFiles(t, e, shared, tt.dirA)
			// A KEY only the bad image has: no location fits.
			_, err := e.ix.Entry(context.Background(), tt.onlyB[0])
			if !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("Entry(b90-only KEY) = %v, want ErrNotExist", err)
			}
			st = e.ix.Stats()
			skipped := st.Misfits
			if src == "bad:lies" {
				skipped = st.LabelLies
				if st.Misfits != 0 {
					t.Fatalf("stats %+v: a lie counted as a misfit", st)
				}
			} else if st.LabelLies != 0 {
				t.Fatalf("stats %+v: a misfit counted as a lie", st)
			}
			if skipped != 2 || st.EntryHits != 1 || st.EntryMisses != 1 || st.EntryFallbacks != 1 {
				t.Fatalf("stats %+v: want 2 skipped kernels, 1 hit, 1 miss, 1 fallback", st)
			}
		})
	}
}

// TestIndexUnreachable: a repository that cannot be reached is reported;
// the other sources are indexed; a source that worked before keeps its last
// good images, and Entry falls back past them.
func TestIndexUnreachable(t *testing.T) {
	f := newIxRegistry(t)
	tt := ixPushThree(t, f)
	down := proxy.New(f.reg.URL)
	t.Cleanup(func() { down.Close() })
	downSrc := down.Addr + "/cache:*"
	sources := []string{downSrc, f.ref("cache:b90")}

	// Never reachable: nothing of it indexed, the error reported.
	if err := down.SetDown(true); err != nil {
		t.Fatal(err)
	}
	e := newIxEnv(t, "", ixOptions(t), sources, "cuda:80:32,cuda:90:32")
	err := e.ix.Refresh(context.Background())
	var se *catalog.SourceError
	if !errors.As(err, &se) || se.Source != downSrc {
		t.Fatalf("Refresh = %v, want a SourceError for %s", err, downSrc)
	}
	if errs := e.ix.Errors(); len(errs) != 1 || errs[downSrc] == nil {
		t.Fatalf("Errors() = %v", errs)
	}
	if got := e.ix.Keys(); !slices.Equal(got, tt.keysB) {
		t.Fatalf("Keys() = %v, want b90's only", got)
	}
	select {
	case <-e.ix.Ready():
	default:
		t.Fatal("not ready after a refresh with a failed source")
	}

	// Reachable once, then down: its images are kept.
	if err := down.SetDown(false); err != nil {
		t.Fatal(err)
	}
	e = newIxEnv(t, "", ixOptions(t), sources, "cuda:80:32,cuda:90:32")
	ixRefresh(t, e.ix)
	if len(e.ix.Errors()) != 0 {
		t.Fatalf("Errors() = %v", e.ix.Errors())
	}
	shared := tt.keysA[0]
	if got := ixImages(e.ix, shared); len(got) != 3 || !strings.HasPrefix(got[0], down.Addr) {
		t.Fatalf("Lookup(%s) images = %v, want 3, the down proxy's first", shared, got)
	}
	if err := down.SetDown(true); err != nil {
		t.Fatal(err)
	}
	if err := e.ix.Refresh(context.Background()); !errors.As(err, &se) {
		t.Fatalf("Refresh = %v, want a SourceError", err)
	}
	if got := ixImages(e.ix, shared); len(got) != 3 || !strings.HasPrefix(got[0], down.Addr) {
		t.Fatalf("after failure: Lookup(%s) images = %v, want last good kept", shared, got)
	}
	// Entry: the kept images cannot be fetched; b90 through the good
	// proxy serves the KEY.
	ixEntryFiles(t, e, shared, tt.dirB)
	if st := e.ix.Stats(); st.EntryFallbacks != 2 || st.SourceErrs != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// TestIndexLayoutSources: oci:DIR indexes every image of a layout,
// oci:DIR:REF one, and a plain ref is found in the local store; none of
// them needs the network. Later layers win.
func TestIndexLayoutSources(t *testing.T) {
	dirA, esA := ixGen(t, gen.Options{Kernels: 3, Launchers: 1, Seed: 7})
	dirB, esB := ixGen(t, gen.Options{Kernels: 5, Launchers: 1, Seed: 8})
	layout := t.TempDir()
	ctx := context.Background()
	opts := ixOptions(t)
	for ref, dir := range map[string]string{"oci:" + layout + ":a": dirA, "oci:" + layout + ":b": dirB, "localhost:5999/x:y": dirB} {
		if _, err := resolver.Save(ctx, ref, ixPack(t, dir), opts); err != nil {
			t.Fatal(err)
		}
	}
	all := append(ixKeys(esA), ixKeys(esB)...)
	slices.Sort(all)
	for _, c := range []struct {
		src  string
		want []string
	}{
		{"oci:" + layout, all},
		{"oci:" + layout + ":a", ixKeys(esA)},
		{"localhost:5999/x:y", ixKeys(esB)},
	} {
		e := newIxEnv(t, "", opts, []string{c.src}, "cuda:80:32")
		ixRefresh(t, e.ix)
		if got := e.ix.Keys(); !slices.Equal(got, c.want) {
			t.Fatalf("%s: Keys() = %v, want %v", c.src, got, c.want)
		}
		l := e.ix.Lookup(c.want[0])
		if !strings.HasPrefix(l[0].Image, "oci:") || l[0].Layer.Layout == "" {
			t.Fatalf("%s: Lookup = %+v", c.src, l)
		}
		want := dirA
		if slices.Contains(ixKeys(esB), c.want[0]) {
			want = dirB
		}
		ixEntryFiles(t, e, c.want[0], want)
	}
}

// TestEntryNotReady: Entry waits for the index within its ctx and then
// says so with the ctx error, not ErrNotExist: the images could not answer
// yet, which is not the same as "no image has it".
func TestEntryNotReady(t *testing.T) {
	e := newIxEnv(t, "", ixOptions(t), []string{"oci:" + t.TempDir()}, "cuda:80:32")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	_, err := e.ix.Entry(ctx, strings.Repeat("A", 52))
	if errors.Is(err, fs.ErrNotExist) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Entry before ready = %v", err)
	}
	if e.ix.Lookup(strings.Repeat("A", 52)) != nil {
		t.Fatal("Lookup before ready found something")
	}
	// A source that fails still makes the index ready, empty.
	if err := e.ix.Refresh(context.Background()); err == nil {
		t.Fatal("Refresh of an empty dir as a layout: no error")
	}
	_, err = e.ix.Entry(context.Background(), strings.Repeat("A", 52))
	if !errors.Is(err, fs.ErrNotExist) || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Entry after ready = %v", err)
	}
}

func TestNewIndexBadSource(t *testing.T) {
	e := newIxEnv(t, "", ixOptions(t), []string{"oci:" + t.TempDir()}, "cuda:80:32")
	for _, src := range []string{"UPPER/case:*", "bad ref", "oci:"} {
		_, err := catalog.New(e.r, e.eng, catalog.Config{Sources: []string{src}})
		if !errors.Is(err, resolver.ErrInvalidRef) {
			t.Fatalf("source %q: %v, want ErrInvalidRef", src, err)
		}
	}
	if _, err := catalog.New(e.r, e.eng, catalog.Config{}); err == nil {
		t.Fatal("no sources accepted")
	}
}

// TestIndexRun: Run refreshes at once, then on its interval until ctx
// ends; a negative interval refreshes once.
func TestIndexRun(t *testing.T) {
	dir, es := ixGen(t, gen.Options{Kernels: 2, Launchers: 1, Seed: 3})
	layout := t.TempDir()
	if _, err := resolver.Save(context.Background(), "oci:"+layout+":a", ixPack(t, dir), ixOptions(t)); err != nil {
		t.Fatal(err)
	}
	e := newIxEnv(t, "", ixOptions(t), []string{"oci:" + layout}, "cuda:80:32")
	once := ixMustIndex(t, e, catalog.Config{Sources: []string{"oci:" + layout}, Targets: ixTargets(t, "cuda:80:32"), Refresh: -1})
	once.Run(context.Background()) // returns
	if st := once.Stats(); st.Refreshes != 1 || st.Keys != len(es) {
		t.Fatalf("Run with Refresh -1: %+v", st)
	}

	ix := ixMustIndex(t, e, catalog.Config{Sources: []string{"oci:" + layout}, Targets: ixTargets(t, "cuda:80:32"), Refresh: time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { ix.Run(ctx); close(done) }()
	<-ix.Ready()
	deadline := time.Now().Add(10 * time.Second)
	for ix.Stats().Refreshes < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("Run: %d refreshes in 10s at a 1ms interval", ix.Stats().Refreshes)
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	<-done
}

// TestRunRetriesFailedSource: a source that fails (registry down at start)
// is tried again with backoff, not at the next refresh an hour later, and
// indexed once it answers.
func TestRunRetriesFailedSource(t *testing.T) {
	f := newIxRegistry(t)
	dir, es := ixGen(t, gen.Options{Kernels: 2, Seed: 9})
	f.push(t, "cache:v1", ixPack(t, dir))
	if err := f.p.SetDown(true); err != nil {
		t.Fatal(err)
	}
	e := newIxEnv(t, "", ixOptions(t), []string{f.ref("cache:v1")}, "cuda:80:32")
	ix := ixMustIndex(t, e, catalog.Config{Sources: []string{f.ref("cache:v1")}, Targets: ixTargets(t, "cuda:80:32"),
		Refresh: time.Hour, Retry: 20 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { ix.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	<-ix.Ready()
	if len(ix.Errors()) != 1 {
		t.Fatalf("first refresh with the registry down: errors %v", ix.Errors())
	}
	if err := f.p.SetDown(false); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for ix.Stats().Keys != len(es) {
		if time.Now().After(deadline) {
			t.Fatalf("source not indexed 15s after it came back (refresh interval 1h): %+v, errors %v", ix.Stats(), ix.Errors())
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Healthy now: back to the refresh interval, no more retries.
	n := ix.Stats().Refreshes
	time.Sleep(300 * time.Millisecond)
	if got := ix.Stats().Refreshes; got != n {
		t.Fatalf("%d more refreshes while every source answers (interval 1h)", got-n)
	}
}

// TestBuiltHook: Config.Built runs after a refresh that read new images,
// not after one that found nothing new.
func TestBuiltHook(t *testing.T) {
	dir, _ := ixGen(t, gen.Options{Kernels: 2, Seed: 4})
	layout := t.TempDir()
	if _, err := resolver.Save(context.Background(), "oci:"+layout+":a", ixPack(t, dir), ixOptions(t)); err != nil {
		t.Fatal(err)
	}
	e := newIxEnv(t, "", ixOptions(t), []string{"oci:" + layout}, "cuda:80:32")
	calls := 0
	ix := ixMustIndex(t, e, catalog.Config{Sources: []string{"oci:" + layout}, Targets: ixTargets(t, "cuda:80:32"),
		Built: func() { calls++ }})
	ixRefresh(t, ix)
	if calls != 1 {
		t.Fatalf("first refresh: Built called %d times, want 1", calls)
	}
	ixRefresh(t, ix)
	if calls != 1 {
		t.Fatalf("refresh with nothing new: Built called %d times in all, want 1", calls)
	}
}

// TestRefreshedHook: Config.Refreshed runs after every refresh, new images
// or not, and after Load.
func TestRefreshedHook(t *testing.T) {
	dir, _ := ixGen(t, gen.Options{Kernels: 2, Seed: 5})
	layout := t.TempDir()
	if _, err := resolver.Save(context.Background(), "oci:"+layout+":a", ixPack(t, dir), ixOptions(t)); err != nil {
		t.Fatal(err)
	}
	e := newIxEnv(t, "", ixOptions(t), []string{"oci:" + layout}, "cuda:80:32")
	calls := 0
	cfg := catalog.Config{Sources: []string{"oci:" + layout}, Targets: ixTargets(t, "cuda:80:32"), StateDir: e.state,
		Refreshed: func() { calls++ }}
	ix := ixMustIndex(t, e, cfg)
	ixRefresh(t, ix)
	ixRefresh(t, ix)
	if calls != 2 {
		t.Fatalf("two refreshes: Refreshed called %d times, want 2", calls)
	}
	again := ixMustIndex(t, e, cfg)
	if err := again.Load(); err != nil {
		t.Fatal(err)
	}
	if calls != 3 {
		t.Fatalf("after Load: Refreshed called %d times in all, want 3", calls)
	}
}

// TestQuietRefresh: a refresh that finds the same images keeps the KEY map
// and does not rewrite the state file; a new image does both.
func TestQuietRefresh(t *testing.T) {
	dir, es := ixGen(t, gen.Options{Kernels: 3, Seed: 6})
	layout := t.TempDir()
	if _, err := resolver.Save(context.Background(), "oci:"+layout+":a", ixPack(t, dir), ixOptions(t)); err != nil {
		t.Fatal(err)
	}
	e := newIxEnv(t, "", ixOptions(t), []string{"oci:" + layout}, "cuda:80:32")
	ixRefresh(t, e.ix)
	file := filepath.Join(e.state, catalog.StateFile)
	before, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	ixRefresh(t, e.ix)
	if after, err := os.Stat(file); err != nil || !after.ModTime().Equal(before.ModTime()) || !os.SameFile(before, after) {
		t.Fatalf("quiet refresh rewrote %s (%v)", file, err)
	}
	if st := e.ix.Stats(); st.Refreshes != 2 || st.Keys != len(es) || len(ixImages(e.ix, es[0].Key)) != 1 {
		t.Fatalf("after a quiet refresh: %+v", st)
	}

	dir2, es2 := ixGen(t, gen.Options{Kernels: 2, Seed: 7})
	if _, err := resolver.Save(context.Background(), "oci:"+layout+":b", ixPack(t, dir2), ixOptions(t)); err != nil {
		t.Fatal(err)
	}
	ixRefresh(t, e.ix)
	if after, err := os.Stat(file); err != nil || os.SameFile(before, after) {
		t.Fatalf("refresh with a new image did not rewrite %s (%v)", file, err)
	}
	if st := e.ix.Stats(); st.Keys != len(es)+len(es2) {
		t.Fatalf("after a new image: %d KEYs, want %d", st.Keys, len(es)+len(es2))
	}
}
