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

	"cargohold/triton"
)

// maxGroupSize bounds the group files kept in memory. Triton's are a few KiB.
const maxGroupSize = 16 << 20

// lowerDir is one KEY dir as an image holds it. Immutable once built.
type lowerDir struct {
	key   string
	files map[string]*lowerEntry
}

// lowerEntry is one file of a lowerDir. Immutable once built.
type lowerEntry struct {
	key  string
	file LowerFile
	data []byte // group files: the content with child paths rewritten, served from memory
}

// size is the size the view shows: for a group file, after the rewrite.
func (e *lowerEntry) size() int64 {
	if e.file.Group {
		return int64(len(e.data))
	}
	return e.file.Size
}

// errNoImages answers every KEY when the view has no Lower.
var errNoImages = fmt.Errorf("no images: %w", iofs.ErrNotExist)

// Loads that outlive their lookups.
const (
	// maxOrphans bounds the loads that go on with nobody waiting for them;
	// past it, a load nobody waits for any more is canceled.
	maxOrphans = 32
	// loadLimit bounds one load, however long lookups keep asking.
	loadLimit = 10 * time.Minute
)

// pending is one load (Lower.Entry, then the group rewrite) of a KEY dir,
// shared by the lookups that want it, at most one per KEY. It runs under
// the mount's lifetime, not a lookup's: a lookup that gives up (its
// deadline, or an interruption) leaves it running as an orphan, up to
// maxOrphans at once, so that a KEY whose fetch takes longer than a lookup
// waits is found by a later lookup; unmount cancels it.
type pending struct {
	key    string
	done   chan struct{} // closed once ld and err are set
	ld     *lowerDir
	err    error
	cancel context.CancelFunc

	waiters int  // guarded by view.mu
	orphan  bool // guarded by view.mu
}

// resolve asks the Lower for KEY's dir within the lookup deadline. The
// deadline holds even when the Lower ignores ctx: the answer is awaited here.
// A load still running when the lookup gives up goes on (pending), and its
// result is handed to the KEY's node when it comes (adoptLate). The returned
// error wraps fs.ErrNotExist when no image has KEY, and ctx's error when no
// answer came in time.
func (v *view) resolve(ctx context.Context, key string) (*lowerDir, error) {
	if v.lower == nil {
		return nil, fmt.Errorf("fs: KEY %s: %w", key, errNoImages)
	}
	req := ctx
	ctx, cancel := v.bound(ctx)
	defer cancel()
	p := v.join(key)
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
	return nil, fmt.Errorf("fs: KEY %s: %s: %w", key, why, ctx.Err())
}

// join returns the load of key in flight, or starts one.
func (v *view) join(key string) *pending {
	v.mu.Lock()
	defer v.mu.Unlock()
	if p := v.loads[key]; p != nil {
		p.waiters++
		return p
	}
	lctx, cancel := context.WithTimeout(v.life, loadLimit)
	p := &pending{key: key, done: make(chan struct{}), cancel: cancel, waiters: 1}
	v.loads[key] = p
	go func() {
		ld, err := v.load(lctx, key)
		cancel()
		v.mu.Lock()
		if v.loads[key] == p {
			delete(v.loads, key)
		}
		late := p.orphan
		if late {
			v.orphans--
		}
		v.mu.Unlock()
		p.ld, p.err = ld, err
		close(p.done)
		if late {
			v.adoptLate(key, ld, err)
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
	if v.loads[p.key] == p {
		delete(v.loads, p.key)
	}
}

// adoptLate hands the result of an orphaned load to the KEY's node, so
// that the next lookup in the dir sees the files at once: what the kernel
// kept of those names (a "not there") is dropped. It runs outside any
// request (notify.go).
func (v *view) adoptLate(key string, ld *lowerDir, err error) {
	if err != nil {
		v.log.Info("fs: a KEY fetch that outlived its lookup failed", "key", key, "err", err)
		return
	}
	v.log.Info("fs: a KEY fetch that outlived its lookup is in; later lookups see it", "key", key)
	if d := v.root.keyChild(key); d != nil && d.setLower(ld, true) {
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

// has asks the Lower whether an image lists KEY, within the lookup deadline.
func (v *view) has(ctx context.Context, key string) (bool, error) {
	if v.lower == nil {
		return false, nil
	}
	ctx, cancel := v.bound(ctx)
	defer cancel()
	ok, err := v.lower.Has(ctx, key)
	if err != nil {
		return false, &imagesError{fmt.Errorf("fs: KEY %s: %w", key, err)}
	}
	return ok, nil
}

// load calls Lower.Entry and checks and prepares what it returns, so that a
// KEY dir is complete before anyone sees it.
func (v *view) load(ctx context.Context, key string) (*lowerDir, error) {
	files, err := v.lower.Entry(ctx, key)
	if err != nil {
		return nil, &imagesError{fmt.Errorf("fs: KEY %s: %w", key, err)}
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("fs: KEY %s: the image lists no files", key)
	}
	ld := &lowerDir{key: key, files: make(map[string]*lowerEntry, len(files))}
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
		e := &lowerEntry{key: key, file: f}
		if f.Group {
			if e.data, err = v.rewriteGroup(ctx, f); err != nil {
				return nil, fmt.Errorf("fs: KEY %s: %w", key, err)
			}
		}
		ld.files[f.Name] = e
	}
	return ld, nil
}

// rewriteGroup reads a group file and rewrites its child paths to the path
// prefix Triton sees.
func (v *view) rewriteGroup(ctx context.Context, f LowerFile) ([]byte, error) {
	if f.Size > maxGroupSize {
		return nil, fmt.Errorf("group file %s: %d bytes, more than %d", f.Name, f.Size, maxGroupSize)
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
	out, err := triton.RewriteGroup(data, v.prefix)
	if err != nil {
		return nil, fmt.Errorf("group file %s: %w", f.Name, err)
	}
	return out, nil
}

// plainName reports whether name can be a directory entry of the view.
func plainName(name string) bool {
	return name != "" && name != "." && name != ".." && !strings.ContainsAny(name, "/\x00") && !isWhiteoutName(name)
}
