// Package cachetest holds the test helpers that several packages' tests
// share: the shared real Triton and vLLM caches, one tar builder (hostile
// entries included) and a byte-for-byte cache comparison. Tests only.
package cachetest

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"

	"cargohold/triton"
)

// Testdata is the path of a shared real Triton cache
// (../shared/testdata/triton-cache/NAME). Absent data skips the test, and
// fails it in CI.
func Testdata(t testing.TB, name string) string {
	t.Helper()
	return shared(t, "triton-cache", name)
}

// VLLMTestdata is the path of a shared real vLLM cache root (the dir that
// holds torch_compile_cache/): ../shared/testdata/vllm/NAME, see its
// README.md. Absent data skips the test, and fails it in CI.
func VLLMTestdata(t testing.TB, name string) string {
	t.Helper()
	return shared(t, "vllm", name)
}

func shared(t testing.TB, kind, name string) string {
	t.Helper()
	_, self, _, _ := runtime.Caller(0)
	d := filepath.Join(filepath.Dir(self), "..", "..", "..", "shared", "testdata", kind, name)
	if _, err := os.Stat(d); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("shared test data missing: %v", err)
		}
		t.Skipf("shared test data missing: %v", err)
	}
	return d
}

// Entry is one tar entry; Type 0 is a regular file, Mode 0 is 0644.
type Entry struct {
	Name string
	Type byte
	Body []byte
	Mode int64
	Link string
}

// Tar builds an uncompressed tar of entries, exactly as given.
func Tar(t testing.TB, entries ...Entry) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range entries {
		h := &tar.Header{Name: e.Name, Typeflag: e.Type, Mode: e.Mode, Linkname: e.Link, Size: int64(len(e.Body))}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if h.Typeflag != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatalf("tar header %q: %v", e.Name, err)
		}
		if _, err := tw.Write(e.Body); err != nil && h.Size > 0 {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// KeyDirTar builds an uncompressed tar of the KEY dirs keys of cache dir
// dir under io.triton.cache/, as other tools build layers: PAX headers,
// zero times, no particular order of files beyond the directory listing.
func KeyDirTar(t testing.TB, dir string, keys []string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	hdr := func(h *tar.Header) {
		h.ModTime, h.Format = time.Unix(0, 0), tar.FormatPAX
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
	}
	const prefix = "io.triton.cache/"
	hdr(&tar.Header{Name: prefix, Typeflag: tar.TypeDir, Mode: 0o755})
	for _, k := range keys {
		hdr(&tar.Header{Name: prefix + k + "/", Typeflag: tar.TypeDir, Mode: 0o755})
		des, err := os.ReadDir(filepath.Join(dir, k))
		if err != nil {
			t.Fatal(err)
		}
		for _, de := range des {
			data, err := os.ReadFile(filepath.Join(dir, k, de.Name()))
			if err != nil {
				t.Fatal(err)
			}
			hdr(&tar.Header{Name: prefix + k + "/" + de.Name(), Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(data))})
			if _, err := tw.Write(data); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// Gzip compresses b.
func Gzip(t testing.TB, b []byte) []byte {
	t.Helper()
	var out bytes.Buffer
	zw := gzip.NewWriter(&out)
	if _, err := zw.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// Compare checks that every file of the cache dir src is in got with the
// same bytes, group files after rewriting their child paths to got.
func Compare(t testing.TB, src, got string) {
	t.Helper()
	abs, err := filepath.Abs(got)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	err = filepath.Walk(src, func(p string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		want, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if triton.IsGroupFile(info.Name()) {
			if want, err = triton.RewriteGroup(want, abs); err != nil {
				return err
			}
		}
		have, err := os.ReadFile(filepath.Join(got, rel))
		if err != nil {
			return err
		}
		if !bytes.Equal(have, want) {
			t.Errorf("%s differs from the source", rel)
		}
		n++
		return nil
	})
	if err != nil || n == 0 {
		t.Fatalf("compare %s with %s: %d files, %v", src, got, n, err)
	}
}

// RewriteTOC returns an eStargz blob with its TOC edited by edit (the data
// before the TOC stays byte for byte) and the new TOC's digest, as the
// layer's toc.digest annotation would give it: hostile or foreign eStargz
// layers (TOCs without digests, TOCs that disagree with the tar).
func RewriteTOC(t testing.TB, blob []byte, edit func(*estargz.JTOC)) ([]byte, string) {
	t.Helper()
	if len(blob) < estargz.FooterSize {
		t.Fatalf("rewrite TOC: blob of %d bytes", len(blob))
	}
	_, tocOff, _, err := (&estargz.GzipDecompressor{}).ParseFooter(blob[len(blob)-estargz.FooterSize:])
	if err != nil {
		t.Fatalf("rewrite TOC: footer: %v", err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(blob[tocOff : len(blob)-estargz.FooterSize]))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	if _, err := tr.Next(); err != nil {
		t.Fatal(err)
	}
	var toc estargz.JTOC
	if err := json.NewDecoder(tr).Decode(&toc); err != nil {
		t.Fatalf("rewrite TOC: %v", err)
	}
	edit(&toc)
	var out bytes.Buffer
	out.Write(blob[:tocOff])
	d, err := estargz.NewGzipCompressorWithLevel(gzip.BestCompression).WriteTOCAndFooter(&out, tocOff, &toc, nil)
	if err != nil {
		t.Fatal(err)
	}
	return out.Bytes(), d.String()
}
