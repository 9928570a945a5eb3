package store

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"
)

// KeepFree makes Put keep at least n bytes free (available to unprivileged
// users) on the store's file system, for whatever else lives there (local
// compiles): before writing, Put evicts least recently used unpinned
// entries until its bytes fit above the reserve, and fails with ErrFull,
// committing nothing, when they cannot. 0 (the default) keeps no reserve;
// the file system still says ENOSPC when it is full.
func (s *Store) KeepFree(n int64) {
	s.mu.Lock()
	s.reserve = max(n, 0)
	s.mu.Unlock()
}

// statfs is the bytes available on the store's file system; a variable for
// tests.
var statfs = func(dir string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * st.Bsize, nil
}

// roomOnDisk evicts least recently used unpinned entries until need more
// bytes can be written leaving the reserve free. s.mu is held. Nothing is
// evicted when even evicting everything unpinned would not do (as
// makeRoom).
func (s *Store) roomOnDisk(need int64) error {
	if s.reserve == 0 || need <= 0 {
		return nil
	}
	free, err := statfs(s.dir)
	if err != nil {
		return fmt.Errorf("store: free space: %w", err)
	}
	if free-need >= s.reserve {
		return nil
	}
	if free+s.unpinned-need < s.reserve {
		return fmt.Errorf("%w: %d bytes would leave %d free on disk, below the reserve of %d", ErrFull, need, free-need, s.reserve)
	}
	for free-need < s.reserve && s.lru.Len() > 0 {
		e := s.lru.Back().Value.(*entry)
		if err := s.evict(e); err != nil {
			return err
		}
		free += e.size // blocks may differ a little; statfs says the truth below
	}
	if free, err = statfs(s.dir); err == nil && free-need < s.reserve {
		return fmt.Errorf("%w: %d bytes would leave %d free on disk, below the reserve of %d", ErrFull, need, free-need, s.reserve)
	}
	return err
}

// diskWriter makes room on disk (roomOnDisk) before each write of a Put.
type diskWriter struct {
	s *Store
	w io.Writer
}

func (d diskWriter) Write(p []byte) (int, error) {
	d.s.mu.Lock()
	err := d.s.roomOnDisk(int64(len(p)))
	d.s.mu.Unlock()
	if err != nil {
		return 0, err
	}
	return d.w.Write(p)
}

// evict removes an unpinned entry's file and forgets it. s.mu is held.
func (s *Store) evict(e *entry) error {
	if err := os.Remove(s.path(e.d)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("store: evict %s: %w", e.d, err)
	}
	s.forget(e)
	s.evictions++
	return nil
}
