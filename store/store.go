package store

import (
	"container/list"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// ErrFull says a blob cannot be stored without exceeding the size limit:
// it is larger than the limit, or everything that could be evicted is in use.
var ErrFull = errors.New("store: full")

// touchEvery is how stale a persisted mtime may get before Open refreshes it.
const touchEvery = time.Minute

const (
	algDir    = "sha256"
	tmpPrefix = ".tmp-"
	lockName  = "lock"
)

// Store is a bounded, content-addressed blob store on local disk.
type Store struct {
	// immutable after Open
	dir   string
	limit int64
	lock  *os.File
	now   func() time.Time // replaced by tests before use

	mu        sync.Mutex
	entries   map[digest.Digest]*entry
	lru       list.List // unpinned entries only; front = most recently used
	total     int64     // bytes of all entries
	unpinned  int64     // bytes of entries on lru
	reserve   int64     // KeepFree
	evictions uint64
	closed    bool
}

// entry is one stored blob. Fields are guarded by Store.mu.
type entry struct {
	d     digest.Digest
	size  int64
	pins  int
	stamp time.Time     // last mtime written to disk
	elem  *list.Element // nil while pinned
	spare bool          // put by PutSpare and not opened since: kept at the back of lru
}

// Stats is a snapshot of the store's counters.
type Stats struct {
	Entries   int    `json:"entries"`
	Bytes     int64  `json:"bytes"`
	Pinned    int    `json:"pinned"` // entries with at least one open File
	Evictions uint64 `json:"evictions"`
	Limit     int64  `json:"limit"`
}

// Open opens or creates the store in dir. limit is the most bytes of
// content it keeps; 0 means unlimited. Existing content is found again,
// temp files from a crash are removed, and if the content exceeds limit
// the least recently modified entries are evicted now.
func Open(dir string, limit int64) (*Store, error) {
	if limit < 0 {
		return nil, fmt.Errorf("store: open %s: negative limit %d", dir, limit)
	}
	if err := os.MkdirAll(filepath.Join(dir, algDir), 0o755); err != nil {
		return nil, fmt.Errorf("store: open: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, lockName), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("store: open: %w", err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		return nil, fmt.Errorf("store: open %s: in use by another store: %w", dir, err)
	}
	s := &Store{
		dir:     dir,
		limit:   limit,
		lock:    lock,
		now:     time.Now,
		entries: map[digest.Digest]*entry{},
	}
	if err := s.load(); err != nil {
		lock.Close()
		return nil, err
	}
	s.mu.Lock()
	err = s.makeRoom(0)
	s.mu.Unlock()
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("store: open %s: trim to limit: %w", dir, err)
	}
	return s, nil
}

// load scans the directory: removes temp files, indexes blobs, and orders
// the eviction list by mtime.
func (s *Store) load() error {
	root := filepath.Join(s.dir, algDir)
	shards, err := os.ReadDir(root)
	if err != nil {
		return fmt.Errorf("store: open: %w", err)
	}
	var found []*entry
	for _, sh := range shards {
		if !sh.IsDir() || len(sh.Name()) != 2 {
			continue
		}
		names, err := os.ReadDir(filepath.Join(root, sh.Name()))
		if err != nil {
			return fmt.Errorf("store: open: %w", err)
		}
		for _, n := range names {
			p := filepath.Join(root, sh.Name(), n.Name())
			if strings.HasPrefix(n.Name(), tmpPrefix) {
				if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
					return fmt.Errorf("store: open: remove temp: %w", err)
				}
				continue
			}
			d := digest.NewDigestFromEncoded(digest.SHA256, n.Name())
			if !n.Type().IsRegular() || d.Validate() != nil || n.Name()[:2] != sh.Name() {
				continue // not ours; leave it alone and do not count it
			}
			info, err := n.Info()
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					continue
				}
				return fmt.Errorf("store: open: %w", err)
			}
			found = append(found, &entry{d: d, size: info.Size(), stamp: info.ModTime(), spare: info.ModTime().Equal(spareTime)})
		}
	}
	sort.Slice(found, func(i, j int) bool { return found[i].stamp.Before(found[j].stamp) })
	for _, e := range found { // oldest first, so the newest ends at the front
		s.entries[e.d] = e
		e.elem = s.lru.PushFront(e)
		s.total += e.size
		s.unpinned += e.size
	}
	return nil
}

// Close releases the directory lock. Files already open stay usable;
// Put and Open afterwards fail with fs.ErrClosed.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	if err := s.lock.Close(); err != nil {
		return fmt.Errorf("store: close: %w", err)
	}
	return nil
}

// Has says whether d is stored.
func (s *Store) Has(d digest.Digest) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.entries[d]
	return ok
}

// Size is the total content bytes stored.
func (s *Store) Size() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.total
}

// Stats returns the current counters.
func (s *Store) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Stats{
		Entries:   len(s.entries),
		Bytes:     s.total,
		Pinned:    len(s.entries) - s.lru.Len(),
		Evictions: s.evictions,
		Limit:     s.limit,
	}
}

// path is where d's blob lives.
func (s *Store) path(d digest.Digest) string {
	hex := d.Encoded()
	return filepath.Join(s.dir, algDir, hex[:2], hex)
}

// checkDigest accepts only well-formed sha256 digests, the one layout the
// store has.
func checkDigest(d digest.Digest) error {
	if err := d.Validate(); err != nil {
		return err
	}
	if d.Algorithm() != digest.SHA256 {
		return fmt.Errorf("unsupported algorithm %s", d.Algorithm())
	}
	return nil
}
