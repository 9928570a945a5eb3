package store

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
)

// makeRoom evicts least recently used unpinned entries until size more
// bytes fit under the limit. It evicts nothing when they cannot fit even
// after evicting every unpinned entry. Unlinks happen under s.mu so that a
// concurrent Put of the same digest cannot have its new file removed.
func (s *Store) makeRoom(size int64) error {
	if s.limit == 0 {
		return nil
	}
	if size > s.limit {
		return fmt.Errorf("%w: %d bytes exceed the limit of %d", ErrFull, size, s.limit)
	}
	if s.total-s.unpinned+size > s.limit {
		return fmt.Errorf("%w: %d bytes needed, %d of %d bytes in use", ErrFull, size, s.total-s.unpinned, s.limit)
	}
	for s.total+size > s.limit {
		e := s.lru.Back().Value.(*entry) // non-nil: unpinned bytes cover the excess
		if err := os.Remove(s.path(e.d)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("store: evict %s: %w", e.d, err)
		}
		s.forget(e)
		s.evictions++
	}
	return nil
}

// forget drops an unpinned or dangling entry from the index.
func (s *Store) forget(e *entry) {
	if e.elem != nil {
		s.lru.Remove(e.elem)
		e.elem = nil
		s.unpinned -= e.size
	}
	delete(s.entries, e.d)
	s.total -= e.size
}
