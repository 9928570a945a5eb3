package layer

import (
	"cargohold/kind"

	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	digest "github.com/opencontainers/go-digest"

	"cargohold/triton"
)

func TestBuildReproducible(t *testing.T) {
	src := testCache(t, "vector-add-cache")
	first, built := build(t, src)
	again, _ := build(t, src)
	if !bytes.Equal(first, again) {
		t.Fatal("two builds of the same dir differ")
	}

	prev := runtime.GOMAXPROCS(1)
	one, _ := build(t, src)
	runtime.GOMAXPROCS(4)
	four, _ := build(t, src)
	runtime.GOMAXPROCS(prev)
	if !bytes.Equal(one, first) || !bytes.Equal(four, first) {
		t.Fatal("build depends on GOMAXPROCS")
	}

	// The same content with other mtimes, owners and non-executable modes.
	dir := t.TempDir()
	copyTree(t, src, dir)
	stamp := time.Date(2001, 2, 3, 4, 5, 6, 7, time.UTC)
	err := filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil || p == dir {
			return err
		}
		if !info.IsDir() {
			if err := os.Chmod(p, 0o600); err != nil {
				return err
			}
		}
		if err := os.Chown(p, 4321, 4321); err != nil && !errors.Is(err, os.ErrPermission) {
			return err
		}
		return os.Chtimes(p, stamp, stamp)
	})
	if err != nil {
		t.Fatal(err)
	}
	moved, built2 := build(t, dir)
	if !bytes.Equal(moved, first) || built2 != built {
		t.Fatal("build depends on mtimes, owners or non-executable modes")
	}

	// The executable bit is content: it must show.
	if err := os.Chmod(filepath.Join(dir, cudaKey, "add_kernel.cubin"), 0o700); err != nil {
		t.Fatal(err)
	}
	if exec, _ := build(t, dir); bytes.Equal(exec, first) {
		t.Fatal("executable bit not recorded")
	}
}

// TestBuildIndependentOfGOMAXPROCS uses a cache on which estargz.Build,
// which splits the tar into GOMAXPROCS parts, gives different bytes for 1
// and 4 (42317 vs 42352 with estargz v0.19.1).
func TestBuildIndependentOfGOMAXPROCS(t *testing.T) {
	dir := t.TempDir()
	keys := genCache(t, dir, 40)
	for i, k := range keys[:8] {
		body := bytes.Repeat([]byte{byte(i), 1, 2, 3, 4, 5, 6, 7, 8}, 50000+i*1000)
		if err := os.WriteFile(filepath.Join(dir, k, "big.so"), body, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	prev := runtime.GOMAXPROCS(1)
	defer runtime.GOMAXPROCS(prev)
	one, _ := build(t, dir)
	runtime.GOMAXPROCS(4)
	four, _ := build(t, dir)
	if !bytes.Equal(one, four) {
		t.Fatal("build depends on GOMAXPROCS")
	}
}

func TestBuildLayout(t *testing.T) {
	src := testCache(t, "vector-add-cache")
	blob, built := build(t, src)
	if built.Size != int64(len(blob)) || built.Digest != digest.FromBytes(blob) {
		t.Fatalf("Size/Digest %d %s do not describe the blob", built.Size, built.Digest)
	}
	raw := gunzip(t, blob)
	if built.UncompressedSize != int64(len(raw)) || built.DiffID != digest.FromBytes(raw) {
		t.Fatalf("UncompressedSize/DiffID %d %s, want %d %s", built.UncompressedSize, built.DiffID, len(raw), digest.FromBytes(raw))
	}

	entries, _, err := triton.Scan(src)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{estargz.NoPrefetchLandmark, Prefix, Prefix + cudaKey + "/"}
	for _, f := range entries[0].Files {
		want = append(want, Prefix+cudaKey+"/"+f.Name)
	}
	want = append(want, estargz.TOCTarName)
	var got []string
	tr := tar.NewReader(bytes.NewReader(raw))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, h.Name)
		if h.Name == estargz.TOCTarName {
			continue
		}
		if h.Uid != 0 || h.Gid != 0 || h.Uname != "" || h.Gname != "" || h.ModTime.Unix() != 0 {
			t.Errorf("%s: owner %d:%d %q:%q mtime %v", h.Name, h.Uid, h.Gid, h.Uname, h.Gname, h.ModTime)
		}
		wantMode := int64(0o644)
		if h.Typeflag == tar.TypeDir {
			wantMode = 0o755
		}
		if h.Mode != wantMode {
			t.Errorf("%s: mode %o, want %o", h.Name, h.Mode, wantMode)
		}
		if strings.HasSuffix(h.Name, "__grp__add_kernel.json") {
			stored, _ := io.ReadAll(tr)
			orig, err := os.ReadFile(filepath.Join(src, cudaKey, "__grp__add_kernel.json"))
			if err != nil {
				t.Fatal(err)
			}
			// Stored as it is on disk, the build host's absolute paths
			// included: MCV extracts it unmodified.
			if !bytes.Equal(stored, orig) || !bytes.Contains(stored, []byte(`"/`)) {
				t.Errorf("group file stored as %s, want %s", stored, orig)
			}
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("entries\n got %v\nwant %v", got, want)
	}

	// The estargz library itself accepts the blob and its TOC digest.
	r, err := estargz.Open(io.NewSectionReader(bytes.NewReader(blob), 0, int64(len(blob))))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.VerifyTOC(built.TOCDigest); err != nil {
		t.Fatal(err)
	}
	ann := built.Annotations()
	if ann[estargz.TOCJSONDigestAnnotation] != built.TOCDigest.String() ||
		ann[estargz.StoreUncompressedSizeAnnotation] != fmt.Sprint(len(raw)) {
		t.Fatalf("annotations %v", ann)
	}
}

func TestBuildExecutableMode(t *testing.T) {
	dir := t.TempDir()
	key := keyN(t, 1)
	if err := os.MkdirAll(filepath.Join(dir, key), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, key, "cuda_utils.so"), []byte("\x7fELF"), 0o750); err != nil {
		t.Fatal(err)
	}
	blob, _ := build(t, dir)
	idx, err := Open(bytes.NewReader(blob), int64(len(blob)), "")
	if err != nil {
		t.Fatal(err)
	}
	if m := idx.Dirs[key].Files[0].Mode; m != 0o755 {
		t.Fatalf("mode %o, want 755", m)
	}
}

