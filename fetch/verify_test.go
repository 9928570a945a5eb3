package fetch_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/stargz-snapshotter/estargz"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"cargohold/gpu"
	"cargohold/image"
	"cargohold/layer"
	"cargohold/resolver"
	"cargohold/test/cachetest"
	"cargohold/test/proxy"
)

// Every byte the engine hands out is checked against a digest that chains
// to the manifest; what cannot be checked lazily is read whole and checked
// first. These tests corrupt bytes on their way and look for them.

// lzLayerBlob is the eStargz layer blob of img.
func lzLayerBlob(t *testing.T, img v1.Image) []byte {
	t.Helper()
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	rc, err := ls[0].Compressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// lzEStargzImage is a one-layer OCI image of eStargz blob b, its descriptor
// annotated with tocDigest unless that is "".
func lzEStargzImage(t *testing.T, b []byte, tocDigest string) v1.Image {
	t.Helper()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil },
		tarball.WithMediaType(types.OCILayer))
	if err != nil {
		t.Fatal(err)
	}
	base := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	base = mutate.ConfigMediaType(base, types.OCIConfigJSON)
	add := mutate.Addendum{Layer: l, MediaType: types.OCILayer}
	if tocDigest != "" {
		add.Annotations = map[string]string{layer.AnnotationTOCDigest: tocDigest}
	}
	img, err := mutate.Append(base, add)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// largest is the largest file of d.
func largest(d *layer.Dir) layer.File {
	f := d.Files[0]
	for _, g := range d.Files {
		if g.Size > f.Size {
			f = g
		}
	}
	return f
}

// TestTarLargeBodyCorruptionNeverServed: a byte flipped inside a large tar
// body (more than a block: an index read by blocks skips it and can only
// check its size) on its way to a lookup is caught, nothing is stored or
// remembered, and through a clean registry a fresh engine on the same
// state dir serves the right bytes.
func TestTarLargeBodyCorruptionNeverServed(t *testing.T) {
	src, keys := lzBigCache(t)
	e := newLzEnv(t)
	ref := e.push(t, "legacy:tar", lzTarImage(t, cachetest.KeyDirTar(t, src, keys)))
	_, l := e.image(t, ref, 0)
	st := lzStore(t, 0)
	state := t.TempDir()
	eng := e.engine(t, st, state)
	idx, _ := lzIndex(t, eng, l)
	key := keys[3]
	d := idx.Dirs[key]
	victim := largest(d)
	if victim.Size <= layer.DefaultBlockSize {
		t.Fatalf("largest file of %s has %d bytes: no large body to test", key, victim.Size)
	}
	e.px.FlipByte("/blobs/"+l.Desc.Digest.String(), victim.Offset-d.Offset+victim.Size/2)
	e.px.Reset()
	files, err := eng.Dir(context.Background(), l, key)
	var ve *layer.VerifyError
	if !errors.As(err, &ve) || ve.File != victim.Name {
		var stored []byte
		for _, f := range files {
			if f.Name == victim.Name {
				stored = lzReadStored(t, st, f)
			}
		}
		t.Fatalf("fetch of a large body with a flipped byte: %v (stored %d bytes), want a VerifyError naming %s", err, len(stored), victim.Name)
	}
	e.px.Settle(t)
	if n := e.px.Count(func(r proxy.Req) bool { return r.Flipped }); n != 1 {
		t.Fatalf("%d responses flipped: the test tested nothing", n)
	}
	if n := st.Stats().Entries; n != 0 {
		t.Errorf("%d entries stored after a failed fetch", n)
	}
	if err := e.px.ClearFaults(); err != nil {
		t.Fatal(err)
	}
	eng2 := e.engine(t, st, state)
	files, _ = lzFetch(t, eng2, l, key)
	lzCheckFiles(t, st, src, key, files, false)
}

