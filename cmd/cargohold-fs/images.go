package main

import (
	"context"
	"fmt"
	"time"

	"cargohold/catalog"
	"cargohold/fs"
)

// images adapts the catalog to the filesystem's view of image content
// (fs.Lower); the work is the catalog's.
type images struct {
	cat     *catalog.Catalog
	timeout time.Duration // bounds a refetch on open where the FUSE request has no deadline
	act     *activity     // told of every call: the status writer wakes up for it
}

var _ fs.Lower = (*images)(nil)

func (l *images) Keys() []string {
	l.act.poke()
	return l.cat.Keys()
}

// Has answers from the catalog's snapshot; before the first one is loaded
// it waits for it (within ctx).
func (l *images) Has(ctx context.Context, key string) (bool, error) {
	select {
	case <-l.cat.Ready():
	case <-ctx.Done():
		return false, fmt.Errorf("catalog not ready: %w", ctx.Err())
	}
	return l.cat.Has(key), nil
}

func (l *images) Entry(ctx context.Context, key string) ([]fs.LowerFile, error) {
	l.act.poke()
	files, err := l.cat.Entry(ctx, key)
	if err != nil {
		return nil, err
	}
	out := make([]fs.LowerFile, len(files))
	for i, f := range files {
		out[i] = fs.LowerFile{Name: f.Name, Size: f.Size, Mode: f.Mode, Group: f.Group,
			Open: func(ctx context.Context) (fs.Content, error) {
				l.act.poke()
				return l.cat.Open(ctx, key, f, l.timeout)
			}}
	}
	return out, nil
}
