package layer

import (
	"bytes"
	"errors"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/containerd/stargz-snapshotter/estargz"

	"cargohold/test/cachetest"
)

// TestScanTarDigestsEveryBody: a tar indexed from its stream has the
// offsets OpenTar finds and a digest for every body, large ones included;
// a short stream is an error.
func TestScanTarDigestsEveryBody(t *testing.T) {
	rnd := rand.New(rand.NewSource(3))
	big := make([]byte, 3<<20)
	rnd.Read(big)
	key := keyN(t, 1)
	tarBytes := makeTar(t,
		tarEntry{Name: Prefix + key + "/", Type: '5'},
		tarEntry{Name: Prefix + key + "/lib.so", Body: big},
		tarEntry{Name: Prefix + key + "/meta.json", Body: []byte("{}")},
		tarEntry{Name: "etc/other", Body: []byte("x")})
	idx, err := ScanTar(bytes.NewReader(tarBytes), int64(len(tarBytes)))
	if err != nil {
		t.Fatal(err)
	}
	if !idx.Complete() || idx.Verifiable("") {
		t.Fatalf("scanned tar: complete %v, verifiable %v; want complete, and never verifiable lazily", idx.Complete(), idx.Verifiable(""))
	}
	byBlocks, err := OpenTar(bytes.NewReader(tarBytes), int64(len(tarBytes)), 0)
	if err != nil {
		t.Fatal(err)
	}
	if byBlocks.Complete() {
		t.Fatal("OpenTar skipped no body: the comparison tests nothing")
	}
	for i, f := range idx.Dirs[key].Files {
		g := byBlocks.Dirs[key].Files[i]
		if f.Name != g.Name || f.Offset != g.Offset || f.End != g.End || f.Size != g.Size {
			t.Errorf("%s: scanned %+v, OpenTar %+v", f.Name, f, g)
		}
	}
	cs := readDir(t, bytes.NewReader(tarBytes), idx.Dirs[key])
	if !bytes.Equal(cs[0].Data, big) || cs[0].File.Digest != idx.Dirs[key].Files[0].Digest {
		t.Fatal("large body read back differs")
	}
	if _, err := ScanTar(bytes.NewReader(tarBytes[:len(tarBytes)/2]), int64(len(tarBytes))); err == nil {
		t.Error("truncated stream: no error")
	}
	// A flipped byte in a large body is caught by the digest the scan gave it.
	bad := bytes.Clone(tarBytes)
	d := idx.Dirs[key]
	bad[d.Files[0].Offset+100] ^= 1
	var ve *VerifyError
	if _, err := d.Read(bad[d.Offset:d.End]); !errors.As(err, &ve) || ve.File != "lib.so" {
		t.Fatalf("corrupt large body: %v, want a VerifyError for lib.so", err)
	}
}

