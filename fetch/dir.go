package fetch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"time"

	digest "github.com/opencontainers/go-digest"

	"cargohold/layer"
	"cargohold/resolver"
)

// spanPiece is the most bytes of a KEY dir's span held in memory at once: a
// span up to this size is one ranged read, a larger one is read in pieces
// of this size, one ranged read each, as its files are decompressed.
const spanPiece = 8 << 20

// Dir makes every file of KEY dir key of layer l present in the content
// store and returns them. Files already stored cost no request. Otherwise
// the dir's contiguous span is read with one ranged request (pieces of
// spanPiece for a larger span; for a legacy gzip layer: from its local
// tar, no request), and every file is decompressed and verified against
// the index (size, file and chunk digests) as it streams into the store
// (a store.Batch); only when all of them pass are they committed. A failure
// names the file (*layer.VerifyError) and commits nothing.
//
// Before anything is read, the dir's uncompressed size (the index's) must
// fit the store (store.Fits: its limit, what is pinned, the disk's free
// space); a dir that cannot is an error wrapping store.ErrFull, the caller's
// miss. Memory per fetch is bounded by spanPiece and a decompressor,
// whatever the files' sizes; ctx ends reads and decompression alike.
//
// Every file has a digest that chains to the manifest: the index came from
// a TOC the layer's annotation vouches for, or from the whole blob read
// once with its digest checked (Index).
//
// A key the layer does not hold gives an error wrapping fs.ErrNotExist.
// Concurrent calls for the same layer and key share one fetch. The files are
// in the store when Dir returns; an LRU-bounded store may evict them
// later, when a caller that has not opened them yet calls again.
func (e *Engine) Dir(ctx context.Context, l resolver.LayerRef, key string) ([]KeyFile, error) {
	ix, err := e.index(ctx, l, true)
	if err != nil {
		return nil, err
	}
	d := ix.Dirs[key]
	if d == nil {
		return nil, fmt.Errorf("fetch: layer %s: KEY %s: %w", l, key, fs.ErrNotExist)
	}
	if files, ok := e.stored(d); ok {
		e.bump(func(s *Stats) { s.Hits++ })
		return files, nil
	}
	fetch := func(ctx context.Context) ([]KeyFile, error) { return e.fetchDir(ctx, l, ix, d) }
	k := dirKey(l, key)
	// A prefetch range in flight that covers the dir serves it, unless it
	// is slow or fails: then the dir is fetched alone, at once.
	files, err := e.dirs.doPatient(ctx, e.life, k, rangePatience, fetch)
	if errors.Is(err, errBackground) && ctx.Err() == nil {
		e.log.Debug("prefetch range did not deliver; fetching the KEY dir alone", "layer", l.String(), "key", key, "err", err)
		files, err = e.dirs.do(ctx, e.life, "alone/"+k, fetch)
	}
	if err != nil {
		return nil, fmt.Errorf("fetch: KEY %s from layer %s: %w", key, l, err)
	}
	return files, nil
}

func dirKey(l resolver.LayerRef, key string) string { return l.Desc.Digest.String() + "/" + key }

// stored returns d's files when the store holds every one.
func (e *Engine) stored(d *layer.Dir) ([]KeyFile, bool) {
	files := keyFiles(d)
	for _, f := range files {
		if f.Digest == "" || !e.st.Has(f.Digest) {
			return nil, false
		}
	}
	return files, true
}

// emptyDigest is the digest of no bytes: an empty file's, where an index
// gives none.
var emptyDigest = digest.FromBytes(nil)

func keyFiles(d *layer.Dir) []KeyFile {
	files := make([]KeyFile, len(d.Files))
	for i, f := range d.Files {
		files[i] = KeyFile{Name: f.Name, Size: f.Size, Mode: os.FileMode(f.Mode & 0o777),
			Digest: fileDigest(f)}
	}
	return files
}

// fileDigest is f's digest from the index ("" when it has none).
func fileDigest(f layer.File) digest.Digest {
	if f.Size == 0 && f.Digest == "" {
		return emptyDigest
	}
	return digest.Digest(f.Digest)
}

// dirContent is the bytes d's files hold, uncompressed.
func dirContent(d *layer.Dir) int64 {
	var n int64
	for _, f := range d.Files {
		n += f.Size
	}
	return n
}

// fetchDir reads, verifies and stores d (see Dir).
func (e *Engine) fetchDir(ctx context.Context, l resolver.LayerRef, ix *indexed, d *layer.Dir) ([]KeyFile, error) {
	// A fetch that ended just before this one started may have stored it.
	if files, ok := e.stored(d); ok {
		return files, nil
	}
	if d.Offset < 0 || d.End < d.Offset || d.End > ix.Size {
		return nil, fmt.Errorf("span [%d,%d) is not inside the layer's %d bytes", d.Offset, d.End, ix.Size)
	}
	if need := dirContent(d); need > 0 {
		if err := e.st.Fits(need); err != nil {
			return nil, fmt.Errorf("KEY dir of %d bytes: %w", need, err)
		}
	}
	start := time.Now()
	src, err := e.openSpan(ctx, l, ix.src, d.Offset, d.End)
	if err != nil {
		return nil, err
	}
	files, err := e.commit(ctx, d, src, false)
	src.Close()
	if src.got > 0 {
		e.bump(func(s *Stats) { s.Fetches++ })
	}
	if err != nil {
		return nil, err
	}
	e.log.Debug("fetched KEY dir", "layer", l.String(), "key", d.Key, "files", len(files), "span", d.End-d.Offset,
		"requests", src.reads, "took", time.Since(start))
	return files, nil
}

