package layer

import (
	"bytes"
	"encoding/json"
	"errors"
	"math/rand"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"

	"github.com/containerd/stargz-snapshotter/estargz"
	digest "github.com/opencontainers/go-digest"
)

func TestOpenRealCaches(t *testing.T) {
	for _, name := range []string{"vector-add-cache", "vector-add-cache-rocm"} {
		t.Run(name, func(t *testing.T) {
			src := testCache(t, name)
			blob, built := build(t, src)
			ra := &countingReaderAt{ra: bytes.NewReader(blob)}
			idx, err := Open(ra, int64(len(blob)), built.TOCDigest.String())
			if err != nil {
				t.Fatal(err)
			}
			if ra.reads != 2 {
				t.Errorf("opening the eStargz index took %d reads, want 2 (footer, TOC)", ra.reads)
			}
			t.Logf("open: %d reads, %d of %d bytes", ra.reads, ra.bytes, len(blob))
			if idx.Format != FormatEStargz || idx.TOCDigest != built.TOCDigest.String() || len(idx.Skipped) != 0 {
				t.Fatalf("index %s %s skipped %v", idx.Format, idx.TOCDigest, idx.Skipped)
			}
			checkAgainstSource(t, bytes.NewReader(blob), idx, src)

			// The index survives the resolver's JSON cache.
			js, err := json.Marshal(idx)
			if err != nil {
				t.Fatal(err)
			}
			var back Index
			if err := json.Unmarshal(js, &back); err != nil {
				t.Fatal(err)
			}
			checkAgainstSource(t, bytes.NewReader(blob), &back, src)

			if _, err := Open(bytes.NewReader(blob), int64(len(blob)), digest.FromString("other").String()); !errors.Is(err, ErrTOCDigest) {
				t.Fatalf("wrong TOC digest: err %v", err)
			}
		})
	}
}

func TestOpenManyDirs(t *testing.T) {
	dir := t.TempDir()
	keys := genCache(t, dir, 320)
	blob, _ := build(t, dir)
	idx, err := Open(bytes.NewReader(blob), int64(len(blob)), "")
	if err != nil {
		t.Fatal(err)
	}
	if len(idx.Dirs) != len(keys) {
		t.Fatalf("%d dirs, want %d", len(idx.Dirs), len(keys))
	}
	// Spans in KEY order are disjoint: each covers its own files and no
	// other dir's, so one ranged read fetches exactly one dir.
	sort.Strings(keys)
	var prevEnd int64
	for _, k := range keys {
		d := idx.Dirs[k]
		if d.Offset < prevEnd || d.End <= d.Offset {
			t.Fatalf("%s: span [%d,%d) after %d", k, d.Offset, d.End, prevEnd)
		}
		for _, f := range d.Files {
			if f.Size > 0 && (f.Offset < d.Offset || f.End > d.End) {
				t.Fatalf("%s/%s: [%d,%d) outside dir span [%d,%d)", k, f.Name, f.Offset, f.End, d.Offset, d.End)
			}
		}
		prevEnd = d.End
	}
	checkAgainstSource(t, bytes.NewReader(blob), idx, dir)

	// Parallel readers share one index.
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := w; i < len(keys); i += 8 {
				d := idx.Dirs[keys[i]]
				if _, err := d.Read(blob[d.Offset:d.End]); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
}

func TestOpenChunkedFile(t *testing.T) {
	dir := t.TempDir()
	key := keyN(t, 7)
	if err := os.MkdirAll(filepath.Join(dir, key), 0o755); err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 2*chunkSize+12345)
	rand.New(rand.NewSource(1)).Read(big[:len(big)/2]) // half noise, half zeros
	if err := os.WriteFile(filepath.Join(dir, key, "big.so"), big, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, key, "small.json"), []byte(`{"x": 1}`), 0o644); err != nil {
		t.Fatal(err)
	}
	blob, _ := build(t, dir)
	idx, err := Open(bytes.NewReader(blob), int64(len(blob)), "")
	if err != nil {
		t.Fatal(err)
	}
	d := idx.Dirs[key]
	f := d.Files[0]
	if f.Name != "big.so" || len(f.Chunks) != 3 || f.Mode != 0o755 {
		t.Fatalf("big.so: %d chunks, mode %o", len(f.Chunks), f.Mode)
	}
	checkAgainstSource(t, bytes.NewReader(blob), idx, dir)

	// A flipped byte in the second chunk's compressed data is caught and
	// blamed on its file.
	span := bytes.Clone(blob[d.Offset:d.End])
	span[f.Chunks[1].BlobOffset-d.Offset+100] ^= 0x55
	_, err = d.Read(span)
	var ve *VerifyError
	if !errors.As(err, &ve) || ve.Key != key || ve.File != "big.so" {
		t.Fatalf("corrupt chunk: err %v", err)
	}

	// A chunk digest alone is checked too: tamper with it in the index.
	bad := *d
	bad.Files = append([]File(nil), d.Files...)
	bad.Files[0].Digest = ""
	bad.Files[0].Chunks = append([]Chunk(nil), f.Chunks...)
	bad.Files[0].Chunks[2].Digest = digest.FromString("x").String()
	if _, err := bad.Read(blob[d.Offset:d.End]); !errors.As(err, &ve) || !errors.Is(err, ErrMismatch) {
		t.Fatalf("wrong chunk digest: err %v", err)
	}
	bad.Files[0].Chunks[2].Digest = ""
	if _, err := bad.Read(blob[d.Offset:d.End]); err != nil {
		t.Fatalf("no digests at all: %v", err)
	}
}

