package fs

import (
	"context"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"maps"
	"slices"
	"strings"
	"time"

	"cargohold/kind"
)

// lowerDir is one unit (a Triton KEY dir, a dir of a nested cache) as an
// image holds it. Immutable once built.
type lowerDir struct {
	rel   string
	files map[string]*lowerEntry
}

// lowerEntry is one file of a lowerDir. Immutable once built.
type lowerEntry struct {
	rel  string // the unit's path
	file LowerFile
	mem  bool   // served from data: the content rewritten (group files, vLLM's cache file)
	data []byte // mem: what the view serves
}

// size is the size the view shows: for a rewritten file, after the rewrite.
func (e *lowerEntry) size() int64 {
	if e.mem {
		return int64(len(e.data))
	}
	return e.file.Size
}

// errNoImages answers every unit when the view has no Lower.
var errNoImages = fmt.Errorf("no images: %w", iofs.ErrNotExist)

// Loads that outlive their lookups.
const (
	// maxOrphans bounds the loads that go on with nobody waiting for them;
	// past it, a load nobody waits for any more is canceled.
	maxOrphans = 32
	// loadLimit bounds one load, however long lookups keep asking.
	loadLimit = 10 * time.Minute
)

// pending is one load (Lower.Entry, then the rewrites) of a unit, shared by
// the lookups that want it, at most one per unit. It runs under the
// mount's lifetime, not a lookup's: a lookup that gives up (its deadline,
// or an interruption) leaves it running as an orphan, up to maxOrphans at
// once, so that a unit whose fetch takes longer than a lookup waits is
// found by a later lookup; unmount cancels it.
type pending struct {
	rel    string
	done   chan struct{} // closed once ld and err are set
	ld     *lowerDir
	err    error
	cancel context.CancelFunc

	waiters int  // guarded by view.mu
	orphan  bool // guarded by view.mu
}

// resolve asks the Lower for unit rel within the lookup deadline. The
// deadline holds even when the Lower ignores ctx: the answer is awaited here.
// A load still running when the lookup gives up goes on (pending), and its
// result is handed to the unit's node when it comes (adoptLate). The
// returned error wraps fs.ErrNotExist when no image has the unit, and ctx's
// error when no answer came in time.
func (v *view) resolve(ctx context.Context, rel string) (*lowerDir, error) {
	if v.lower == nil {
		return nil, fmt.Errorf("fs: KEY %s: %w", rel, errNoImages)
	}
	req := ctx
	ctx, cancel := v.bound(ctx)
	defer cancel()
	p := v.join(rel)
	select {
	case <-p.done:
		v.leave(p)
		return p.ld, p.err
	case <-ctx.Done():
		v.leave(p)
	}
	why := fmt.Sprintf("no answer from the images within %s (the fetch goes on)", v.timeout)
	switch {
	case v.life.Err() != nil:
		why = "the mount is going away"
	case req.Err() != nil:
		why = "the lookup was interrupted"
	}
	return nil, fmt.Errorf("fs: KEY %s: %s: %w", rel, why, ctx.Err())
}

// join returns the load of rel in flight, or starts one.
func (v *view) join(rel string) *pending {
	v.mu.Lock()
	defer v.mu.Unlock()
	if p := v.loads[rel]; p != nil {
		p.waiters++
		return p
	}
	lctx, cancel := context.WithTimeout(v.life, loadLimit)
	p := &pending{rel: rel, done: make(chan struct{}), cancel: cancel, waiters: 1}
	v.loads[rel] = p
	go func() {
		ld, err := v.load(lctx, rel)
		cancel()
		v.mu.Lock()
		if v.loads[rel] == p {
			delete(v.loads, rel)
		}
		late := p.orphan
		if late {
			v.orphans--
		}
		v.mu.Unlock()
		p.ld, p.err = ld, err
		close(p.done)
		if late {
			v.adoptLate(rel, ld, err)
		}
	}()
	return p
}

// leave drops a waiter; the last one to leave a load in flight makes it an
// orphan, or cancels it when maxOrphans run already (the next lookup then
// starts afresh).
func (v *view) leave(p *pending) {
	v.mu.Lock()
	defer v.mu.Unlock()
	p.waiters--
	if p.waiters > 0 || p.orphan {
		return
	}
	select {
	case <-p.done:
		return
	default:
	}
	if v.orphans < maxOrphans {
		p.orphan = true
		v.orphans++
		return
	}
	p.cancel()
	if v.loads[p.rel] == p {
		delete(v.loads, p.rel)
	}
}

