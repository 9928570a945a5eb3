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
func (s *Store) Put(d digest.Digest, r io.Reader) error { return s.put(d, r, false) }

// PutSpare is Put into spare room only, for content nobody asked for yet
// (prefetch): it evicts nothing, failing with ErrFull when the content does
// not fit under the limit as the store stands, and the new entry goes to
// the back of the eviction list, the first to go when a Put needs room,
// until it is opened. Its mtime is spareTime, so that it stays least
// recent across restarts too.
func (s *Store) PutSpare(d digest.Digest, r io.Reader) error { return s.put(d, r, true) }

// spareTime is the mtime of content put by PutSpare and not opened since.
var spareTime = time.Unix(0, 0)

func (s *Store) put(d digest.Digest, r io.Reader, spare bool) error {
	if err := checkDigest(d); err != nil {
		return fmt.Errorf("store: put %q: %w", d, err)
	}
	s.mu.Lock()
	_, ok := s.entries[d]
	closed, reserve := s.closed, s.reserve
	s.mu.Unlock()
	if closed {
		return fmt.Errorf("store: put %s: %w", d, fs.ErrClosed)
	}
	if ok {
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
	committed := false
	defer func() {
		if !committed {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()

	dg := digest.SHA256.Digester()
	var out io.Writer = tmp
	if reserve > 0 {
		out = diskWriter{s: s, w: tmp} // KeepFree
	}
	w := &guardWriter{w: io.MultiWriter(out, dg.Hash()), max: s.limit}
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
	now := s.now()
	if spare {
		now = spareTime
	}
	// Put's mtime is its recency after a restart; a failure only costs order.
	_ = os.Chtimes(tmp.Name(), now, now)

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("store: put %s: %w", d, fs.ErrClosed)
	}
	if _, ok := s.entries[d]; ok {
		return nil // a concurrent Put of the same content won
	}
	if spare {
		if s.limit > 0 && s.total+n > s.limit {
			return fmt.Errorf("store: put %s: %w: %d bytes, %d of %d bytes used (spare room only)", d, ErrFull, n, s.total, s.limit)
		}
	} else if err := s.makeRoom(n); err != nil {
		return fmt.Errorf("store: put %s: %w", d, err)
	}
	if err := os.Rename(tmp.Name(), final); err != nil {
		return fmt.Errorf("store: put %s: commit: %w", d, err)
	}
	committed = true
	e := &entry{d: d, size: n, stamp: now, spare: spare}
	s.entries[d] = e
	if spare {
		e.elem = s.lru.PushBack(e)
	} else {
		e.elem = s.lru.PushFront(e)
	}
	s.total += n
	s.unpinned += n
	return nil
}

// guardWriter fails with ErrFull once more than max bytes (0: no bound)
// are written, so a blob larger than the whole store never fills the disk.
type guardWriter struct {
	w   io.Writer
	n   int64
	max int64
}

func (g *guardWriter) Write(p []byte) (int, error) {
	if g.max > 0 && g.n+int64(len(p)) > g.max {
		return 0, fmt.Errorf("%w: blob exceeds the limit of %d bytes", ErrFull, g.max)
	}
	n, err := g.w.Write(p)
	g.n += int64(n)
	return n, err
}