func TestOpenCorruptSmallFile(t *testing.T) {
	src := testCache(t, "vector-add-cache")
	blob, _ := build(t, src)
	idx, err := Open(bytes.NewReader(blob), int64(len(blob)), "")
	if err != nil {
		t.Fatal(err)
	}
	d := idx.Dirs[cudaKey]
	for _, f := range d.Files {
		span := bytes.Clone(blob[d.Offset:d.End])
		span[f.Chunks[0].BlobOffset-d.Offset+12] ^= 0xff // inside the deflate data
		cs, err := d.Read(span)
		var ve *VerifyError
		if !errors.As(err, &ve) || ve.File != f.Name || cs != nil {
			t.Errorf("%s: corrupt data gave %v", f.Name, err)
		}
	}
	if _, err := d.Read(blob[d.Offset : d.End-1]); err == nil {
		t.Error("short span accepted")
	}
}

func TestOpenGzipNotIndexable(t *testing.T) {
	key := keyN(t, 3)
	tarBytes := makeTar(t,
		tarEntry{Name: Prefix, Type: '5'},
		tarEntry{Name: Prefix + key + "/", Type: '5'},
		tarEntry{Name: Prefix + key + "/a.ptx", Body: []byte("ptx")},
		tarEntry{Name: Prefix + key + "/b.cubin", Body: bytes.Repeat([]byte("cubin"), 1000)},
	)
	gz := gzipBytes(t, tarBytes)
	if _, err := Open(bytes.NewReader(gz), int64(len(gz)), ""); !errors.Is(err, ErrNotIndexable) {
		t.Fatalf("gzip: err %v, want ErrNotIndexable", err)
	}
	// What the resolver does next: decompress locally, OpenTar.
	raw := gunzip(t, gz)
	idx, err := OpenTar(bytes.NewReader(raw), int64(len(raw)), 0)
	if err != nil {
		t.Fatal(err)
	}
	cs := readDir(t, bytes.NewReader(raw), idx.Dirs[key])
	if len(cs) != 2 || string(cs[0].Data) != "ptx" || len(cs[1].Data) != 5000 {
		t.Fatalf("contents %+v", cs)
	}
	zstd := []byte{0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0}
	if _, err := Open(bytes.NewReader(zstd), int64(len(zstd)), ""); !errors.Is(err, ErrNotIndexable) {
		t.Fatalf("zstd: err %v, want ErrNotIndexable", err)
	}
}