func TestBuildCanceled(t *testing.T) {
	src := testCache(t, "vector-add-cache")
	entries, _, err := triton.Scan(src)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := BuildSource(ctx, io.Discard, tritonSource(src, entries)); !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want context.Canceled", err)
	}
}

func TestBuildRejectsBadInput(t *testing.T) {
	src := testCache(t, "vector-add-cache")
	entries, _, err := triton.Scan(src)
	if err != nil {
		t.Fatal(err)
	}
	bad := []struct {
		name    string
		entries []triton.Entry
	}{
		{"KEY twice", append(append([]triton.Entry{}, entries...), entries...)},
		{"not a KEY", []triton.Entry{{Key: "tmp", Files: entries[0].Files}}},
		{"missing file", []triton.Entry{{Key: cudaKey, Files: []triton.File{{Name: "gone"}}}}},
		{"unclean name", []triton.Entry{{Key: cudaKey, Files: []triton.File{{Name: "../" + cudaKey + "/add_kernel.ptx"}}}}},
	}
	for _, c := range bad {
		if _, err := BuildSource(context.Background(), io.Discard, tritonSource(src, c.entries)); err == nil {
			t.Errorf("%s: no error", c.name)
		}
	}

	// A symlink swapped in after the scan is not followed.
	dir := t.TempDir()
	copyTree(t, src, dir)
	p := filepath.Join(dir, cudaKey, "add_kernel.ptx")
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/hostname", p); err != nil {
		t.Fatal(err)
	}
	if _, err := BuildSource(context.Background(), io.Discard, tritonSource(dir, entries)); err == nil {
		t.Error("symlink followed")
	}
}

