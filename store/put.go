package store

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/opencontainers/go-digest"
)

// DigestError says a blob's content did not hash to the digest it was put as.
type DigestError struct {
	Want, Got digest.Digest
}

func (e *DigestError) Error() string {
	return fmt.Sprintf("store: digest mismatch: want %s, got %s", e.Want, e.Got)
}

// Put stores the content read from r as d. The content is streamed to a
// temp file and becomes visible only once its sha256 equals d (else a
// *DigestError). On any failure (read, write, full disk, ErrFull, mismatch)
// the temp file is removed and nothing is committed. Putting content that
// is already stored returns nil without reading r. Least recently used
// entries are evicted to make room.
func (s *Store) Put(d digest.Digest, r io.Reader) error { return s.putOne(d, r, false) }

// PutSpare is Put into spare room only, for content nobody asked for yet
// (prefetch): it evicts nothing, failing with ErrFull when the content does
// not fit under the limit as the store stands, and the new entry goes to
// the back of the eviction list, the first to go when a Put needs room,
// until it is opened. Its mtime is spareTime, so that it stays least
// recent across restarts too.
func (s *Store) PutSpare(d digest.Digest, r io.Reader) error { return s.putOne(d, r, true) }

func (s *Store) putOne(d digest.Digest, r io.Reader, spare bool) error {
	b := s.Batch(spare)
	if err := b.Put(d, r); err != nil {
		b.Abort()
		return err
	}
	return b.Commit()
}

// spareTime is the mtime of content put by PutSpare and not opened since.
var spareTime = time.Unix(0, 0)

// Batch puts several blobs that become visible together (Commit) or not at
// all (Abort): a KEY dir's files. Each Put streams its content into a temp
// file and checks its digest, holding no more than one copy buffer in
// memory; the batch as a whole is held to the limit (its staged bytes
// count against it as they are written). Content already stored is pinned
// until the batch ends, so that committing the rest cannot evict it. A
// Batch is used by one goroutine; spare batches (PutSpare) evict nothing.
type Batch struct {
	s      *Store
	spare  bool
	staged []staged
	pinned []*entry
	seen   map[digest.Digest]bool
	bytes  int64 // content staged so far
	done   bool
}

// staged is one verified blob waiting in its temp file.
type staged struct {
	d   digest.Digest
	tmp string
	n   int64
}

// Batch starts a batch of puts; spare as for PutSpare.
func (s *Store) Batch(spare bool) *Batch {
	return &Batch{s: s, spare: spare, seen: map[digest.Digest]bool{}}
}

