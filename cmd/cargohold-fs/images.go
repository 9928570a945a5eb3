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
			Open: func(ctx context.Context) (fs.Content, error) { return l.open(ctx, key, f) }}
	}
	return out, nil
}

// open opens stored content. Nothing pins it between the lookup and the
// open, so content evicted meanwhile is fetched again, under the open's ctx
// (the FUSE request: interruption and the lookup deadline); timeout bounds
// the fetch only where ctx has no deadline of its own.
func (l *lower) open(ctx context.Context, key string, f resolver.KeyFile) (fs.Content, error) {
	c, err := l.st.Open(f.Digest)
	if errors.Is(err, iofs.ErrNotExist) {
		if _, ok := ctx.Deadline(); !ok && l.timeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, l.timeout)
			defer cancel()
		}
		if _, err = l.ix.Entry(ctx, key); err == nil {
			c, err = l.st.Open(f.Digest)
		}
	}
	if err != nil {
		return nil, err
	}
	return c, nil
}