// referenceTar is the tar the layer is made of, written plainly: what
// estargz.Writer.AppendTar was given before Build compressed in parallel.
func referenceTar(t *testing.T, dir string) []byte {
	t.Helper()
	entries, _, err := triton.Scan(dir)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	add := func(h *tar.Header, data []byte) {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	add(header(estargz.NoPrefetchLandmark, tar.TypeReg, 0o644, 1), []byte{0xf})
	add(header(Prefix, tar.TypeDir, 0o755, 0), nil)
	for _, e := range entries { // Scan sorts KEYs and file names
		add(header(Prefix+e.Key+"/", tar.TypeDir, 0o755, 0), nil)
		for _, f := range e.Files {
			data, err := os.ReadFile(filepath.Join(dir, e.Key, f.Name))
			if err != nil {
				t.Fatal(err)
			}
			mode := int64(0o644)
			if f.Mode&0o111 != 0 {
				mode = 0o755
			}
			add(header(Prefix+e.Key+"/"+f.Name, tar.TypeReg, mode, int64(len(data))), data)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// bigFiles adds files of several chunks (at chunk size cs) to the first
// KEY dirs of dir.
func bigFiles(t *testing.T, dir string, keys []string, cs int) {
	t.Helper()
	for i, k := range keys {
		body := bytes.Repeat([]byte{byte(i), 1, 2, 3, 4, 5, 6, 7, 8}, (cs*(i+1))/9+i)
		if err := os.WriteFile(filepath.Join(dir, k, "big.so"), body, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

// TestBuildIsEstargzWriter: with the standard library's gzip (what
// estargz.Writer uses), the parallel writer's bytes, TOC digest and DiffID
// are exactly estargz.Writer's over the same tar, whatever the number of
// workers, the chunk size (files of several chunks, a chunk ending exactly
// at a file's end) and a budget smaller than one member.
func TestBuildIsEstargzWriter(t *testing.T) {
	dir := t.TempDir()
	keys := genCache(t, dir, 30)
	const cs = 1000
	bigFiles(t, dir, keys[:4], cs)
	if err := os.WriteFile(filepath.Join(dir, keys[5], "exact.bin"), bytes.Repeat([]byte("x"), 2*cs), 0o644); err != nil {
		t.Fatal(err)
	}
	entries, _, err := triton.Scan(dir)
	if err != nil {
		t.Fatal(err)
	}
	ref := referenceTar(t, dir)
	stdGzip := func() gzipWriter {
		zw, _ := gzip.NewWriterLevel(io.Discard, compressionLevel)
		return zw
	}
	for _, chunk := range []int64{cs, chunkSize} {
		var want bytes.Buffer
		ew := estargz.NewWriterWithCompressor(&want, estargz.NewGzipCompressorWithLevel(compressionLevel))
		ew.ChunkSize = int(chunk)
		if err := ew.AppendTar(bytes.NewReader(ref)); err != nil {
			t.Fatal(err)
		}
		tocDigest, err := ew.Close()
		if err != nil {
			t.Fatal(err)
		}
		for _, workers := range []int{1, 2, 5} {
			o := writerOptions{workers: workers, chunkSize: chunk, newGzip: stdGzip, budget: 700, inFlight: 3}
			var got bytes.Buffer
			built, err := buildWith(context.Background(), &got, tritonSource(dir, entries), o)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.Bytes(), want.Bytes()) {
				t.Fatalf("chunk %d, %d workers: %d bytes differ from estargz.Writer's %d", chunk, workers, got.Len(), want.Len())
			}
			if built.TOCDigest != tocDigest || built.DiffID.String() != ew.DiffID() || built.Size != int64(want.Len()) ||
				built.Digest != digest.FromBytes(want.Bytes()) {
				t.Fatalf("chunk %d, %d workers: built %+v, estargz TOC %s DiffID %s", chunk, workers, built, tocDigest, ew.DiffID())
			}
		}
	}
}

// TestBuildSameForAnyWorkers: the production writer (klauspost's gzip)
// gives the same bytes for 1 to 8 workers and for GOMAXPROCS 1 and N, and
// estargz.Open, layer.Open and layer.Walk read back every file.
func TestBuildSameForAnyWorkers(t *testing.T) {
	dir := t.TempDir()
	keys := genCache(t, dir, 200)
	bigFiles(t, dir, keys[:3], 64<<10)
	entries, _, err := triton.Scan(dir)
	if err != nil {
		t.Fatal(err)
	}
	var first []byte
	for _, workers := range []int{1, 2, 3, 8} {
		o := defaultWriterOptions(workers)
		o.chunkSize = 64 << 10 // files of several chunks
		var b bytes.Buffer
		if _, err := buildWith(context.Background(), &b, tritonSource(dir, entries), o); err != nil {
			t.Fatal(err)
		}
		if first == nil {
			first = b.Bytes()
		} else if !bytes.Equal(b.Bytes(), first) {
			t.Fatalf("%d workers: %d bytes, 1 worker: %d", workers, b.Len(), len(first))
		}
	}
	prev := runtime.GOMAXPROCS(1)
	one, _ := build(t, dir)
	runtime.GOMAXPROCS(max(4, prev))
	n, built := build(t, dir)
	runtime.GOMAXPROCS(prev)
	if !bytes.Equal(one, n) {
		t.Fatal("Build depends on GOMAXPROCS")
	}

	sr := io.NewSectionReader(bytes.NewReader(n), 0, int64(len(n)))
	r, err := estargz.Open(sr)
	if err != nil {
		t.Fatalf("estargz.Open: %v", err)
	}
	if _, err := r.VerifyTOC(built.TOCDigest); err != nil {
		t.Fatal(err)
	}
	idx, err := Open(bytes.NewReader(n), int64(len(n)), built.TOCDigest.String())
	if err != nil {
		t.Fatal(err)
	}
	checkAgainstSource(t, bytes.NewReader(n), idx, dir)
	walked := 0
	if err := Walk(bytes.NewReader(n), func(kind.Kind, string, File, io.Reader) error { walked++; return nil }); err != nil {
		t.Fatal(err)
	}
	if want := 200*4 + 3; walked != want {
		t.Fatalf("Walk passed %d files, want %d", walked, want)
	}
}

// TestBuildWriteError: a failing writer fails the build, never hangs it.
func TestBuildWriteError(t *testing.T) {
	dir := t.TempDir()
	genCache(t, dir, 300)
	entries, _, err := triton.Scan(dir)
	if err != nil {
		t.Fatal(err)
	}
	boom := errors.New("disk full")
	o := defaultWriterOptions(3)
	o.budget, o.inFlight = 1000, 2
	_, err = buildWith(context.Background(), &failingWriter{after: 5000, err: boom}, tritonSource(dir, entries), o)
	if !errors.Is(err, boom) {
		t.Fatalf("err %v, want %v", err, boom)
	}
}

type failingWriter struct {
	after int
	err   error
}

func (f *failingWriter) Write(p []byte) (int, error) {
	if len(p) > f.after {
		n := f.after
		f.after = 0
		return n, f.err
	}
	f.after -= len(p)
	return len(p), nil
}
