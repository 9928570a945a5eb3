package fs

import (
	"context"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"strings"

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

// resolve asks the Lower for KEY's dir within the lookup deadline. The
// deadline holds even when the Lower ignores ctx: the answer is awaited here,
// and a late one is dropped. The returned error wraps fs.ErrNotExist when no
// image has KEY, and ctx's error when no answer came in time.
func (v *view) resolve(ctx context.Context, key string) (*lowerDir, error) {
	if v.lower == nil {
		return nil, fmt.Errorf("fs: KEY %s: %w", key, errNoImages)
	}
	req := ctx
	ctx, cancel := v.bound(ctx)
	defer cancel()

	type result struct {
		ld  *lowerDir
		err error
	}
	done := make(chan result, 1)
	go func() {
		ld, err := v.load(ctx, key)
		done <- result{ld, err}
	}()
	var r result
	select {
	case r = <-done:
		if r.err == nil || ctx.Err() == nil || !errors.Is(r.err, ctx.Err()) {
			return r.ld, r.err
		}
		// The Lower gave up because ctx ended: say why, as below.
	case <-ctx.Done():
	}
	why := fmt.Sprintf("no answer from the images within %s", v.timeout)
	switch {
	case v.life.Err() != nil:
		why = "the mount is going away"
	case req.Err() != nil:
		why = "the lookup was interrupted"
	}
	return nil, fmt.Errorf("fs: KEY %s: %s: %w", key, why, ctx.Err())
}

// bound gives a call into the Lower its deadline (Options.LookupTimeout) on
// top of the FUSE request's interruption; unmount cancels it too.
func (v *view) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(ctx, v.timeout)
	stop := context.AfterFunc(v.life, cancel)
	return ctx, func() { stop(); cancel() }
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
