package store

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// blob makes n bytes of content unique to seed, and its digest.
func blob(seed, n int) ([]byte, digest.Digest) {
	b := make([]byte, n)
	var s [8]byte
	binary.LittleEndian.PutUint64(s[:], uint64(seed))
	for i := 0; i < n; i += sha256.Size {
		h := sha256.Sum256(append(s[:], byte(i), byte(i>>8), byte(i>>16)))
		copy(b[i:], h[:])
	}
	return b, digest.FromBytes(b)
}

func mustOpen(t *testing.T, dir string, limit int64) *Store {
	t.Helper()
	s, err := Open(dir, limit)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func mustPut(t *testing.T, s *Store, b []byte, d digest.Digest) {
	t.Helper()
	if err := s.Put(d, bytes.NewReader(b)); err != nil {
		t.Fatalf("put %s: %v", d, err)
	}
}

// readBack opens d, reads it in full, checks it against want and closes it.
func readBack(t *testing.T, s *Store, d digest.Digest, want []byte) {
	t.Helper()
	f, err := s.Open(d)
	if err != nil {
		t.Fatalf("open %s: %v", d, err)
	}
	defer f.Close()
	got, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("open %s: content differs (%d bytes, want %d)", d, len(got), len(want))
	}
	if f.Size() != int64(len(want)) {
		t.Fatalf("File.Size = %d, want %d", f.Size(), len(want))
	}
}

// onDisk lists what is under dir/sha256: blob digests with sizes, and any
// other file (temps, strays) by relative path.
func onDisk(t *testing.T, dir string) (blobs map[digest.Digest]int64, other []string) {
	t.Helper()
	blobs = map[digest.Digest]int64{}
	root := filepath.Join(dir, algDir)
	err := filepath.WalkDir(root, func(p string, de fs.DirEntry, err error) error {
		if err != nil || de.IsDir() {
			return err
		}
		info, err := de.Info()
		if err != nil {
			return err
		}
		d := digest.NewDigestFromEncoded(digest.SHA256, de.Name())
		if strings.HasPrefix(de.Name(), tmpPrefix) || d.Validate() != nil {
			rel, _ := filepath.Rel(root, p)
			other = append(other, rel)
			return nil
		}
		blobs[d] = info.Size()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return blobs, other
}

// checkConsistent asserts the index and the disk agree and the limit holds.
func checkConsistent(t *testing.T, s *Store) {
	t.Helper()
	blobs, other := onDisk(t, s.dir)
	if len(other) > 0 {
		t.Fatalf("stray files on disk: %v", other)
	}
	var sum int64
	for d, n := range blobs {
		if !s.Has(d) {
			t.Fatalf("%s on disk but not in the index", d)
		}
		sum += n
	}
	st := s.Stats()
	if st.Entries != len(blobs) || st.Bytes != sum || s.Size() != sum {
		t.Fatalf("index says %d entries/%d bytes, disk has %d/%d", st.Entries, st.Bytes, len(blobs), sum)
	}
	if s.limit > 0 && sum > s.limit {
		t.Fatalf("size %d exceeds the limit %d", sum, s.limit)
	}
}

// clock is a manual time source for recency tests.
type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

// failReader yields n bytes and then fails with err.
type failReader struct {
	r   io.Reader
	err error
}

func (f *failReader) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if err == io.EOF {
		return n, f.err
	}
	return n, err
}

// noRead fails the test if read: Put of stored content must not read.
type noRead struct{ t *testing.T }

func (n noRead) Read([]byte) (int, error) {
	n.t.Error("reader was read for content already stored")
	return 0, io.ErrUnexpectedEOF
}

func assertNotExist(t *testing.T, err error) {
	t.Helper()
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("got %v, want an error matching fs.ErrNotExist", err)
	}
}
