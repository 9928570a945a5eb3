package layer

import (
	"cargohold/kind"

	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/containerd/stargz-snapshotter/estargz"

	"cargohold/test/cachetest"
	"cargohold/triton"
)

const (
	cudaKey = "5W7KJQDTJCL4UGPMKKCS7TEEPZKSWOY4774SZQ6674FWSXG5MNXQ"
	rocmKey = "MCELTMXFCSPAMZYLZ3C3WPPYYVTVR4QOYNE52X3X6FIH7Z6N6X5A"
)

// testCache is a shared real Triton cache; absent data skips, except in CI.
func testCache(t testing.TB, name string) string { t.Helper(); return cachetest.Testdata(t, name) }

// tarEntry is one entry for makeTar; Type 0 means a regular file.
type tarEntry = cachetest.Entry

// makeTar is the project's one tar builder, hostile entries included.
func makeTar(t testing.TB, entries ...tarEntry) []byte {
	t.Helper()
	return cachetest.Tar(t, entries...)
}

func gzipBytes(t testing.TB, b []byte) []byte { t.Helper(); return cachetest.Gzip(t, b) }

// estargzOf converts a tar with the estargz library's own writer, which
// accepts whatever the tar holds.
func estargzOf(t testing.TB, tarBytes []byte) []byte {
	t.Helper()
	var out bytes.Buffer
	w := estargz.NewWriterLevel(&out, gzip.BestSpeed)
	if err := w.AppendTar(bytes.NewReader(tarBytes)); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

func gunzip(t testing.TB, b []byte) []byte {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	out, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// build scans dir and builds its layer.
func build(t testing.TB, dir string) ([]byte, Built) {
	t.Helper()
	entries, _, err := triton.Scan(dir)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	built, err := BuildSource(context.Background(), &b, tritonSource(dir, entries))
	if err != nil {
		t.Fatal(err)
	}
	return b.Bytes(), built
}

// countingReaderAt counts the reads and bytes a reader asks for.
type countingReaderAt struct {
	ra    io.ReaderAt
	mu    sync.Mutex
	reads int
	bytes int64
}

func (c *countingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	c.mu.Lock()
	c.reads++
	c.bytes += int64(len(p))
	c.mu.Unlock()
	return c.ra.ReadAt(p, off)
}

// copyTree copies a cache dir with writable files.
func copyTree(t testing.TB, src, dst string) {
	t.Helper()
	err := filepath.Walk(src, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		if info.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(target, data, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// keyN is a valid KEY derived from n.
func keyN(t testing.TB, n int) string {
	t.Helper()
	s := sha256.Sum256([]byte(fmt.Sprint("kernel ", n)))
	k, err := triton.KeyOf(hex.EncodeToString(s[:]))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// genCache writes n KEY dirs of small files (a group file among them) and
// returns the keys.
func genCache(t testing.TB, dir string, n int) []string {
	t.Helper()
	var keys []string
	for i := range n {
		k := keyN(t, i)
		keys = append(keys, k)
		kd := filepath.Join(dir, k)
		if err := os.MkdirAll(kd, 0o755); err != nil {
			t.Fatal(err)
		}
		files := map[string]string{
			"k.cubin": fmt.Sprintf("cubin %d %s", i, bytes.Repeat([]byte{byte(i)}, i%700)),
			"k.ptx":   fmt.Sprintf("// ptx of kernel %d\n", i),
			"empty":   "",
			"__grp__k.json": fmt.Sprintf(`{"child_paths": {"k.cubin": "/home/u/.triton/cache/%s/k.cubin", "k.ptx": "/home/u/.triton/cache/%s/k.ptx"}}`,
				k, k),
		}
		for name, body := range files {
			if err := os.WriteFile(filepath.Join(kd, name), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	return keys
}

// readDir fetches a dir's span through ra alone, and reads it.
func readDir(t testing.TB, ra io.ReaderAt, d *Dir) []Content {
	t.Helper()
	span := make([]byte, d.End-d.Offset)
	if _, err := readFullAt(ra, span, d.Offset); err != nil {
		t.Fatalf("read span of %s: %v", d.Key, err)
	}
	cs, err := d.Read(span)
	if err != nil {
		t.Fatalf("read %s: %v", d.Key, err)
	}
	return cs
}

// checkAgainstSource compares every dir of idx with the cache dir it was
// built from, byte for byte (group files too: stored as they are).
func checkAgainstSource(t testing.TB, ra io.ReaderAt, idx *Index, dir string) {
	t.Helper()
	entries, _, err := triton.Scan(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(idx.Dirs) != len(entries) {
		t.Fatalf("index has %d dirs, cache %d", len(idx.Dirs), len(entries))
	}
	for _, e := range entries {
		d := idx.Dirs[e.Key]
		if d == nil {
			t.Fatalf("dir %s missing", e.Key)
		}
		cs := readDir(t, ra, d)
		if len(cs) != len(e.Files) {
			t.Fatalf("%s: %d files, want %d", e.Key, len(cs), len(e.Files))
		}
		for i, c := range cs {
			want, err := os.ReadFile(filepath.Join(dir, e.Key, e.Files[i].Name))
			if err != nil {
				t.Fatal(err)
			}
			if c.File.Name != e.Files[i].Name || !bytes.Equal(c.Data, want) {
				t.Fatalf("%s/%s: content differs from source (got %q, %d bytes)", e.Key, e.Files[i].Name, c.File.Name, len(c.Data))
			}
			if c.File.Digest != fmt.Sprintf("sha256:%x", sha256.Sum256(want)) {
				t.Fatalf("%s/%s: digest %s", e.Key, c.File.Name, c.File.Digest)
			}
		}
	}
}

// readTOC decodes the whole TOC member at the start of b.
func readTOC(t testing.TB, b []byte) *estargz.JTOC {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	zr.Multistream(false)
	tr := tar.NewReader(zr)
	if _, err := tr.Next(); err != nil {
		t.Fatal(err)
	}
	var toc estargz.JTOC
	if err := json.NewDecoder(tr).Decode(&toc); err != nil {
		t.Fatal(err)
	}
	return &toc
}

// tritonSource is the Source of a Triton cache's entries.
func tritonSource(dir string, entries []triton.Entry) Source {
	units := make([]kind.Unit, len(entries))
	for i, e := range entries {
		units[i] = kind.Unit{Path: e.Key, Triton: true, Files: e.Files, Kernels: e.Kernels}
	}
	return Source{Kind: kind.Triton, Dir: dir, Units: units}
}
