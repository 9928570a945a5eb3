package store

import (
	"bytes"
	"errors"
	"testing"

	"github.com/opencontainers/go-digest"
)

// TestPutSpareEvictsNothing: spare content goes only into free room under
// the limit, never at the cost of what is stored, open or not.
func TestPutSpareEvictsNothing(t *testing.T) {
	s := mustOpen(t, t.TempDir(), 3*unit)
	a, da := blob(1, unit)
	b, db := blob(2, unit)
	c, dc := blob(3, unit)
	d, dd := blob(4, unit)
	mustPut(t, s, a, da)
	mustPut(t, s, b, db)
	if err := s.PutSpare(dc, bytes.NewReader(c)); err != nil {
		t.Fatal(err)
	}
	if err := s.PutSpare(dd, bytes.NewReader(d)); !errors.Is(err, ErrFull) {
		t.Fatalf("spare put over the limit: %v, want ErrFull", err)
	}
	if !s.Has(da) || !s.Has(db) || !s.Has(dc) || s.Has(dd) || s.Stats().Evictions != 0 {
		t.Fatalf("spare put changed what was stored: %+v", s.Stats())
	}
	if err := s.PutSpare(da, noRead{t}); err != nil { // stored already: nil, unread
		t.Fatal(err)
	}
	checkConsistent(t, s)
}

// TestSpareGoesFirst: content put spare and never opened is the first a
// Put evicts, before older content that was used; once opened it is like
// any other.
func TestSpareGoesFirst(t *testing.T) {
	s := mustOpen(t, t.TempDir(), 3*unit)
	var bs [5][]byte
	var ds [5]digest.Digest
	for i := range bs {
		bs[i], ds[i] = blob(i, unit)
	}
	dA, dB, dC, dD, dE := ds[0], ds[1], ds[2], ds[3], ds[4]
	mustPut(t, s, bs[0], dA) // oldest demand content
	if err := s.PutSpare(dB, bytes.NewReader(bs[1])); err != nil {
		t.Fatal(err)
	}
	if err := s.PutSpare(dC, bytes.NewReader(bs[2])); err != nil {
		t.Fatal(err)
	}
	readBack(t, s, dC, bs[2]) // C is used: no longer spare
	mustPut(t, s, bs[3], dD)  // needs room: B (spare) goes, not A
	if !s.Has(dA) || s.Has(dB) || !s.Has(dC) || !s.Has(dD) {
		t.Fatalf("wrong eviction: A %v B %v C %v D %v", s.Has(dA), s.Has(dB), s.Has(dC), s.Has(dD))
	}
	mustPut(t, s, bs[4], dE) // then the least recently used: A
	if s.Has(dA) || !s.Has(dC) || !s.Has(dD) || !s.Has(dE) {
		t.Fatal("after the spare entry, eviction did not take the least recently used")
	}
	checkConsistent(t, s)
}

// TestSpareStaysLastAfterRestart: a restart orders by mtime, and spare
// content carries the oldest one.
func TestSpareStaysLastAfterRestart(t *testing.T) {
	dir := t.TempDir()
	s := mustOpen(t, dir, 0)
	a, da := blob(1, unit)
	b, db := blob(2, unit)
	c, dc := blob(3, unit)
	mustPut(t, s, a, da)
	if err := s.PutSpare(db, bytes.NewReader(b)); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = mustOpen(t, dir, 2*unit)
	mustPut(t, s, c, dc)
	if !s.Has(da) || s.Has(db) || !s.Has(dc) {
		t.Fatal("after a restart, the spare entry was not the first to go")
	}
}

func TestRoom(t *testing.T) {
	s := mustOpen(t, t.TempDir(), 3*unit)
	if r, err := s.Room(); err != nil || r != 3*unit {
		t.Fatalf("Room of an empty store = %d, %v; want the limit %d", r, err, 3*unit)
	}
	a, da := blob(1, unit)
	mustPut(t, s, a, da)
	if r, _ := s.Room(); r != 2*unit {
		t.Fatalf("Room = %d, want %d", r, 2*unit)
	}
	u := mustOpen(t, t.TempDir(), 0)
	r, err := u.Room()
	if err != nil || r < 0 {
		t.Fatalf("Room of an unbounded store = %d, %v", r, err)
	}
}
