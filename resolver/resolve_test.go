package resolver

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

func TestParseRef(t *testing.T) {
	opts := Options{Store: "/store"}
	for _, c := range []struct {
		in, layout, name, digest string
		bad                      bool
	}{
		{in: "localhost:5000/repo:tag", name: "localhost:5000/repo:tag"},
		{in: "repo", name: "index.docker.io/library/repo:latest"},
		{in: "localhost:5000/repo@sha256:" + strings.Repeat("a", 64),
			name: "localhost:5000/repo@sha256:" + strings.Repeat("a", 64), digest: "sha256:" + strings.Repeat("a", 64)},
		{in: "oci:/tmp/lay:v1", layout: "/tmp/lay", name: "v1"},
		{in: "oci:/tmp/lay", layout: "/tmp/lay"},
		{in: "oci:rel/lay:x", layout: "rel/lay", name: "x"},
		{in: "oci:/tmp/a:b/lay", layout: "/tmp/a:b/lay"},
		{in: "oci:/tmp/lay@sha256:" + strings.Repeat("b", 64), layout: "/tmp/lay", digest: "sha256:" + strings.Repeat("b", 64)},
		{in: "oci:", bad: true},
		{in: "oci::v1", bad: true},
		{in: "oci:/x@sha256:zz", bad: true},
		{in: "UPPER/case:x", bad: true},
		{in: "", bad: true},
	} {
		r, err := ParseRef(c.in, opts)
		if c.bad {
			if err == nil || !errors.Is(err, ErrInvalidRef) {
				t.Errorf("ParseRef(%q) = %+v, %v; want ErrInvalidRef", c.in, r, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseRef(%q): %v", c.in, err)
			continue
		}
		var dig string
		if r.Digest != nil {
			dig = r.Digest.String()
		}
		if r.Layout != c.layout || r.Name != c.name || dig != c.digest || r.Raw != c.in {
			t.Errorf("ParseRef(%q) = layout %q name %q digest %q", c.in, r.Layout, r.Name, dig)
		}
		if r.IsLayout() != (c.layout != "") || (r.IsLayout() == (r.Image != nil)) {
			t.Errorf("ParseRef(%q): IsLayout %v, Image %v", c.in, r.IsLayout(), r.Image)
		}
		if !r.IsLayout() && r.Store != "/store" {
			t.Errorf("ParseRef(%q): store %q", c.in, r.Store)
		}
	}
	r, err := ParseRef("127.0.0.1:5000/x:y", Options{PlainHTTP: true})
	if err != nil {
		t.Fatal(err)
	}
	if r.Image.Context().Registry.Scheme() != "http" || r.Store != DefaultStore() {
		t.Fatalf("PlainHTTP ref: scheme %s store %s", r.Image.Context().Registry.Scheme(), r.Store)
	}
}

func TestDefaultStore(t *testing.T) {
	t.Setenv("CARGOHOLD_STORE", "/explicit")
	if got := DefaultStore(); got != "/explicit" {
		t.Fatalf("DefaultStore = %q", got)
	}
	t.Setenv("CARGOHOLD_STORE", "")
	t.Setenv("XDG_DATA_HOME", "/xdg")
	if got := DefaultStore(); got != "/xdg/cargohold/oci" {
		t.Fatalf("DefaultStore = %q", got)
	}
	t.Setenv("XDG_DATA_HOME", "")
	t.Setenv("HOME", "/home/u")
	if got := DefaultStore(); got != "/home/u/.local/share/cargohold/oci" {
		t.Fatalf("DefaultStore = %q", got)
	}
}

func TestFetchRegistry(t *testing.T) {
	tr := newTestRegistry(t, nil)
	opts := testOptions(t)
	img := testImage(t, 3000, 3, map[string]string{"cache.triton.image/entry-count": "3"})
	ref := tr.host + "/cache/triton:v1"
	pushImage(t, ref, img, opts)

	res := New(opts)
	im, err := res.Fetch(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	if im.Local || im.Ref != ref || im.Digest != mustDigest(t, img) || im.Repo.Name() != tr.host+"/cache/triton" {
		t.Fatalf("image: local %v ref %q digest %v repo %v", im.Local, im.Ref, im.Digest, im.Repo)
	}
	if im.Labels["cache.triton.image/entry-count"] != "3" || len(im.Layers) != 3 || im.Config == nil || im.Manifest == nil {
		t.Fatalf("labels %v layers %d", im.Labels, len(im.Layers))
	}
	// Every layer reads right, ranged and streamed, and the repository's
	// transport is built once (one ping) for all of it.
	pings := tr.pings.Load()
	for i := range im.Layers {
		want := layerBytes(t, img, i)
		b, err := res.Blob(context.Background(), im.LayerRef(i))
		if err != nil {
			t.Fatal(err)
		}
		if err := checkReaderAt(b, want); err != nil {
			t.Fatalf("layer %d: %v", i, err)
		}
		b.Close()
		rc, err := res.Stream(context.Background(), im.LayerRef(i))
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("Stream %d: %d bytes, %v", i, len(got), err)
		}
	}
	if tr.pings.Load() != pings {
		t.Fatalf("%d more pings after Fetch; the transport should be cached", tr.pings.Load()-pings)
	}
	if _, err := res.Blob(context.Background(), im.LayerRef(3)); err == nil {
		t.Fatal("Blob of layer 3 of a 3-layer image: no error")
	}
	if _, err := res.Stream(context.Background(), im.LayerRef(-1)); err == nil {
		t.Fatal("Stream of layer -1: no error")
	}

	// By digest too.
	im2, err := res.Fetch(context.Background(), tr.host+"/cache/triton@"+im.Digest.String())
	if err != nil || im2.Digest != im.Digest {
		t.Fatalf("by digest: %v %v", im2, err)
	}
}

func TestFetchMissing(t *testing.T) {
	tr := newTestRegistry(t, nil)
	opts := testOptions(t)
	ref := tr.host + "/cache/nothing:v1"
	_, err := Fetch(context.Background(), ref, opts)
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("err = %v, want ErrNotFound", err)
	}
	if want := "not found in local store " + opts.Store + " or registry"; !strings.Contains(err.Error(), want) {
		t.Fatalf("err = %q, want it to say %q", err, want)
	}
	// A registry that cannot be reached is not "not found".
	dead := stalledServerClosed(t)
	_, err = Fetch(context.Background(), dead+"/cache/x:v1", opts)
	if err == nil || errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "not in local store") {
		t.Fatalf("unreachable registry: err = %v", err)
	}
}

