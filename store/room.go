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
