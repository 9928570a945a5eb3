package store

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

func TestPutOpenRead(t *testing.T) {
	s := mustOpen(t, t.TempDir(), 0)
	b, d := blob(1, 100_000)
	if s.Has(d) {
		t.Fatal("Has before Put")
	}
	mustPut(t, s, b, d)
	if !s.Has(d) {
		t.Fatal("Has after Put = false")
	}
	readBack(t, s, d, b)
	if s.Size() != int64(len(b)) {
		t.Fatalf("Size = %d, want %d", s.Size(), len(b))
	}
	// Stored content: no-op, the reader is not touched.
	if err := s.Put(d, noRead{t}); err != nil {
		t.Fatal(err)
	}
	empty, de := blob(2, 0)
	mustPut(t, s, empty, de)
	readBack(t, s, de, empty)
	if st := s.Stats(); st.Entries != 2 || st.Pinned != 0 || st.Evictions != 0 {
		t.Fatalf("stats %+v", st)
	}
	checkConsistent(t, s)
}

func TestPutWrongDigestCommitsNothing(t *testing.T) {
	s := mustOpen(t, t.TempDir(), 0)
	b, _ := blob(1, 5000)
	_, other := blob(2, 5000)
	err := s.Put(other, bytes.NewReader(b))
	var de *DigestError
	if !errors.As(err, &de) {
		t.Fatalf("got %v, want *DigestError", err)
	}
	if de.Want != other || de.Got != digest.FromBytes(b) {
		t.Fatalf("DigestError %+v", de)
	}
	if s.Has(other) || s.Size() != 0 {
		t.Fatal("mismatched content was committed")
	}
	_, err = s.Open(other)
	assertNotExist(t, err)
	checkConsistent(t, s)
}

func TestPutReaderFailsLeavesNothing(t *testing.T) {
	s := mustOpen(t, t.TempDir(), 0)
	b, d := blob(1, 300_000)
	boom := errors.New("connection reset")
	err := s.Put(d, &failReader{r: bytes.NewReader(b[:150_000]), err: boom})
	if !errors.Is(err, boom) {
		t.Fatalf("got %v, want the reader's error", err)
	}
	if s.Has(d) {
		t.Fatal("partial content committed")
	}
	checkConsistent(t, s)
	// A short read that ends cleanly is a mismatch, not a commit.
	var de *DigestError
	if err := s.Put(d, bytes.NewReader(b[:1000])); !errors.As(err, &de) {
		t.Fatalf("truncated content: got %v, want *DigestError", err)
	}
	checkConsistent(t, s)
	mustPut(t, s, b, d) // and the store still works
	readBack(t, s, d, b)
}

func TestOpenMissing(t *testing.T) {
	s := mustOpen(t, t.TempDir(), 0)
	_, d := blob(1, 10)
	_, err := s.Open(d)
	assertNotExist(t, err)
}

func TestBadDigests(t *testing.T) {
	s := mustOpen(t, t.TempDir(), 0)
	for _, d := range []digest.Digest{
		"",
		"sha256:xyz",
		"sha256:" + digest.Digest(strings.Repeat("A", 64)),  // upper case is not canonical
		"sha512:" + digest.Digest(strings.Repeat("ab", 64)), // valid form, not our layout
	} {
		if err := s.Put(d, strings.NewReader("x")); err == nil {
			t.Errorf("Put(%q) accepted", d)
		}
		if s.Has(d) {
			t.Errorf("Has(%q) = true", d)
		}
	}
	checkConsistent(t, s)
}

func TestVanishedFileIsForgotten(t *testing.T) {
	s := mustOpen(t, t.TempDir(), 0)
	b, d := blob(1, 1000)
	mustPut(t, s, b, d)
	if err := os.Remove(s.path(d)); err != nil {
		t.Fatal(err)
	}
	_, err := s.Open(d)
	assertNotExist(t, err)
	if s.Has(d) || s.Size() != 0 {
		t.Fatal("vanished entry still indexed")
	}
	mustPut(t, s, b, d) // can be fetched again
	readBack(t, s, d, b)
}

func TestOneStorePerDir(t *testing.T) {
	dir := t.TempDir()
	s := mustOpen(t, dir, 0)
	if s2, err := Open(dir, 0); err == nil {
		s2.Close()
		t.Fatal("second Open of a held dir succeeded")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	mustOpen(t, dir, 0)
}

func TestClosedStore(t *testing.T) {
	s := mustOpen(t, t.TempDir(), 0)
	b, d := blob(1, 1000)
	mustPut(t, s, b, d)
	f, err := s.Open(d)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Open(d); !errors.Is(err, fs.ErrClosed) {
		t.Fatalf("Open after Close: %v", err)
	}
	b2, d2 := blob(2, 10)
	if err := s.Put(d2, bytes.NewReader(b2)); !errors.Is(err, fs.ErrClosed) {
		t.Fatalf("Put after Close: %v", err)
	}
	got, err := io.ReadAll(f) // files opened before stay usable
	if err != nil || !bytes.Equal(got, b) {
		t.Fatalf("read after store Close: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestRestartFindsContentDropsTemps(t *testing.T) {
	dir := t.TempDir()
	s := mustOpen(t, dir, 0)
	a, da := blob(1, 4000)
	b, db := blob(2, 7000)
	mustPut(t, s, a, da)
	mustPut(t, s, b, db)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// What a crash mid-Put leaves behind, plus a stray file that is not ours.
	shard := filepath.Dir(s.path(da))
	if err := os.WriteFile(filepath.Join(shard, tmpPrefix+"12345"), []byte("half a blob"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, algDir, "README"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}

	s = mustOpen(t, dir, 0)
	if _, other := onDisk(t, dir); len(other) != 1 || other[0] != "README" {
		t.Fatalf("after restart, non-blob files: %v (want only README)", other)
	}
	if !s.Has(da) || !s.Has(db) || s.Size() != int64(len(a)+len(b)) {
		t.Fatalf("restart lost content: %+v", s.Stats())
	}
	readBack(t, s, da, a)
	readBack(t, s, db, b)
}
