package layer

import (
	"cargohold/kind"

	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/stargz-snapshotter/estargz"

	"cargohold/triton"
)

// walkAll collects what Walk passes, by "KEY/file".
func walkAll(t *testing.T, blob []byte) (map[string][]byte, error) {
	t.Helper()
	got := map[string][]byte{}
	err := Walk(bytes.NewReader(blob), func(k kind.Kind, key string, f File, r io.Reader) error {
		if k != kind.Triton {
			t.Errorf("%s/%s: kind %q", key, f.Name, k)
		}
		data, err := io.ReadAll(r)
		if err == nil && int64(len(data)) != f.Size {
			t.Errorf("%s/%s: %d bytes, header says %d", key, f.Name, len(data), f.Size)
		}
		got[key+"/"+f.Name] = data
		return err
	})
	return got, err
}

func TestWalkFormats(t *testing.T) {
	src := testCache(t, "vector-add-cache-rocm")
	blob, _ := build(t, src)
	raw := gunzip(t, blob)
	plainGzip := gzipBytes(t, raw)
	entries, _, err := triton.Scan(src)
	if err != nil {
		t.Fatal(err)
	}
	for how, b := range map[string][]byte{"estargz": blob, "tar": raw, "gzip": plainGzip} {
		got, err := walkAll(t, b)
		if err != nil {
			t.Fatalf("%s: %v", how, err)
		}
		if len(got) != len(entries[0].Files) {
			t.Fatalf("%s: %d files, want %d", how, len(got), len(entries[0].Files))
		}
		for _, f := range entries[0].Files {
			want, err := os.ReadFile(filepath.Join(src, rocmKey, f.Name))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got[rocmKey+"/"+f.Name], want) {
				t.Fatalf("%s: %s differs", how, f.Name)
			}
		}
	}
	// Unread content is drained; fn's error comes back as is.
	stop := errors.New("stop")
	n := 0
	err = Walk(bytes.NewReader(blob), func(kind.Kind, string, File, io.Reader) error {
		if n++; n == 3 {
			return stop
		}
		return nil
	})
	if err != stop || n != 3 {
		t.Fatalf("err %v after %d files", err, n)
	}
	for _, cut := range []int{10, len(blob) / 2, len(raw) / 2} {
		src := blob
		if cut == len(raw)/2 {
			src = raw
		}
		if _, err := walkAll(t, src[:cut]); err == nil {
			t.Errorf("cut to %d: no error", cut)
		}
	}
}

// TestWalkChecksTOC: a stream whose bytes disagree with its eStargz TOC is
// an error once the TOC is reached, naming the file.
func TestWalkChecksTOC(t *testing.T) {
	src := testCache(t, "vector-add-cache")
	blob, _ := build(t, src)
	tocOff, _, ok := parseFooter(blob[len(blob)-estargz.FooterSize:])
	if !ok {
		t.Fatal("no footer")
	}
	toc := readTOC(t, blob[tocOff:])
	for _, e := range toc.Entries {
		if e.Name == Prefix+cudaKey+"/add_kernel.ptx" {
			e.Digest = "sha256:" + string(bytes.Repeat([]byte("0"), 64))
		}
	}
	var b bytes.Buffer
	b.Write(blob[:tocOff])
	if _, err := estargz.NewGzipCompressorWithLevel(6).WriteTOCAndFooter(&b, tocOff, toc, nil); err != nil {
		t.Fatal(err)
	}
	_, err := walkAll(t, b.Bytes())
	var ve *VerifyError
	if !errors.As(err, &ve) || ve.File != "add_kernel.ptx" || ve.Key != cudaKey {
		t.Fatalf("err %v, want VerifyError for add_kernel.ptx", err)
	}
	// Open and Read reject the same blob for the same file.
	tampered := b.Bytes()
	idx, err := Open(bytes.NewReader(tampered), int64(len(tampered)), "")
	if err != nil {
		t.Fatal(err)
	}
	d := idx.Dirs[cudaKey]
	if _, err := d.Read(tampered[d.Offset:d.End]); !errors.As(err, &ve) || ve.File != "add_kernel.ptx" {
		t.Fatalf("Read: err %v", err)
	}
	js, _ := json.Marshal(idx)
	if !bytes.Contains(js, []byte(`"digest":"sha256:000`)) {
		t.Fatal("tampered digest not in the index: the test proves nothing")
	}
}
