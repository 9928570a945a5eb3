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

// Dirs lists the dirs the catalog's units show below rel: for a Triton
// root, its KEYs.
func (l *images) Dirs(rel string) []string {
	l.act.poke()
	return l.cat.Dir(rel).Children
}

// Dir answers from the catalog's snapshot (catalog.Dir); before the first
// one is loaded it waits for it (within ctx).
func (l *images) Dir(ctx context.Context, rel string) (fs.LowerDir, error) {
	select {
	case <-l.cat.Ready():
	case <-ctx.Done():
		return fs.LowerDir{}, fmt.Errorf("catalog not ready: %w", ctx.Err())
	}
	d := l.cat.Dir(rel)
	return fs.LowerDir{Exists: d.Exists, Unit: d.Unit}, nil
}

func (l *images) Entry(ctx context.Context, rel string) ([]fs.LowerFile, error) {
	l.act.poke()
	files, err := l.cat.Entry(ctx, rel)
	if err != nil {
		return nil, err
	}
	out := make([]fs.LowerFile, len(files))
	for i, f := range files {
		out[i] = fs.LowerFile{Name: f.Name, Size: f.Size, Mode: f.Mode, Rewrite: f.Rewrite,
			Open: func(ctx context.Context) (fs.Content, error) {
				l.act.poke()
				return l.cat.Open(ctx, rel, f, l.timeout)
			}}
	}
	return out, nil
}
