package layer

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"math/rand"
	"slices"
	"testing"
)

func TestOpenTarPlain(t *testing.T) {
	k1, k2 := keyN(t, 1), keyN(t, 2)
	tarBytes := makeTar(t,
		tarEntry{Name: "./", Type: tar.TypeDir},
		tarEntry{Name: "etc/", Type: tar.TypeDir},
		tarEntry{Name: "etc/hostname", Body: []byte("box\n")},
		tarEntry{Name: "bin/sh", Type: tar.TypeSymlink, Link: "/bin/busybox"},
		tarEntry{Name: "dev/null", Type: tar.TypeChar},
		tarEntry{Name: "./" + Prefix, Type: tar.TypeDir},
		tarEntry{Name: "./" + Prefix + k1 + "/", Type: tar.TypeDir},
		tarEntry{Name: "./" + Prefix + k1 + "/b.ptx", Body: []byte("old ptx")},
		tarEntry{Name: Prefix + k2 + "/x.so", Body: []byte("\x7fELF"), Mode: 0o4755},
		tarEntry{Name: "./" + Prefix + k1 + "/a.json", Body: []byte(`{"a": 1}`)},
		tarEntry{Name: "./" + Prefix + k1 + "/b.ptx", Body: []byte("new ptx")}, // later wins
		tarEntry{Name: Prefix + k1 + "/empty"},
		tarEntry{Name: Prefix + "stray.txt", Body: []byte("x")},
		tarEntry{Name: Prefix + "tmp.pid_1_2/", Type: tar.TypeDir}, // local-only: not named
		tarEntry{Name: Prefix + "notakey/", Type: tar.TypeDir},
		tarEntry{Name: Prefix + k1 + "/sub/deep", Body: []byte("x")},
		tarEntry{Name: "stargz.index.json", Body: []byte("{}")},
		tarEntry{Name: ".no.prefetch.landmark", Body: []byte{0xf}},
	)
	ra := bytes.NewReader(tarBytes)
	idx, err := Open(ra, int64(len(tarBytes)), "")
	if err != nil {
		t.Fatal(err)
	}
	if idx.Format != FormatTar || len(idx.Dirs) != 2 {
		t.Fatalf("format %s, %d dirs", idx.Format, len(idx.Dirs))
	}
	wantSkipped := []string{"etc/", "etc/hostname", "bin/sh", "dev/null", Prefix + "stray.txt", Prefix + "notakey/", Prefix + k1 + "/sub/deep"}
	if !slices.Equal(idx.Skipped, wantSkipped) {
		t.Fatalf("skipped %q\nwant %q", idx.Skipped, wantSkipped)
	}
	cs := readDir(t, ra, idx.Dirs[k1])
	got := ""
	for _, c := range cs {
		got += fmt.Sprintf("%s=%q ", c.File.Name, c.Data)
		if c.File.Digest == "" {
			t.Errorf("%s: no digest", c.File.Name)
		}
	}
	if got != `a.json="{\"a\": 1}" b.ptx="new ptx" empty="" ` {
		t.Fatalf("got %s", got)
	}
	if idx.Dirs[k1].Files[1].Digest == "" {
		t.Error("small body read but no digest recorded")
	}
	if m := idx.Dirs[k2].Files[0].Mode; m != 0o755 {
		t.Errorf("setuid mode kept: %o", m)
	}

	// A flipped byte in a body with a known digest is caught.
	d := idx.Dirs[k1]
	span := bytes.Clone(tarBytes[d.Offset:d.End])
	span[d.Files[0].Offset-d.Offset] ^= 1
	var ve *VerifyError
	if _, err := d.Read(span); !errors.As(err, &ve) || ve.File != "a.json" {
		t.Fatalf("corrupt body: %v", err)
	}
}

func TestOpenTarLargeFilesReadLittle(t *testing.T) {
	rnd := rand.New(rand.NewSource(2))
	var entries []tarEntry
	bodies := map[string][]byte{}
	for i := range 8 {
		key := keyN(t, i)
		big := make([]byte, 4<<20+i*1000)
		rnd.Read(big[:4096])
		small := []byte(fmt.Sprintf("small %d", i))
		bodies[key+"/lib.so"], bodies[key+"/meta"] = big, small
		entries = append(entries,
			tarEntry{Name: Prefix + key + "/", Type: tar.TypeDir},
			tarEntry{Name: Prefix + key + "/lib.so", Body: big},
			tarEntry{Name: Prefix + key + "/meta", Body: small})
	}
	tarBytes := makeTar(t, entries...)
	for _, block := range []int{0, 64 << 10} {
		ra := &countingReaderAt{ra: bytes.NewReader(tarBytes)}
		idx, err := OpenTar(ra, int64(len(tarBytes)), block)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("block %d: %d reads, %d of %d bytes", block, ra.reads, ra.bytes, len(tarBytes))
		if ra.bytes*20 > int64(len(tarBytes)) {
			t.Errorf("block %d: read %d of %d bytes", block, ra.bytes, len(tarBytes))
		}
		for key, d := range idx.Dirs {
			if d.Files[0].Digest != "" || d.Files[1].Digest == "" {
				t.Errorf("%s: digests %q %q: want big unknown, small known", key, d.Files[0].Digest, d.Files[1].Digest)
			}
			cs := readDir(t, ra, d)
			for _, c := range cs {
				if !bytes.Equal(c.Data, bodies[key+"/"+c.File.Name]) {
					t.Fatalf("%s/%s differs", key, c.File.Name)
				}
			}
		}
	}
}

func TestOpenTarTruncatedAndGarbage(t *testing.T) {
	key := keyN(t, 1)
	tarBytes := makeTar(t, tarEntry{Name: Prefix + key + "/f", Body: bytes.Repeat([]byte("x"), 3000)})
	for _, n := range []int{100, 512, 700, 3000} {
		if _, err := OpenTar(bytes.NewReader(tarBytes[:n]), int64(n), 1024); err == nil {
			t.Errorf("cut to %d: no error", n)
		}
	}
	junk := bytes.Repeat([]byte("not a tar "), 100)
	if _, err := Open(bytes.NewReader(junk), int64(len(junk)), ""); err == nil {
		t.Error("junk: no error")
	}
	// A reader that lies about its size.
	if _, err := OpenTar(bytes.NewReader(tarBytes[:1000]), int64(len(tarBytes)), 0); err == nil {
		t.Error("short reader: no error")
	}
}

// TestOpenTarOfEStargz: an eStargz decompressed is a plain tar whose
// landmark and TOC entries are ignored; small files cost about one read per
// block.
func TestOpenTarOfEStargz(t *testing.T) {
	dir := t.TempDir()
	genCache(t, dir, 320)
	blob, _ := build(t, dir)
	raw := gunzip(t, blob)
	ra := &countingReaderAt{ra: bytes.NewReader(raw)}
	idx, err := OpenTar(ra, int64(len(raw)), 256<<10)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d reads, %d of %d bytes", ra.reads, ra.bytes, len(raw))
	if maxReads := len(raw)/(256<<10) + 1; ra.reads > maxReads {
		t.Errorf("%d reads, want at most %d", ra.reads, maxReads)
	}
	if len(idx.Skipped) != 0 {
		t.Errorf("skipped %q", idx.Skipped)
	}
	for _, d := range idx.Dirs {
		for _, f := range d.Files {
			if f.Digest == "" {
				t.Fatalf("%s/%s: no digest though every body was read", d.Key, f.Name)
			}
		}
	}
	checkAgainstSource(t, bytes.NewReader(raw), idx, dir)
}
