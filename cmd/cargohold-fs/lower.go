package main

import (
	"context"
	"errors"
	iofs "io/fs"
	"time"

	"cargohold/fs"
	"cargohold/resolver"
	"cargohold/store"
)

// lower adapts the resolver's index and the content store to the
// filesystem's view of image content.
type lower struct {
	ix      *resolver.Index
	st      *store.Store
	timeout time.Duration
}

var _ fs.Lower = (*lower)(nil)

func (l *lower) Keys() []string { return l.ix.Keys() }

func (l *lower) Entry(ctx context.Context, key string) ([]fs.LowerFile, error) {
	files, err := l.ix.Entry(ctx, key)
	if err != nil {
		return nil, err
	}
	out := make([]fs.LowerFile, len(files))
	for i, f := range files {
		f := f
		out[i] = fs.LowerFile{Name: f.Name, Size: f.Size, Mode: f.Mode, Group: f.Group,
			Open: func() (fs.Content, error) { return l.open(key, f) }}
	}
	return out, nil
}

// open opens stored content; content evicted since the lookup is fetched
// again (a file open is no lookup, so it gets a deadline of its own).
func (l *lower) open(key string, f resolver.KeyFile) (fs.Content, error) {
	c, err := l.st.Open(f.Digest)
	if errors.Is(err, iofs.ErrNotExist) {
		ctx, cancel := context.WithTimeout(context.Background(), l.timeout)
		defer cancel()
		if _, err = l.ix.Entry(ctx, key); err == nil {
			c, err = l.st.Open(f.Digest)
		}
	}
	if err != nil {
		return nil, err
	}
	return c, nil
}