// stalledServerClosed returns an address nothing listens on.
func stalledServerClosed(t *testing.T) string {
	tr := newTestRegistry(t, nil)
	tr.srv.Close()
	return tr.host
}

func TestFetchIndex(t *testing.T) {
	tr := newTestRegistry(t, nil)
	opts := testOptions(t)
	arm := testImage(t, 1000, 1, map[string]string{"arch": "arm64"})
	amd := testImage(t, 1000, 1, map[string]string{"arch": "amd64"})
	ii := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}},
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
	)
	multi := tr.host + "/cache/multi:v1"
	r, _ := name.ParseReference(multi)
	if err := remote.WriteIndex(r, ii); err != nil {
		t.Fatal(err)
	}
	im, err := Fetch(context.Background(), multi, opts)
	if err != nil {
		t.Fatal(err)
	}
	if im.Labels["arch"] != "amd64" || im.Digest != mustDigest(t, amd) {
		t.Fatalf("picked %v %v", im.Labels, im.Digest)
	}

	single := tr.host + "/cache/single:v1"
	r, _ = name.ParseReference(single)
	one := mutate.AppendManifests(empty.Index, mutate.IndexAddendum{Add: arm,
		Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}})
	if err := remote.WriteIndex(r, one); err != nil {
		t.Fatal(err)
	}
	if im, err = Fetch(context.Background(), single, opts); err != nil || im.Labels["arch"] != "arm64" {
		t.Fatalf("single-entry index: %v, %v", im, err)
	}

	none := tr.host + "/cache/none:v1"
	r, _ = name.ParseReference(none)
	two := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}},
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "s390x"}}})
	if err := remote.WriteIndex(r, two); err != nil {
		t.Fatal(err)
	}
	if _, err = Fetch(context.Background(), none, opts); err == nil || !strings.Contains(err.Error(), "linux/amd64") {
		t.Fatalf("no amd64 entry: err = %v", err)
	}
}

