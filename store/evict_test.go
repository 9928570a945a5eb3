package store

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

const unit = 100 // blob size in the eviction tests

func TestEvictionOrder(t *testing.T) {
	s := mustOpen(t, t.TempDir(), 3*unit)
	var bs [8][]byte
	var ds [8]digest.Digest
	for i := range bs {
		bs[i], ds[i] = blob(i, unit)
	}
	const A, B, C, D, E, F, G = 0, 1, 2, 3, 4, 5, 6
	has := func(want ...int) {
		t.Helper()
		set := map[int]bool{}
		for _, i := range want {
			set[i] = true
		}
		for i, d := range ds {
			if s.Has(d) != set[i] {
				t.Fatalf("Has(%c) = %v, want %v", 'A'+i, s.Has(d), set[i])
			}
		}
		checkConsistent(t, s)
	}
	mustPut(t, s, bs[A], ds[A])
	mustPut(t, s, bs[B], ds[B])
	mustPut(t, s, bs[C], ds[C])
	fa, err := s.Open(ds[A]) // A stays open: in use
	if err != nil {
		t.Fatal(err)
	}
	readBack(t, s, ds[B], bs[B]) // B used after C was put
	mustPut(t, s, bs[D], ds[D])  // C is the oldest unused
	has(A, B, D)
	mustPut(t, s, bs[E], ds[E]) // then B
	has(A, D, E)
	mustPut(t, s, bs[F], ds[F]) // then D; A, though oldest, is in use
	has(A, E, F)
	if err := fa.Close(); err != nil { // closing makes A most recently used
		t.Fatal(err)
	}
	mustPut(t, s, bs[G], ds[G])
	has(A, F, G)
	if st := s.Stats(); st.Evictions != 4 || st.Pinned != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestErrFullWhenAllPinned(t *testing.T) {
	s := mustOpen(t, t.TempDir(), 2*unit)
	a, da := blob(1, unit)
	b, db := blob(2, unit)
	c, dc := blob(3, unit)
	mustPut(t, s, a, da)
	mustPut(t, s, b, db)
	fa, err := s.Open(da)
	if err != nil {
		t.Fatal(err)
	}
	fb, err := s.Open(db)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Put(dc, bytes.NewReader(c)); !errors.Is(err, ErrFull) {
		t.Fatalf("got %v, want ErrFull", err)
	}
	if s.Has(dc) || !s.Has(da) || !s.Has(db) || s.Stats().Evictions != 0 {
		t.Fatalf("failed Put changed the store: %+v", s.Stats())
	}
	checkConsistent(t, s)
	fa.Close()
	mustPut(t, s, c, dc) // A is free now and goes
	if s.Has(da) || !s.Has(db) || !s.Has(dc) {
		t.Fatal("wrong entry evicted")
	}
	checkConsistent(t, s)
	fb.Close()
}

// endless counts the bytes taken from it; it ends at 64 MiB so that a
// broken guard fails the test instead of filling the disk.
type endless struct{ n int64 }

func (e *endless) Read(p []byte) (int, error) {
	if e.n >= 64<<20 {
		return 0, io.EOF
	}
	e.n += int64(len(p))
	return len(p), nil
}

func TestBlobLargerThanLimit(t *testing.T) {
	const limit = 64 << 10
	s := mustOpen(t, t.TempDir(), limit)
	src := &endless{}
	d := digest.FromString("whatever")
	if err := s.Put(d, src); !errors.Is(err, ErrFull) {
		t.Fatalf("got %v, want ErrFull", err)
	}
	if src.n > 2*limit { // stopped near the limit, did not fill the disk
		t.Fatalf("read %d bytes before giving up, limit %d", src.n, limit)
	}
	b, d := blob(1, limit+1)
	if err := s.Put(d, bytes.NewReader(b)); !errors.Is(err, ErrFull) {
		t.Fatalf("limit+1 bytes: got %v, want ErrFull", err)
	}
	b, d = blob(2, limit) // exactly the limit fits
	mustPut(t, s, b, d)
	checkConsistent(t, s)
}

// TestLimitNeverExceeded runs a random mix of puts, opens and closes and
// checks the index, the disk and the limit after every step.
func TestLimitNeverExceeded(t *testing.T) {
	const limit = 10 * unit
	s := mustOpen(t, t.TempDir(), limit)
	rng := rand.New(rand.NewPCG(1, 2))
	var open []*File
	var fulls, evicted int
	for step := 0; step < 2000; step++ {
		switch op := rng.IntN(10); {
		case op < 5:
			id := rng.IntN(40)
			b, d := blob(id, (id%7)*unit/2+1) // sizes up to 3 units
			if id == 39 {
				b, d = blob(id, limit+1)
			}
			err := s.Put(d, bytes.NewReader(b))
			if errors.Is(err, ErrFull) {
				fulls++
				if s.Has(d) {
					t.Fatal("ErrFull but committed")
				}
			} else if err != nil {
				t.Fatal(err)
			}
		case op < 8:
			id := rng.IntN(40)
			b, d := blob(id, (id%7)*unit/2+1)
			f, err := s.Open(d)
			if errors.Is(err, fs.ErrNotExist) {
				evicted++
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(f)
			if err != nil || !bytes.Equal(got, b) {
				t.Fatalf("read %s: %v", d, err)
			}
			open = append(open, f)
		default:
			if len(open) > 0 {
				i := rng.IntN(len(open))
				open[i].Close()
				open = append(open[:i], open[i+1:]...)
			}
		}
		checkConsistent(t, s)
		for _, f := range open {
			if !s.Has(f.e.d) {
				t.Fatalf("open entry %s was evicted", f.e.d)
			}
		}
	}
	for _, f := range open {
		f.Close()
	}
	if fulls == 0 || evicted == 0 || s.Stats().Evictions == 0 {
		t.Fatalf("mix too tame: %d ErrFull, %d misses, %+v", fulls, evicted, s.Stats())
	}
}

func TestRestartKeepsRecency(t *testing.T) {
	dir := t.TempDir()
	s := mustOpen(t, dir, 0)
	c := &clock{t: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}
	s.now = c.now
	var bs [4][]byte
	var ds [4]digest.Digest
	for i := range 3 {
		bs[i], ds[i] = blob(i, unit)
		c.t = c.t.Add(time.Hour)
		mustPut(t, s, bs[i], ds[i])
	}
	c.t = c.t.Add(time.Hour)
	readBack(t, s, ds[0], bs[0]) // A used last: B is now the oldest
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = mustOpen(t, dir, 3*unit)
	bs[3], ds[3] = blob(3, unit)
	mustPut(t, s, bs[3], ds[3])
	if s.Has(ds[1]) || !s.Has(ds[0]) || !s.Has(ds[2]) {
		t.Fatal("after restart, eviction did not take the least recently used (B)")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// Reopening with a smaller limit trims at Open, oldest first: C (put
	// at 3h) goes before A (used at 4h) and D (put now).
	s = mustOpen(t, dir, 2*unit)
	if s.Has(ds[2]) || !s.Has(ds[0]) || !s.Has(ds[3]) {
		t.Fatalf("trim at Open took the wrong entry: %+v", s.Stats())
	}
	checkConsistent(t, s)
}
