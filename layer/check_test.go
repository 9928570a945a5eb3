package layer

import (
	"cargohold/kind"

	"archive/tar"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/containerd/stargz-snapshotter/estargz"
)

// TestUnsafeEntries runs every guard through every reader: OpenTar, Open of
// the same tar, Open of it as eStargz, Walk of the tar and of its gzip.
func TestUnsafeEntries(t *testing.T) {
	key := keyN(t, 9)
	dir := Prefix + key + "/"
	good := tarEntry{Name: dir + "f", Body: []byte("ok")}
	cases := []struct {
		name    string
		entry   tarEntry
		estargz bool // the estargz writer can carry it
	}{
		{"dotdot outside", tarEntry{Name: "../evil", Body: []byte("x")}, true},
		{"dotdot inside", tarEntry{Name: dir + "../../etc/passwd", Body: []byte("x")}, true},
		{"dotdot dir", tarEntry{Name: "a/../../", Type: tar.TypeDir}, true},
		{"absolute", tarEntry{Name: "/etc/passwd", Body: []byte("x")}, true},
		{"absolute cache", tarEntry{Name: "/" + dir + "g", Body: []byte("x")}, true},
		{"symlink", tarEntry{Name: dir + "g", Type: tar.TypeSymlink, Link: "/etc/passwd"}, true},
		{"symlink key dir", tarEntry{Name: Prefix + keyN(t, 10), Type: tar.TypeSymlink, Link: "/tmp"}, true},
		{"symlink cache dir", tarEntry{Name: "io.triton.cache", Type: tar.TypeSymlink, Link: "/"}, true},
		{"hardlink", tarEntry{Name: dir + "g", Type: tar.TypeLink, Link: dir + "f"}, true},
		{"char device", tarEntry{Name: dir + "tty", Type: tar.TypeChar}, true},
		{"block device", tarEntry{Name: dir + "sda", Type: tar.TypeBlock}, true},
		{"fifo", tarEntry{Name: dir + "fifo", Type: tar.TypeFifo}, true},
		{"contiguous file type", tarEntry{Name: dir + "c", Type: tar.TypeCont}, false},
		{"double slash", tarEntry{Name: Prefix + key + "//g", Body: []byte("x")}, true},
		{"dot element", tarEntry{Name: dir + "./g", Body: []byte("x")}, true},
		// A file name no file system holds (NAME_MAX): listed, never opened.
		{"name over 255 bytes", tarEntry{Name: dir + strings.Repeat("n", 300), Body: []byte("x")}, true},
		{"newline in name", tarEntry{Name: dir + "a\nb.json", Body: []byte("x")}, true},
		{"control character in name", tarEntry{Name: dir + "a\x1b[2Jb", Body: []byte("x")}, true},
		{"DEL in name", tarEntry{Name: dir + "a\x7fb", Body: []byte("x")}, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tarBytes := makeTar(t, tarEntry{Name: dir, Type: tar.TypeDir}, good, c.entry)
			check := func(how string, err error) {
				t.Helper()
				var ue *UnsafeEntryError
				if !errors.As(err, &ue) {
					t.Fatalf("%s: err %v, want *UnsafeEntryError", how, err)
				}
			}
			_, err := OpenTar(bytes.NewReader(tarBytes), int64(len(tarBytes)), 0)
			check("OpenTar", err)
			_, err = Open(bytes.NewReader(tarBytes), int64(len(tarBytes)), "")
			check("Open tar", err)
			check("Walk tar", Walk(bytes.NewReader(tarBytes), discardFile))
			check("Walk gzip", Walk(bytes.NewReader(gzipBytes(t, tarBytes)), discardFile))
			if c.estargz {
				esgz := estargzOf(t, tarBytes)
				_, err = Open(bytes.NewReader(esgz), int64(len(esgz)), "")
				check("Open estargz", err)
				check("Walk estargz", Walk(bytes.NewReader(esgz), discardFile))
			}
		})
	}
}

// TestUnsafeTOCNames covers names archive/tar cannot write but a TOC can
// hold.
func TestUnsafeTOCNames(t *testing.T) {
	dir := Prefix + keyN(t, 9) + "/"
	for _, name := range []string{dir + "g/", dir + "g\x00h", "/" + dir + "g", dir + "../g"} {
		blob := tocBlob(t, nil, &estargz.TOCEntry{Name: name, Type: "reg"})
		_, err := Open(bytes.NewReader(blob), int64(len(blob)), "")
		var ue *UnsafeEntryError
		if !errors.As(err, &ue) {
			t.Errorf("%q: err %v, want *UnsafeEntryError", name, err)
		}
	}
}

func discardFile(_ kind.Kind, key string, f File, r io.Reader) error {
	_, err := io.Copy(io.Discard, r)
	return err
}

// TestOutsideEntriesSkipped: what lies outside io.triton.cache/ is no error,
// whatever it is, in every format.
func TestOutsideEntriesSkipped(t *testing.T) {
	key := keyN(t, 9)
	tarBytes := makeTar(t,
		tarEntry{Name: "usr/bin/sh", Type: tar.TypeSymlink, Link: "../../bin/busybox"},
		tarEntry{Name: "usr/lib/libc.so", Type: tar.TypeLink, Link: "usr/lib/libc.so.6"},
		tarEntry{Name: "dev/null", Type: tar.TypeChar},
		tarEntry{Name: "run/fifo", Type: tar.TypeFifo},
		tarEntry{Name: "io.triton.cachex/" + key + "/f", Body: []byte("x")},
		tarEntry{Name: Prefix + key + "/f", Body: []byte("ok")},
	)
	esgz := estargzOf(t, tarBytes)
	for how, blob := range map[string][]byte{"tar": tarBytes, "estargz": esgz} {
		idx, err := Open(bytes.NewReader(blob), int64(len(blob)), "")
		if err != nil {
			t.Fatalf("%s: %v", how, err)
		}
		if len(idx.Skipped) != 5 || len(idx.Dirs) != 1 {
			t.Fatalf("%s: skipped %q, %d dirs", how, idx.Skipped, len(idx.Dirs))
		}
		n := 0
		if err := Walk(bytes.NewReader(blob), func(kind.Kind, string, File, io.Reader) error { n++; return nil }); err != nil || n != 1 {
			t.Fatalf("%s: Walk: %d files, %v", how, n, err)
		}
	}
}
