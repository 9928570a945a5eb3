package store

import (
	"bytes"
	"errors"
	"testing"
)

// TestBatchAllOrNothing: a batch's blobs show only at Commit; a failed Put
// or an Abort leaves nothing behind; content already stored is pinned while
// the batch runs, so that committing the rest evicts other entries first.
func TestBatchAllOrNothing(t *testing.T) {
	dir := t.TempDir()
	s := mustOpen(t, dir, 1000)
	old, dold := blob(1, 300)
	mustPut(t, s, old, dold)
	kept, dkept := blob(2, 300)
	mustPut(t, s, kept, dkept)

	b := s.Batch(false)
	if err := b.Put(dkept, noRead{t}); err != nil { // stored: pinned, not read
		t.Fatal(err)
	}
	x, dx := blob(3, 300)
	y, dy := blob(4, 300)
	for _, c := range []digestOf{{dx, x}, {dy, y}} {
		if err := b.Put(c.d, bytes.NewReader(c.b)); err != nil {
			t.Fatal(err)
		}
	}
	if s.Has(dx) || s.Has(dy) {
		t.Fatal("staged content visible before Commit")
	}
	// A bad Put leaves the batch as it was.
	z, _ := blob(5, 10)
	var de *DigestError
	if err := b.Put(dx.Algorithm().FromBytes([]byte("other")), bytes.NewReader(z)); !errors.As(err, &de) {
		t.Fatalf("put with a wrong digest: %v", err)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	// 900 bytes of 1000: the old unpinned entry went, the pinned one stayed.
	if s.Has(dold) || !s.Has(dkept) || !s.Has(dx) || !s.Has(dy) {
		t.Fatalf("after commit: old %v kept %v x %v y %v; want only old evicted", s.Has(dold), s.Has(dkept), s.Has(dx), s.Has(dy))
	}
	readBack(t, s, dx, x)
	if st := s.Stats(); st.Pinned != 0 {
		t.Errorf("%d entries pinned after the batch ended", st.Pinned)
	}
	checkConsistent(t, s)

	a := s.Batch(false)
	w, dw := blob(6, 100)
	if err := a.Put(dw, bytes.NewReader(w)); err != nil {
		t.Fatal(err)
	}
	a.Abort()
	if s.Has(dw) {
		t.Error("aborted content is stored")
	}
	checkConsistent(t, s)
}

// TestBatchHeldToLimit: the bytes a batch stages count against the limit as
// they are written: a dir larger than the store fails with ErrFull before
// its last file is written, and commits nothing.
func TestBatchHeldToLimit(t *testing.T) {
	s := mustOpen(t, t.TempDir(), 1000)
	b := s.Batch(false)
	x, dx := blob(1, 600)
	if err := b.Put(dx, bytes.NewReader(x)); err != nil {
		t.Fatal(err)
	}
	y, dy := blob(2, 600)
	if err := b.Put(dy, bytes.NewReader(y)); !errors.Is(err, ErrFull) {
		t.Fatalf("second 600 bytes of a batch in a 1000-byte store: %v, want ErrFull", err)
	}
	b.Abort()
	if s.Has(dx) || s.Has(dy) {
		t.Fatal("a failed batch left content")
	}
	checkConsistent(t, s)
}

// TestFits: Fits answers from the limit, what is pinned and the disk.
func TestFits(t *testing.T) {
	s := mustOpen(t, t.TempDir(), 1000)
	x, dx := blob(1, 600)
	mustPut(t, s, x, dx)
	if err := s.Fits(1000); err != nil {
		t.Errorf("Fits(1000) with 600 evictable bytes: %v", err)
	}
	if err := s.Fits(1001); !errors.Is(err, ErrFull) {
		t.Errorf("Fits over the limit: %v, want ErrFull", err)
	}
	f, err := s.Open(dx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Fits(500); !errors.Is(err, ErrFull) {
		t.Errorf("Fits(500) with 600 of 1000 pinned: %v, want ErrFull", err)
	}
	f.Close()

	u := mustOpen(t, t.TempDir(), 0)
	free, err := statfs(u.dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := u.Fits(free + 1<<30); !errors.Is(err, ErrFull) {
		t.Errorf("Fits beyond the free disk space: %v, want ErrFull", err)
	}
	if err := u.Fits(1 << 20); err != nil {
		t.Errorf("Fits(1 MiB) on an unlimited store: %v", err)
	}
}