// TestTarIndexCorruptionNotCached: a byte flipped while a tar layer is
// indexed fails the index and leaves nothing on disk; once the registry is
// clean, a fresh engine on the same state dir indexes the layer and serves
// the KEY dir whose bytes were flipped.
func TestTarIndexCorruptionNotCached(t *testing.T) {
	src, keys := lzCache(t)
	keys = keys[:20]
	tarBytes := cachetest.KeyDirTar(t, src, keys)
	clean, err := layer.ScanTar(bytes.NewReader(tarBytes), int64(len(tarBytes)))
	if err != nil {
		t.Fatal(err)
	}
	key := keys[7]
	victim := largest(clean.Dirs[key])
	e := newLzEnv(t)
	ref := e.push(t, "legacy:tar", lzTarImage(t, tarBytes))
	_, l := e.image(t, ref, 0)
	st := lzStore(t, 0)
	state := t.TempDir()
	eng := e.engine(t, st, state)

	// Whatever reads the blob from its start sees the flip.
	e.px.FlipByte("/blobs/"+l.Desc.Digest.String(), victim.Offset+victim.Size/2)
	if _, err := eng.Index(context.Background(), l); err == nil {
		t.Error("index of a tar layer with a flipped byte succeeded")
	} else {
		t.Logf("index with a flipped byte: %v", err)
	}
	e.px.Settle(t)
	if n := e.px.Count(func(r proxy.Req) bool { return r.Flipped }); n == 0 {
		t.Fatal("no response flipped: the test tested nothing")
	}
	if err := e.px.ClearFaults(); err != nil {
		t.Fatal(err)
	}
	eng2 := e.engine(t, st, state)
	files, _ := lzFetch(t, eng2, l, key)
	lzCheckFiles(t, st, src, key, files, false)
}

// TestEStargzWithoutDigests: an eStargz TOC without digests (the manifest
// vouching for that TOC) gives nothing to check a range by, and a gzip
// member's CRC is never read when a chunk is read by its size: the layer is
// read whole once, its digest checked, its tar giving every file's digest,
// and a byte flipped in a later range of an incompressible file (stored by
// deflate as it is) is caught instead of served.
func TestEStargzWithoutDigests(t *testing.T) {
	src, keys := lzBigCache(t)
	blob, tocDigest := cachetest.RewriteTOC(t, lzLayerBlob(t, lzPackBigImage(t)), func(toc *estargz.JTOC) {
		for _, e := range toc.Entries {
			e.Digest, e.ChunkDigest = "", ""
		}
	})
	e := newLzEnv(t)
	ref := e.push(t, "nodigest:v1", lzEStargzImage(t, blob, tocDigest))
	_, l := e.image(t, ref, 0)
	if l.TOCDigest != tocDigest {
		t.Fatalf("layer ref TOC digest %q, want %q", l.TOCDigest, tocDigest)
	}
	st := lzStore(t, 0)
	eng := e.engine(t, st, t.TempDir())
	idx, ic := lzIndex(t, eng, l)
	key := keys[4]
	d := idx.Dirs[key]
	victim := largest(d)
	e.px.FlipByte("/blobs/"+l.Desc.Digest.String(), (victim.Offset+victim.End)/2-d.Offset)
	files, err := eng.Dir(context.Background(), l, key)
	var ve *layer.VerifyError
	if !errors.As(err, &ve) {
		for _, f := range files {
			if f.Name == victim.Name {
				t.Errorf("%s/%s: %d bytes stored from a corrupt range", key, f.Name, len(lzReadStored(t, st, f)))
			}
		}
		t.Fatalf("fetch of a corrupt range of a TOC without digests: %v, want a VerifyError", err)
	}
	if ic.Bytes() < l.Desc.Size || !idx.Complete() {
		t.Errorf("index of a TOC without digests read %d bytes of a %d-byte blob (complete %v): want it read whole", ic.Bytes(), l.Desc.Size, idx.Complete())
	}
	e.px.Settle(t)
	if n := e.px.Count(func(r proxy.Req) bool { return r.Flipped }); n != 1 {
		t.Fatalf("%d responses flipped: the test tested nothing", n)
	}
	if err := e.px.ClearFaults(); err != nil {
		t.Fatal(err)
	}
	files, _ = lzFetch(t, eng, l, key)
	lzCheckFiles(t, st, src, key, files, true)
}