// Put stages the content read from r as d: streamed into a temp file and
// checked against d (a *DigestError otherwise), not visible before Commit.
// Content already stored (or staged by this batch) is not read. A failed
// Put leaves the batch as it was; the caller may still Commit or Abort it.
func (b *Batch) Put(d digest.Digest, r io.Reader) error {
	s := b.s
	if err := checkDigest(d); err != nil {
		return fmt.Errorf("store: put %q: %w", d, err)
	}
	if b.done {
		return fmt.Errorf("store: put %s: batch ended", d)
	}
	if b.seen[d] {
		return nil
	}
	s.mu.Lock()
	closed, reserve := s.closed, s.reserve
	e, ok := s.entries[d]
	if ok && !closed {
		s.pin(e)
		if !b.spare {
			e.spare = false // asked for: a use
		}
	}
	s.mu.Unlock()
	if closed {
		return fmt.Errorf("store: put %s: %w", d, fs.ErrClosed)
	}
	if ok {
		b.pinned = append(b.pinned, e)
		b.seen[d] = true
		return nil
	}

	final := s.path(d)
	if err := os.MkdirAll(filepath.Dir(final), 0o755); err != nil {
		return fmt.Errorf("store: put %s: %w", d, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(final), tmpPrefix+"*")
	if err != nil {
		return fmt.Errorf("store: put %s: %w", d, err)
	}
	keep := false
	defer func() {
		if !keep {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	dg := digest.SHA256.Digester()
	var out io.Writer = tmp
	if reserve > 0 {
		out = diskWriter{s: s, w: tmp} // KeepFree
	}
	w := &guardWriter{w: io.MultiWriter(out, dg.Hash()), max: s.limit, used: b.bytes}
	n, err := io.Copy(w, r)
	if err != nil {
		return fmt.Errorf("store: put %s: write: %w", d, err)
	}
	if err := tmp.Close(); err != nil { // a delayed write error (e.g. NFS quota) shows up here
		return fmt.Errorf("store: put %s: close: %w", d, err)
	}
	if got := dg.Digest(); got != d {
		return &DigestError{Want: d, Got: got}
	}
	keep = true
	b.staged = append(b.staged, staged{d: d, tmp: tmp.Name(), n: n})
	b.seen[d] = true
	b.bytes += n
	return nil
}

// Commit makes every staged blob visible at once: a demand batch evicts
// least recently used unpinned entries to make room for all of them; a
// spare one fails with ErrFull unless they fit under the limit as the store
// stands. On failure nothing is committed. The batch ends either way.
func (b *Batch) Commit() error {
	if b.done {
		return fmt.Errorf("store: commit: batch ended")
	}
	s := b.s
	now := s.now()
	if b.spare {
		now = spareTime
	}
	for _, st := range b.staged {
		// The mtime is the entry's recency after a restart; a failure only
		// costs order.
		_ = os.Chtimes(st.tmp, now, now)
	}
	s.mu.Lock()
	err := b.commitLocked(now)
	s.mu.Unlock()
	b.end()
	return err
}

// commitLocked renames the staged files into place. s.mu is held.
func (b *Batch) commitLocked(now time.Time) error {
	s := b.s
	if s.closed {
		return fmt.Errorf("store: commit: %w", fs.ErrClosed)
	}
	var n int64
	for _, st := range b.staged {
		if _, ok := s.entries[st.d]; !ok { // else a concurrent Put of the same content won
			n += st.n
		}
	}
	if b.spare {
		if s.limit > 0 && s.total+n > s.limit {
			return fmt.Errorf("store: commit: %w: %d bytes, %d of %d bytes used (spare room only)", ErrFull, n, s.total, s.limit)
		}
	} else if err := s.makeRoom(n); err != nil {
		return fmt.Errorf("store: commit: %w", err)
	}
	for i, st := range b.staged {
		if _, ok := s.entries[st.d]; ok {
			continue
		}
		if err := os.Rename(st.tmp, s.path(st.d)); err != nil {
			return fmt.Errorf("store: commit %s: %w", st.d, err)
		}
		b.staged[i].tmp = "" // committed: end leaves it
		e := &entry{d: st.d, size: st.n, stamp: now, spare: b.spare}
		s.entries[st.d] = e
		if b.spare {
			e.elem = s.lru.PushBack(e)
		} else {
			e.elem = s.lru.PushFront(e)
		}
		s.total += st.n
		s.unpinned += st.n
	}
	return nil
}

// Abort drops every staged blob. Aborting an ended batch does nothing.
func (b *Batch) Abort() {
	if !b.done {
		b.end()
	}
}

// end removes the temp files left and unpins what the batch pinned.
func (b *Batch) end() {
	b.done = true
	for _, st := range b.staged {
		if st.tmp != "" {
			os.Remove(st.tmp)
		}
	}
	for _, e := range b.pinned {
		b.s.unpin(e, false)
	}
	b.staged, b.pinned = nil, nil
}

// guardWriter fails with ErrFull once more than max bytes (0: no bound)
// would be held, counting used bytes held already, so that a blob (or a
// batch) larger than the whole store never fills the disk.
type guardWriter struct {
	w    io.Writer
	n    int64
	used int64
	max  int64
}

func (g *guardWriter) Write(p []byte) (int, error) {
	if g.max > 0 && g.used+g.n+int64(len(p)) > g.max {
		return 0, fmt.Errorf("%w: content exceeds the limit of %d bytes", ErrFull, g.max)
	}
	n, err := g.w.Write(p)
	g.n += int64(n)
	return n, err
}