// commit reads every file of d from src (blob offsets: a span being read,
// or a prefetch range in memory), verifying it as it streams into a store
// batch, and commits the batch once all passed. A demand fetch (spare
// false) may evict older content; a prefetch (spare true) puts into spare
// room only (store.PutSpare: nothing is evicted; ErrFull when the budget is
// used).
func (e *Engine) commit(ctx context.Context, d *layer.Dir, src io.ReaderAt, spare bool) ([]KeyFile, error) {
	files := keyFiles(d)
	for _, f := range files {
		if f.Digest == "" {
			return nil, fmt.Errorf("%s: no digest to verify it by", f.Name)
		}
	}
	b := e.st.Batch(spare)
	defer b.Abort()
	for _, f := range d.ByOffset() {
		fr := d.Open(src, f)
		err := b.Put(fileDigest(f), ctxReader{ctx, fr})
		fr.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f.Name, err)
		}
	}
	if err := b.Commit(); err != nil {
		return nil, err
	}
	return files, nil
}

// ctxReader stops a copy when ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// readerAtContext is what both byte sources read with.
type readerAtContext interface {
	ReadAtContext(ctx context.Context, p []byte, off int64) (int, error)
}

// spanReader is [off, end) of a layer's bytes as an io.ReaderAt at the
// blob's offsets: read spanPiece bytes at a time (one ranged request each),
// the piece read last held in memory.
type spanReader struct {
	ctx      context.Context
	r        readerAtContext
	label    string
	off, end int64
	close    func()

	buf    []byte // bytes [bufOff, bufOff+len(buf))
	bufOff int64
	got    int64 // bytes read from r
	reads  int
}

// openSpan opens [off, end) of l's bytes in src: the layer blob, or the
// local tar of a gzip layer.
func (e *Engine) openSpan(ctx context.Context, l resolver.LayerRef, src source, off, end int64) (*spanReader, error) {
	s := &spanReader{ctx: ctx, label: fmt.Sprintf("%s: its %s", l, src), off: off, end: end}
	switch src {
	case fromDiff:
		f, err := e.openDiff(ctx, l)
		if err != nil {
			return nil, err
		}
		s.r, s.close = contextFree{f}, func() { f.Close() }
	default:
		b, err := e.res.Blob(ctx, l)
		if err != nil {
			return nil, err
		}
		s.r = b
		s.close = func() {
			b.Close()
			e.account(ctx, b.Counters())
		}
	}
	return s, nil
}

func (s *spanReader) Close() { s.close() }

func (s *spanReader) ReadAt(p []byte, off int64) (int, error) {
	if off < s.off {
		return 0, fmt.Errorf("%s: read at %d, before the span [%d,%d)", s.label, off, s.off, s.end)
	}
	n := 0
	for n < len(p) {
		pos := off + int64(n)
		if pos >= s.end {
			return n, io.EOF
		}
		if pos < s.bufOff || pos >= s.bufOff+int64(len(s.buf)) {
			if err := s.fill(pos); err != nil {
				return n, err
			}
		}
		n += copy(p[n:], s.buf[pos-s.bufOff:])
	}
	return n, nil
}

// fill reads the piece that starts at pos.
func (s *spanReader) fill(pos int64) error {
	size := min(spanPiece, s.end-pos)
	if int64(cap(s.buf)) < size {
		s.buf = make([]byte, size)
	}
	s.buf = s.buf[:size]
	if err := s.read(s.buf, pos); err != nil {
		s.buf = s.buf[:0]
		return err
	}
	s.bufOff = pos
	return nil
}

// read fills p from pos with one ranged read.
func (s *spanReader) read(p []byte, pos int64) error {
	s.reads++
	k, err := s.r.ReadAtContext(s.ctx, p, pos)
	s.got += int64(k)
	if k < len(p) {
		if err == nil || errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("%s: read [%d,%d): %w", s.label, pos, pos+int64(len(p)), err)
	}
	return nil
}

// readSpan fills span from offset off of l's bytes in src with one ranged
// read (a prefetch range), whatever its size.
func (e *Engine) readSpan(ctx context.Context, l resolver.LayerRef, src source, span []byte, off int64) error {
	s, err := e.openSpan(ctx, l, src, off, off+int64(len(span)))
	if err != nil {
		return err
	}
	defer s.Close()
	return s.read(span, off)
}

// contextFree reads a local file, where a read does not block on the
// network.
type contextFree struct{ io.ReaderAt }

func (c contextFree) ReadAtContext(_ context.Context, p []byte, off int64) (int, error) {
	return c.ReadAt(p, off)
}

// memAt is a range read into memory, at the blob's offsets.
type memAt struct {
	buf []byte
	off int64
}

func (m memAt) ReadAt(p []byte, off int64) (int, error) {
	if off < m.off {
		return 0, fmt.Errorf("read at %d, before the range at %d", off, m.off)
	}
	if off-m.off >= int64(len(m.buf)) {
		return 0, io.EOF
	}
	n := copy(p, m.buf[off-m.off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}