// adoptLate hands the result of an orphaned load to the unit's node, so
// that the next lookup in the dir sees the files at once: what the kernel
// kept of those names (a "not there") is dropped. It runs outside any
// request (notify.go).
func (v *view) adoptLate(rel string, ld *lowerDir, err error) {
	if err != nil {
		v.log.Info("fs: a KEY fetch that outlived its lookup failed", "key", rel, "err", err)
		return
	}
	v.log.Info("fs: a KEY fetch that outlived its lookup is in; later lookups see it", "key", rel)
	if d := v.findDir(rel); d != nil && d.setLower(ld, true) {
		d.notifyNames(slices.Sorted(maps.Keys(ld.files)))
	}
}

// bound gives a call into the Lower its deadline (Options.LookupTimeout) on
// top of the FUSE request's interruption; unmount cancels it too.
func (v *view) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(ctx, v.timeout)
	stop := context.AfterFunc(v.life, cancel)
	return ctx, func() { stop(); cancel() }
}

// dir asks the Lower what the images show at rel, within the lookup
// deadline.
func (v *view) dir(ctx context.Context, rel string) (LowerDir, error) {
	if v.lower == nil {
		return LowerDir{}, nil
	}
	ctx, cancel := v.bound(ctx)
	defer cancel()
	d, err := v.lower.Dir(ctx, rel)
	if err != nil {
		return LowerDir{}, &imagesError{fmt.Errorf("fs: KEY %s: %w", rel, err)}
	}
	return d, nil
}

// lowerDirs lists the dirs the images show right below rel.
func (v *view) lowerDirs(rel string) []string {
	if v.lower == nil {
		return nil
	}
	return v.lower.Dirs(rel)
}

// load calls Lower.Entry and checks and prepares what it returns, so that a
// unit is complete before anyone sees it.
func (v *view) load(ctx context.Context, key string) (*lowerDir, error) {
	files, err := v.lower.Entry(ctx, key)
	if err != nil {
		return nil, &imagesError{fmt.Errorf("fs: KEY %s: %w", key, err)}
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("fs: KEY %s: the image lists no files", key)
	}
	ld := &lowerDir{rel: key, files: make(map[string]*lowerEntry, len(files))}
	for _, f := range files {
		switch {
		case !plainName(f.Name):
			return nil, fmt.Errorf("fs: KEY %s: image file name %q is not a plain name", key, f.Name)
		case ld.files[f.Name] != nil:
			return nil, fmt.Errorf("fs: KEY %s: image lists %q twice", key, f.Name)
		case f.Mode.Type() != 0:
			return nil, fmt.Errorf("fs: KEY %s: %s: not a regular file (%s)", key, f.Name, f.Mode)
		case f.Size < 0:
			return nil, fmt.Errorf("fs: KEY %s: %s: negative size %d", key, f.Name, f.Size)
		case f.Open == nil:
			return nil, fmt.Errorf("fs: KEY %s: %s: no content", key, f.Name)
		}
		e := &lowerEntry{rel: key, file: f}
		if f.Rewrite != kind.RewriteNone {
			e.mem = true
			if e.data, err = v.rewrite(ctx, f, f.Rewrite, key); err != nil {
				return nil, fmt.Errorf("fs: KEY %s: %w", key, err)
			}
		}
		ld.files[f.Name] = e
	}
	return ld, nil
}

// rewrite reads a file of unit rel and rewrites the paths in it to the
// path prefix the framework sees (r.Apply: a group file's child paths to
// <prefix>/<unit's parent>/<unit>/<file>, vLLM's cache file's to <prefix>).
func (v *view) rewrite(ctx context.Context, f LowerFile, r kind.Rewrite, rel string) ([]byte, error) {
	if f.Size > kind.MaxRewrite {
		return nil, fmt.Errorf("group file %s: %d bytes, more than %d", f.Name, f.Size, kind.MaxRewrite)
	}
	c, err := f.Open(ctx)
	if err != nil {
		return nil, &imagesError{fmt.Errorf("group file %s: open: %w", f.Name, err)}
	}
	defer c.Close()
	data := make([]byte, f.Size)
	if n, err := c.ReadAt(data, 0); n < len(data) {
		if err == nil || errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("group file %s: read %d of %d bytes: %w", f.Name, n, len(data), err)
	}
	var extra [1]byte
	if n, _ := c.ReadAt(extra[:], f.Size); n > 0 {
		return nil, fmt.Errorf("group file %s: content is longer than its size %d", f.Name, f.Size)
	}
	out, err := r.Apply(data, v.prefix, rel)
	if err != nil {
		return nil, fmt.Errorf("group file %s: %w", f.Name, err)
	}
	return out, nil
}

// plainName reports whether name can be a directory entry of the view.
func plainName(name string) bool {
	return name != "" && name != "." && name != ".." && !strings.ContainsAny(name, "/\x00") && !isWhiteoutName(name)
}