func TestListTagsAndPushProgress(t *testing.T) {
	tr := newTestRegistry(t, nil)
	opts := testOptions(t)
	var mu sync.Mutex
	var last v1.Update
	var updates int
	opts.Progress = func(u v1.Update) {
		mu.Lock()
		defer mu.Unlock()
		updates++
		if u.Error == nil {
			last = u
		}
	}
	img := testImage(t, 4000, 2, nil)
	for _, tag := range []string{"b", "a"} {
		if _, err := Push(context.Background(), tr.host+"/cache/tags:"+tag, img, opts); err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	if updates == 0 || last.Total == 0 || last.Complete != last.Total {
		t.Fatalf("progress: %d updates, last %+v", updates, last)
	}
	mu.Unlock()
	tags, err := ListTags(context.Background(), tr.host+"/cache/tags", opts)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(tags)
	if !slices.Equal(tags, []string{"a", "b"}) {
		t.Fatalf("tags = %v", tags)
	}
	if _, err := Push(context.Background(), "oci:/tmp/x:y", img, opts); err == nil {
		t.Fatal("Push to a layout: no error")
	}
}

func TestStreamProgress(t *testing.T) {
	tr := newTestRegistry(t, nil)
	opts := testOptions(t)
	img := testImage(t, 6000, 1, nil)
	ref := tr.host + "/cache/prog:v1"
	pushImage(t, ref, img, opts)
	var last v1.Update
	opts.Progress = func(u v1.Update) { last = u }
	res := New(opts)
	im, err := res.Fetch(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := res.Stream(context.Background(), im.LayerRef(0))
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	n, err := io.Copy(io.Discard, rc)
	if err != nil {
		t.Fatal(err)
	}
	if last.Complete != n || last.Total != im.Layers[0].Desc.Size {
		t.Fatalf("last update %+v after %d bytes", last, n)
	}
}

func TestFetchStoreFirst(t *testing.T) {
	tr := newTestRegistry(t, nil)
	opts := testOptions(t)
	ref := tr.host + "/cache/both:v1"
	inRegistry := testImage(t, 1000, 1, map[string]string{"where": "registry"})
	pushImage(t, ref, inRegistry, opts)
	local := testImage(t, 1000, 1, map[string]string{"where": "store"})
	if _, err := WriteLocal(context.Background(), opts.Store, ref, local); err != nil {
		t.Fatal(err)
	}
	m0 := tr.manifests.Load()
	im, err := Fetch(context.Background(), ref, opts)
	if err != nil {
		t.Fatal(err)
	}
	if !im.Local || im.Labels["where"] != "store" || im.Layout != opts.Store {
		t.Fatalf("local %v labels %v layout %q", im.Local, im.Labels, im.Layout)
	}
	if tr.manifests.Load() != m0 {
		t.Fatal("the registry was asked although the store has the image")
	}
}

func TestWriteLocalRoundTrip(t *testing.T) {
	ctx := context.Background()
	store := filepath.Join(t.TempDir(), "new", "oci")
	opts := testOptions(t)
	opts.Store = store
	ref := "localhost:5000/cache/triton:v1"
	old := testImage(t, 3000, 2, map[string]string{"v": "1"})
	newer := testImage(t, 3000, 2, map[string]string{"v": "2"})
	other := testImage(t, 1000, 1, map[string]string{"v": "other"})

	for _, w := range []struct {
		ref string
		img v1.Image
	}{{ref, old}, {"localhost:5000/cache/other:v1", other}, {ref, newer}} {
		d, err := WriteLocal(ctx, store, w.ref, w.img)
		if err != nil {
			t.Fatal(err)
		}
		if d != mustDigest(t, w.img) {
			t.Fatalf("WriteLocal digest %v", d)
		}
	}
	idx, err := readIndex(store)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, m := range idx.Manifests {
		names = append(names, m.Annotations[RefNameAnnotation])
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"localhost:5000/cache/other:v1", ref}) {
		t.Fatalf("index names %v; want one entry per ref", names)
	}

	// No registry runs at localhost:5000: these come from the store.
	res := New(opts)
	im, err := res.Fetch(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	if !im.Local || im.Labels["v"] != "2" || im.Digest != mustDigest(t, newer) {
		t.Fatalf("fetched local %v labels %v", im.Local, im.Labels)
	}
	// The reference is normalised: a written-out form finds it too.
	if im2, err := Fetch(ctx, "localhost:5000/cache/other:v1", opts); err != nil || im2.Labels["v"] != "other" {
		t.Fatalf("other: %v %v", im2, err)
	}
	if im3, err := Fetch(ctx, "localhost:5000/cache/triton@"+im.Digest.String(), opts); err != nil || im3.Digest != im.Digest {
		t.Fatalf("by digest in store: %v %v", im3, err)
	}

	for i := range im.Layers {
		want := layerBytes(t, newer, i)
		b, err := res.Blob(ctx, im.LayerRef(i))
		if err != nil {
			t.Fatal(err)
		}
		fb := b.(*FileBlob)
		if err := checkReaderAt(b, want); err != nil {
			t.Fatalf("FileBlob %d: %v", i, err)
		}
		if fb.Counters().Requests() == 0 || fb.Counters().Bytes() == 0 {
			t.Fatal("FileBlob counters not counting")
		}
		b.Close()
		rc, err := res.Stream(ctx, im.LayerRef(i))
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("Stream %d: %v", i, err)
		}
	}

	// A corrupted blob file fails the stream's digest check at the end.
	d := im.Layers[0].Desc.Digest
	p := filepath.Join(store, "blobs", d.Algorithm, d.Hex)
	data, _ := os.ReadFile(p)
	data[len(data)/2] ^= 0xff
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	rc, err := res.Stream(ctx, im.LayerRef(0))
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.ReadAll(rc)
	rc.Close()
	if !errors.Is(err, ErrDigest) {
		t.Fatalf("corrupt blob: err = %v, want ErrDigest", err)
	}
	// A truncated one is refused when opened for ranged reads.
	if err := os.WriteFile(p, data[:10], 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := res.Blob(ctx, im.LayerRef(0)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("truncated blob: err = %v, want ErrCorrupt", err)
	}
}

func TestLayoutRef(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	opts := testOptions(t)
	v1img := testImage(t, 1000, 1, map[string]string{"v": "1"})
	v2img := testImage(t, 1000, 1, map[string]string{"v": "2"})

	if _, err := Fetch(ctx, "oci:"+filepath.Join(dir, "absent"), opts); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing layout: err = %v", err)
	}
	if _, err := Save(ctx, "oci:"+dir+":v1", v1img, opts); err != nil {
		t.Fatal(err)
	}
	// The only image, by name, by digest.
	for _, ref := range []string{"oci:" + dir, "oci:" + dir + ":v1", "oci:" + dir + "@" + mustDigest(t, v1img).String()} {
		res := New(opts)
		im, err := res.Fetch(ctx, ref)
		if err != nil {
			t.Fatalf("%s: %v", ref, err)
		}
		if !im.Local || im.Layout != dir || im.Labels["v"] != "1" {
			t.Fatalf("%s: local %v layout %q labels %v", ref, im.Local, im.Layout, im.Labels)
		}
	}
	if _, err := Save(ctx, "oci:"+dir+":v2", v2img, opts); err != nil {
		t.Fatal(err)
	}
	_, err := Fetch(ctx, "oci:"+dir, opts)
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "v1, v2") {
		t.Fatalf("two images, no name: err = %v; want not found listing v1, v2", err)
	}
	if _, err := Save(ctx, "oci:"+dir, v2img, opts); err != nil { // as "latest"
		t.Fatal(err)
	}
	if im, err := Fetch(ctx, "oci:"+dir, opts); err != nil || im.Labels["v"] != "2" {
		t.Fatalf("latest: %v %v", im, err)
	}
	if _, err := Fetch(ctx, "oci:"+dir+":v3", opts); !errors.Is(err, ErrNotFound) {
		t.Fatalf("v3: err = %v", err)
	}
	// The layout stays readable by ggcr's own reader.
	if _, err := os.Stat(filepath.Join(dir, "oci-layout")); err != nil {
		t.Fatal(err)
	}
}

func TestWriteLocalConcurrent(t *testing.T) {
	store := t.TempDir()
	var wg sync.WaitGroup
	errs := make(chan error, 6)
	for i := range 6 {
		img := testImage(t, 500, 1, nil)
		ref := "localhost:5000/c/x:" + string(rune('a'+i%3))
		wg.Go(func() {
			_, err := WriteLocal(context.Background(), store, ref, img)
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	idx, err := readIndex(store)
	if err != nil {
		t.Fatal(err)
	}
	if len(idx.Manifests) != 3 {
		t.Fatalf("index has %d entries, want 3 (one per ref)", len(idx.Manifests))
	}
}
