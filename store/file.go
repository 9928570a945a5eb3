package store

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sync"

	"github.com/opencontainers/go-digest"
)

// File is an open stored blob. While any File of a digest is open the
// entry is pinned and never evicted; Close unpins it.
type File struct {
	*os.File
	s    *Store
	e    *entry
	once sync.Once
}

// Size is the blob's length in bytes, known without a stat.
func (f *File) Size() int64 { return f.e.size }

// Close closes the file and unpins its entry. Unpinning happens once even
// if Close is called again.
func (f *File) Close() error {
	err := f.File.Close()
	f.once.Do(func() { f.s.unpin(f.e, false) })
	return err
}

// Open opens the blob d for reading, pins it and marks it most recently
// used. A digest that is not stored gives an error matching fs.ErrNotExist.
func (s *Store) Open(d digest.Digest) (*File, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, fmt.Errorf("store: open %s: %w", d, fs.ErrClosed)
	}
	e, ok := s.entries[d]
	if !ok {
		s.mu.Unlock()
		return nil, fmt.Errorf("store: open %s: %w", d, fs.ErrNotExist)
	}
	s.pin(e)
	e.spare = false // a use: it goes back to the front when closed
	now := s.now()
	touch := now.Sub(e.stamp) >= touchEvery
	if touch {
		e.stamp = now
	}
	s.mu.Unlock()

	p := s.path(d)
	f, err := os.Open(p)
	if err != nil {
		// The file vanished under us (someone cleaned the dir): forget it,
		// so the caller fetches it again instead of failing forever.
		s.unpin(e, errors.Is(err, fs.ErrNotExist))
		return nil, fmt.Errorf("store: open %s: %w", d, err)
	}
	if touch {
		// Persisted recency is a hint for the next restart; ignore failures.
		_ = os.Chtimes(p, now, now)
	}
	return &File{File: f, s: s, e: e}, nil
}

// pin keeps e from being evicted until unpin. s.mu is held.
func (s *Store) pin(e *entry) {
	if e.pins == 0 {
		s.lru.Remove(e.elem)
		e.elem = nil
		s.unpinned -= e.size
	}
	e.pins++
}

// unpin drops one pin; the last one puts the entry back on the eviction
// list as most recently used (spare content, never opened, at the back),
// or forgets it when its file is gone.
func (s *Store) unpin(e *entry, gone bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e.pins--
	if e.pins > 0 {
		return
	}
	if gone && s.entries[e.d] == e {
		s.forget(e)
		return
	}
	if e.spare {
		e.elem = s.lru.PushBack(e)
	} else {
		e.elem = s.lru.PushFront(e)
	}
	s.unpinned += e.size
}
