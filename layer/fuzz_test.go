package layer

import (
	"cargohold/kind"

	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"testing"

	"github.com/containerd/stargz-snapshotter/estargz"
)

func fuzzSeeds(f *testing.F) {
	key := keyN(f, 1)
	tarBytes := makeTar(f,
		tarEntry{Name: Prefix + key + "/", Type: '5'},
		tarEntry{Name: Prefix + key + "/a", Body: []byte("hello")},
		tarEntry{Name: Prefix + key + "/b", Body: bytes.Repeat([]byte("ab"), 600)},
		tarEntry{Name: "x/y", Body: []byte("outside")})
	esgz := estargzOf(f, tarBytes)
	for _, seed := range [][]byte{tarBytes, esgz, gzipBytes(f, tarBytes), esgz[:len(esgz)-60], esgz[len(esgz)/2:], nil} {
		f.Add(seed)
	}
}

// FuzzOpen: any blob gives an index or an error, never a panic, and every
// span of an index lies inside the blob and reads without panicking.
func FuzzOpen(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, blob []byte) {
		idx, err := Open(bytes.NewReader(blob), int64(len(blob)), "")
		if err != nil {
			return
		}
		for key, d := range idx.Dirs {
			if d.Offset < 0 || d.End < d.Offset || d.End > int64(len(blob)) {
				t.Fatalf("%s: span [%d,%d) outside a %d-byte blob", key, d.Offset, d.End, len(blob))
			}
			_, _ = d.Read(blob[d.Offset:d.End])
		}
	})
}

// FuzzWalk: any stream is walked or refused, never a panic.
func FuzzWalk(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, blob []byte) {
		_ = Walk(bytes.NewReader(blob), func(_ kind.Kind, _ string, _ File, r io.Reader) error {
			_, err := io.Copy(io.Discard, r)
			return err
		})
	})
}

// FuzzOpenTOC mutates the TOC JSON of a real layer, the part of an eStargz
// blob a mutator rarely reaches through gzip: offsets, sizes, chunks, names.
func FuzzOpenTOC(f *testing.F) {
	dir := f.TempDir()
	genCache(f, dir, 3)
	blob, _ := build(f, dir)
	tocOff, _, _ := parseFooter(blob[len(blob)-estargz.FooterSize:])
	zr, err := gzip.NewReader(bytes.NewReader(blob[tocOff:]))
	if err != nil {
		f.Fatal(err)
	}
	zr.Multistream(false)
	tr := tar.NewReader(zr)
	if _, err := tr.Next(); err != nil {
		f.Fatal(err)
	}
	js, err := io.ReadAll(tr)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(js)
	f.Add([]byte(`{"version":1,"entries":[{"name":"io.triton.cache/` + keyN(f, 1) + `/a","type":"reg","size":5,"offset":3}]}`))
	payload := blob[:tocOff]
	f.Fuzz(func(t *testing.T, js []byte) {
		var b bytes.Buffer
		b.Write(payload)
		zw := gzip.NewWriter(&b)
		tw := tar.NewWriter(zw)
		_ = tw.WriteHeader(&tar.Header{Name: estargz.TOCTarName, Typeflag: tar.TypeReg, Size: int64(len(js)), Mode: 0o644})
		_, _ = tw.Write(js)
		_ = tw.Close()
		_ = zw.Close()
		extra := append([]byte{'S', 'G', 22, 0}, fmt.Sprintf("%016xSTARGZ", len(payload))...)
		b.Write(estargz.CreateGzipFooter(extra))
		blob := b.Bytes()
		idx, err := Open(bytes.NewReader(blob), int64(len(blob)), "")
		if err != nil {
			return
		}
		for key, d := range idx.Dirs {
			if d.Offset < 0 || d.End < d.Offset || d.End > int64(len(blob)) {
				t.Fatalf("%s: span [%d,%d) outside a %d-byte blob", key, d.Offset, d.End, len(blob))
			}
			_, _ = d.Read(blob[d.Offset:d.End])
		}
	})
}