// TestCheckTOC: an eStargz TOC without digests is not verifiable lazily;
// Check against the whole stream fills in every digest. A TOC that swaps
// two files' names (so that serving it would differ from unpacking the
// tar) or leaves one out is refused.
func TestCheckTOC(t *testing.T) {
	src := testCache(t, "vector-add-cache")
	blob, _ := build(t, src)
	idx, err := Open(bytes.NewReader(blob), int64(len(blob)), "")
	if err != nil {
		t.Fatal(err)
	}
	if !idx.Verifiable(idx.TOCDigest) || idx.Verifiable("") {
		t.Fatal("cargohold's own layer: verifiable only with its TOC digest")
	}
	checked, err := idx.Check(bytes.NewReader(blob))
	if err != nil {
		t.Fatalf("check of a consistent layer: %v", err)
	}
	for k, d := range idx.Dirs {
		for i, f := range d.Files {
			if checked.Dirs[k].Files[i].Digest != f.Digest {
				t.Fatalf("%s/%s: checked digest differs", k, f.Name)
			}
		}
	}

	noDigests, tocDigest := cachetest.RewriteTOC(t, blob, func(toc *estargz.JTOC) {
		for _, e := range toc.Entries {
			e.Digest, e.ChunkDigest = "", ""
		}
	})
	bare, err := Open(bytes.NewReader(noDigests), int64(len(noDigests)), tocDigest)
	if err != nil {
		t.Fatal(err)
	}
	if bare.Complete() || bare.Verifiable(tocDigest) {
		t.Fatal("a TOC without digests counts as verifiable")
	}
	filled, err := bare.Check(bytes.NewReader(noDigests))
	if err != nil {
		t.Fatal(err)
	}
	if !filled.Complete() {
		t.Fatal("Check left files without a digest")
	}
	for k, d := range filled.Dirs {
		for i, f := range d.Files {
			if want := idx.Dirs[k].Files[i].Digest; f.Digest != want {
				t.Errorf("%s/%s: digest %s from the stream, want %s", k, f.Name, f.Digest, want)
			}
		}
	}

	swapped, _ := cachetest.RewriteTOC(t, blob, func(toc *estargz.JTOC) {
		a, b := "", ""
		for _, e := range toc.Entries {
			if e.Type == "reg" && strings.HasSuffix(e.Name, ".ptx") {
				a = e.Name
			}
			if e.Type == "reg" && strings.HasSuffix(e.Name, ".ttir") {
				b = e.Name
			}
		}
		if a == "" || b == "" {
			t.Fatal("no .ptx and .ttir file to swap")
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
	sx, err := Open(bytes.NewReader(swapped), int64(len(swapped)), "")
	if err != nil {
		t.Fatal(err)
	}
	var de *DisagreeError
	if _, err := sx.Check(bytes.NewReader(swapped)); !errors.As(err, &de) {
		t.Fatalf("check of a TOC that swaps two files: %v, want a DisagreeError", err)
	}
	dropped, _ := cachetest.RewriteTOC(t, blob, func(toc *estargz.JTOC) {
		for i, e := range toc.Entries {
			if e.Type == "reg" && strings.HasSuffix(e.Name, ".ptx") {
				toc.Entries = append(toc.Entries[:i], toc.Entries[i+1:]...)
				return
			}
		}
	})
	dx, err := Open(bytes.NewReader(dropped), int64(len(dropped)), "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dx.Check(bytes.NewReader(dropped)); !errors.As(err, &de) || !strings.Contains(err.Error(), "not in the TOC") {
		t.Fatalf("check of a TOC that leaves a file out: %v, want a DisagreeError", err)
	}
	// The stream of another TOC is refused.
	if _, err := sx.Check(bytes.NewReader(blob)); !errors.As(err, &de) {
		t.Fatalf("check against another blob: %v", err)
	}
}

// TestOpenStreamsLargeFile: a 64 MiB file of one eStargz layer is read
// through Open holding a few buffers, not the file.
func TestOpenStreamsLargeFile(t *testing.T) {
	dir := t.TempDir()
	src := testCache(t, "vector-add-cache")
	copyTree(t, src, dir)
	const size = 64 << 20
	kd := filepath.Join(dir, cudaKey)
	if err := os.Truncate(filepath.Join(kd, "zeros.bin"), 0); err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(kd, "zeros.bin"))
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(size)
	f.Close()
	blob, _ := build(t, dir)
	idx, err := Open(bytes.NewReader(blob), int64(len(blob)), "")
	if err != nil {
		t.Fatal(err)
	}
	d := idx.Dirs[cudaKey]
	var zf File
	for _, f := range d.Files {
		if f.Name == "zeros.bin" {
			zf = f
		}
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	r := d.Open(bytes.NewReader(blob), zf)
	n, err := io.Copy(io.Discard, r)
	r.Close()
	runtime.ReadMemStats(&after)
	if err != nil || n != size {
		t.Fatalf("read %d bytes, %v", n, err)
	}
	if r.Digest() != zf.Digest {
		t.Errorf("digest %s, want %s", r.Digest(), zf.Digest)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 8<<20 {
		t.Errorf("reading a %d-byte file allocated %d bytes", size, alloc)
	}
}