// TestEStargzWithoutAnnotation: without the TOC digest annotation nothing
// vouches for the TOC read by range: the layer is read whole once and
// checked before its index is used; a byte flipped in that read fails the
// index and leaves nothing cached.
func TestEStargzWithoutAnnotation(t *testing.T) {
	src, keys := lzCache(t)
	blob := lzLayerBlob(t, lzPackImage(t))
	e := newLzEnv(t)
	ref := e.push(t, "noannotation:v1", lzEStargzImage(t, blob, ""))
	_, l := e.image(t, ref, 0)
	if l.TOCDigest != "" {
		t.Fatalf("layer ref has a TOC digest %q", l.TOCDigest)
	}
	st := lzStore(t, 0)
	state := t.TempDir()
	eng := e.engine(t, st, state)
	// A byte past what the footer and TOC reads return: only a read of the
	// whole blob sees it.
	_, tocOff, _, err := (&estargz.GzipDecompressor{}).ParseFooter(blob[len(blob)-estargz.FooterSize:])
	if err != nil {
		t.Fatal(err)
	}
	flip := int64(len(blob)) - tocOff + 1000
	if flip >= tocOff {
		t.Fatalf("TOC of %d bytes at %d: no data byte beyond the TOC read's length", int64(len(blob))-tocOff, tocOff)
	}
	e.px.FlipByte("/blobs/"+l.Desc.Digest.String(), flip)
	if _, err := eng.Index(context.Background(), l); err == nil {
		t.Fatal("index of a layer without annotation, its blob corrupt: no error")
	}
	e.px.Settle(t)
	if n := e.px.Count(func(r proxy.Req) bool { return r.Flipped && r.Range == "" }); n != 1 {
		t.Fatalf("%d whole-blob responses flipped, want 1: the layer was not read whole", n)
	}
	if err := e.px.ClearFaults(); err != nil {
		t.Fatal(err)
	}
	eng2 := e.engine(t, st, state)
	key := keys[9]
	files, _ := lzFetch(t, eng2, l, key)
	lzCheckFiles(t, st, src, key, files, true)
}

// TestEStargzTOCDisagreesWithTar: a TOC that swaps two files of a KEY dir
// (serving it would not give what unpacking the tar gives) is read the
// same way by the engine and by image.Unpack: served as the TOC says when
// the manifest vouches for the TOC, refused by both when nothing does.
func TestEStargzTOCDisagreesWithTar(t *testing.T) {
	_, keys := lzCache(t)
	key := keys[5]
	var a, b string
	swapped, tocDigest := cachetest.RewriteTOC(t, lzLayerBlob(t, lzPackImage(t)), func(toc *estargz.JTOC) {
		for _, e := range toc.Entries {
			if e.Type == "reg" && strings.HasPrefix(e.Name, layer.Prefix+key+"/") {
				switch {
				case strings.HasSuffix(e.Name, ".llir"):
					a = e.Name
				case strings.HasSuffix(e.Name, ".ttir"):
					b = e.Name
				}
			}
		}
		for _, e := range toc.Entries {
			switch e.Name {
			case a:
				e.Name = b
			case b:
				e.Name = a
			}
		}
	})
	if a == "" || b == "" {
		t.Fatalf("KEY %s has no .llir and .ttir to swap", key)
	}
	e := newLzEnv(t)
	for _, vouched := range []bool{true, false} {
		ann := ""
		if vouched {
			ann = tocDigest
		}
		ref := e.push(t, "swapped:v1", lzEStargzImage(t, swapped, ann))
		im, l := e.image(t, ref, 0)
		st := lzStore(t, 0)
		eng := e.engine(t, st, t.TempDir())
		files, mountErr := eng.Dir(context.Background(), l, key)
		unpacked, unpackErr := lzUnpack(t, e.res, im)
		if !vouched {
			var de *layer.DisagreeError
			if !errors.As(mountErr, &de) || !errors.As(unpackErr, &de) {
				t.Errorf("TOC disagreeing with the tar, not vouched for: engine %v, unpack %v; want both refused", mountErr, unpackErr)
			}
			continue
		}
		if mountErr != nil || unpackErr != nil {
			t.Fatalf("vouched TOC: engine %v, unpack %v", mountErr, unpackErr)
		}
		for _, f := range files {
			got := lzReadStored(t, st, f)
			want := unpacked[key+"/"+f.Name]
			if !strings.HasPrefix(f.Name, "__grp__") && !bytes.Equal(got, want) {
				t.Errorf("%s/%s: the engine serves %d bytes, unpack wrote %d different ones", key, f.Name, len(got), len(want))
			}
		}
	}
}

// lzUnpack extracts im as cargohold -e does for the cache's targets and
// returns what it wrote, by KEY/file.
func lzUnpack(t *testing.T, res *resolver.Resolver, im *resolver.Image) (map[string][]byte, error) {
	t.Helper()
	dir := t.TempDir()
	targets := []gpu.Target{{Backend: "cuda", Arch: "80", WarpSize: 32}, {Backend: "hip", Arch: "gfx90a", WarpSize: 64}}
	if _, err := image.Unpack(context.Background(), res, im, dir, targets, nil); err != nil {
		return nil, err
	}
	out := map[string][]byte{}
	err := filepath.WalkDir(dir, func(p string, de fs.DirEntry, err error) error {
		if err != nil || de.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		b, err := os.ReadFile(p)
		out[rel] = b
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out, nil
}