// tocBlob is a blob of payload followed by a hand-made TOC and footer.
func tocBlob(t *testing.T, payload []byte, entries ...*estargz.TOCEntry) []byte {
	t.Helper()
	var b bytes.Buffer
	b.Write(payload)
	if _, err := estargz.NewGzipCompressorWithLevel(1).WriteTOCAndFooter(&b, int64(len(payload)),
		&estargz.JTOC{Version: 1, Entries: entries}, nil); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestOpenGarbledTOC(t *testing.T) {
	key := keyN(t, 4)
	name := Prefix + key + "/f"
	payload := gzipBytes(t, []byte("hello"))
	ok := tocBlob(t, payload, &estargz.TOCEntry{Name: name, Type: "reg", Size: 5, Offset: 0,
		Digest: digest.FromString("hello").String()})
	idx, err := Open(bytes.NewReader(ok), int64(len(ok)), "")
	if err != nil {
		t.Fatal(err)
	}
	if cs := readDir(t, bytes.NewReader(ok), idx.Dirs[key]); string(cs[0].Data) != "hello" {
		t.Fatalf("read %q", cs[0].Data)
	}

	cases := map[string][]*estargz.TOCEntry{
		"offset past TOC": {{Name: name, Type: "reg", Size: 5, Offset: 999}},
		"negative offset": {{Name: name, Type: "reg", Size: 5, Offset: -1}},
		"negative size":   {{Name: name, Type: "reg", Size: -5}},
		"orphan chunk":    {{Name: name, Type: "chunk", Offset: 0, ChunkSize: 5}},
		"chunk too big":   {{Name: name, Type: "reg", Size: 5, ChunkSize: 9}},
		"chunk gap": {{Name: name, Type: "reg", Size: 10, ChunkSize: 5},
			{Name: name, Type: "chunk", Offset: 1, ChunkOffset: 6, ChunkSize: 4}},
		"foreign chunk": {{Name: name, Type: "reg", Size: 10, ChunkSize: 5},
			{Name: name + "x", Type: "chunk", Offset: 1, ChunkOffset: 5}},
		"bad digest": {{Name: name, Type: "reg", Size: 5, Digest: "md5:abc"}},
		"null entry": {nil},
	}
	for what, entries := range cases {
		blob := tocBlob(t, payload, entries...)
		if _, err := Open(bytes.NewReader(blob), int64(len(blob)), ""); err == nil {
			t.Errorf("%s: no error", what)
		}
	}

	// Truncations of a real layer: errors, never a panic or a bogus index.
	src := testCache(t, "vector-add-cache")
	blob, _ := build(t, src)
	for _, n := range []int{0, 1, 50, 51, 52, len(blob) / 2, len(blob) - 52, len(blob) - 51, len(blob) - 1} {
		if _, err := Open(bytes.NewReader(blob[:n]), int64(n), ""); err == nil && n > 0 {
			t.Errorf("blob cut to %d bytes: no error", n)
		}
	}
	// A footer pointing at garbage.
	garbled := bytes.Clone(blob)
	tocOff, _, _ := parseFooter(garbled[len(garbled)-estargz.FooterSize:])
	garbled[tocOff+20] ^= 0xff
	if _, err := Open(bytes.NewReader(garbled), int64(len(garbled)), ""); err == nil {
		t.Error("garbled TOC: no error")
	}
}

// TestIndexWriteJSON: the streamed JSON of an index is json.Marshal's (but
// for white space), for
// an eStargz index, a tar index with skipped entries and an empty one.
func TestIndexWriteJSON(t *testing.T) {
	dir := t.TempDir()
	genCache(t, dir, 5)
	blob, _ := build(t, dir)
	es, err := Open(bytes.NewReader(blob), int64(len(blob)), "")
	if err != nil {
		t.Fatal(err)
	}
	key := keyN(t, 1)
	raw := makeTar(t, tarEntry{Name: Prefix + key + "/a", Body: []byte("a")}, tarEntry{Name: "etc/x", Body: []byte("x")})
	tr, err := Open(bytes.NewReader(raw), int64(len(raw)), "")
	if err != nil {
		t.Fatal(err)
	}
	for _, idx := range []*Index{es, tr, {Format: FormatTar, Dirs: map[string]*Dir{}}, {Format: FormatTar}} {
		want, err := json.Marshal(idx)
		if err != nil {
			t.Fatal(err)
		}
		var got bytes.Buffer
		if err := idx.WriteJSON(&got); err != nil {
			t.Fatal(err)
		}
		var compact bytes.Buffer
		if err := json.Compact(&compact, got.Bytes()); err != nil {
			t.Fatal(err)
		}
		if compact.String() != string(want) {
			t.Fatalf("WriteJSON\n%s\njson.Marshal\n%s", got.String(), want)
		}
	}
}

// TestOpenGated: the gate hears the TOC's compressed size after the footer
// read and before the TOC is read; its error ends the open with no TOC read.
func TestOpenGated(t *testing.T) {
	blob, _ := build(t, testCache(t, "vector-add-cache"))
	tocOff, footerSize, ok := parseFooter(blob[len(blob)-51:])
	if !ok {
		t.Fatal("no footer")
	}
	wantSize := int64(len(blob)) - footerSize - tocOff

	ra := &countingReaderAt{ra: bytes.NewReader(blob)}
	var got int64
	readsAtGate := -1
	gate := func(n int64) error {
		got = n
		ra.mu.Lock()
		readsAtGate = ra.reads
		ra.mu.Unlock()
		return nil
	}
	idx, err := OpenEStargzGated(ra, int64(len(blob)), "", gate)
	if err != nil || len(idx.Dirs) == 0 {
		t.Fatalf("open: %v", err)
	}
	if got != wantSize || readsAtGate != 1 || ra.reads != 2 {
		t.Errorf("gate heard %d bytes after %d reads (%d in all), want %d after the footer's 1 (2 in all)", got, readsAtGate, ra.reads, wantSize)
	}

	ra = &countingReaderAt{ra: bytes.NewReader(blob)}
	stop := errors.New("no room")
	if _, err := OpenEStargzGated(ra, int64(len(blob)), "", func(int64) error { return stop }); !errors.Is(err, stop) || ra.reads != 1 {
		t.Errorf("a refusing gate: %v after %d reads, want its error after the footer's 1", err, ra.reads)
	}
}
