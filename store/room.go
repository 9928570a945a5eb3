package store

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// Room left for content nobody asked for yet (prefetch): spare content must
// not push the disk to full, so a reserve of the file system stays free.
const (
	reserveMin      = 256 << 20 // bytes
	reserveFraction = 20        // 1/20 = 5% of the file system
)

// Room returns how many more bytes PutSpare can take: what is left under
// the limit (none when at or over it), and at most the file system's free
// space less a reserve (5% of its size, at least 256 MiB). Demand Puts are
// not held to the reserve.
func (s *Store) Room() (int64, error) {
	var fs unix.Statfs_t
	if err := unix.Statfs(s.dir, &fs); err != nil {
		return 0, fmt.Errorf("store: room: %w", err)
	}
	bs := int64(fs.Bsize)
	reserve := max(int64(fs.Blocks)*bs/reserveFraction, reserveMin)
	room := max(int64(fs.Bavail)*bs-reserve, 0)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.limit > 0 {
		room = min(room, max(s.limit-s.total, 0))
	}
	return room, nil
}

// Fits says whether n more bytes of content could be put now, evicting
// what is not in use: nil, or an error wrapping ErrFull that says why not
// (more than the limit, more than the limit less what is pinned, or more
// than the file system's free space, less the KeepFree reserve, plus what
// could be evicted). A caller checks it before it reads or allocates
// anything for the content; Put still enforces the limit as it writes.
func (s *Store) Fits(n int64) error {
	s.mu.Lock()
	limit, pinned, unpinned, reserve := s.limit, s.total-s.unpinned, s.unpinned, s.reserve
	s.mu.Unlock()
	switch {
	case limit > 0 && n > limit:
		return fmt.Errorf("%w: %d bytes, more than the limit of %d", ErrFull, n, limit)
	case limit > 0 && n > limit-pinned:
		return fmt.Errorf("%w: %d bytes, %d of the limit of %d in use", ErrFull, n, pinned, limit)
	}
	free, err := statfs(s.dir)
	if err != nil {
		return fmt.Errorf("store: free space: %w", err)
	}
	if room := free + unpinned - reserve; n > room {
		return fmt.Errorf("%w: %d bytes, %d free on disk (keeping %d free, %d evictable)", ErrFull, n, free, reserve, unpinned)
	}
	return nil
}
