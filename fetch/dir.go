package fetch

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	digest "github.com/opencontainers/go-digest"

	"cargohold/layer"
	"cargohold/resolver"
	"cargohold/store"
	"cargohold/triton"
)

// maxSpan bounds the bytes one KEY dir may span in a layer; a bigger one
// (a hostile index) is refused before anything is allocated for it.
const maxSpan = 1 << 30

// Dir makes every file of KEY dir key of layer l present in the content
// store and returns them. Files already stored cost no request. Otherwise
// the dir's contiguous span is read with one ranged request (for a legacy
// gzip layer: from its local tar, no request), every file is decompressed
// and verified against the index (size, file and chunk digests), and only
// when all of them pass are they put into the store; a failure names the
// file (*layer.VerifyError) and commits nothing.
//
// Files the index holds no digest for (tar bodies larger than a block,
// skipped while indexing) are checked by size only: their digest is
// computed from the fetched bytes, so they cannot be verified against the
// index (for a legacy gzip layer they are covered by the DiffID check of
// the whole local tar). The digest is remembered (memory, and
// stateDir/layers/<digest>.keys/) so that a later call finds them in the
// store.
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
	if files, ok := e.stored(l, d); ok {
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

// stored returns d's files when each has a known digest that the store
// holds.
func (e *Engine) stored(l resolver.LayerRef, d *layer.Dir) ([]KeyFile, bool) {
	files := keyFiles(d)
	for i := range files {
		if files[i].Digest == "" {
			learnt, ok := e.learnt(l, d.Key)
			if !ok || !sameFiles(learnt, files) {
				return nil, false
			}
			files = learnt
			break
		}
	}
	for _, f := range files {
		if !e.st.Has(f.Digest) {
			return nil, false
		}
	}
	return files, true
}

// sameFiles: learnt digests belong to the dir the index describes.
func sameFiles(learnt, index []KeyFile) bool {
	if len(learnt) != len(index) {
		return false
	}
	for i := range learnt {
		a, b := learnt[i], index[i]
		if a.Name != b.Name || a.Size != b.Size || (b.Digest != "" && a.Digest != b.Digest) {
			return false
		}
	}
	return true
}

func keyFiles(d *layer.Dir) []KeyFile {
	files := make([]KeyFile, len(d.Files))
	for i, f := range d.Files {
		files[i] = KeyFile{Name: f.Name, Size: f.Size, Mode: os.FileMode(f.Mode & 0o777),
			Digest: digest.Digest(f.Digest), Group: triton.IsGroupFile(f.Name)}
	}
	return files
}

// fetchDir reads, verifies and stores d (see Dir).
func (e *Engine) fetchDir(ctx context.Context, l resolver.LayerRef, ix *indexed, d *layer.Dir) ([]KeyFile, error) {
	// A fetch that ended just before this one started may have stored it.
	if files, ok := e.stored(l, d); ok {
		return files, nil
	}
	n := d.End - d.Offset
	if n < 0 || n > maxSpan {
		return nil, fmt.Errorf("span [%d,%d) of %d bytes is out of bounds", d.Offset, d.End, n)
	}
	start := time.Now()
	span := make([]byte, n)
	if n > 0 {
		if err := e.readSpan(ctx, l, ix.src, span, d.Offset); err != nil {
			return nil, err
		}
	}
	e.bump(func(s *Stats) { s.Fetches++ })
	read := time.Since(start)
	files, err := e.commit(l, d, span, false)
	if err != nil {
		return nil, err
	}
	e.log.Debug("fetched KEY dir", "layer", l.String(), "key", d.Key, "files", len(files), "span", n,
		"read", read, "verify+commit", time.Since(start)-read)
	return files, nil
}

// commit verifies every file of d in span (the bytes of d's span, read by
// a demand fetch or cut out of a prefetch range) and only then puts them
// into the store. A demand fetch (spare false) may evict older content, and
// keeps each stored file open (pinned) until the last is in, so that
// putting one does not evict another. A prefetch (spare true) puts into
// spare room only (store.PutSpare: nothing is evicted; ErrFull when the
// budget is used) and checks at the end that no demand Put evicted a file
// meanwhile.
func (e *Engine) commit(l resolver.LayerRef, d *layer.Dir, span []byte, spare bool) ([]KeyFile, error) {
	contents, err := d.Read(span)
	if err != nil {
		return nil, err
	}
	var pins []*store.File
	defer func() {
		for _, f := range pins {
			f.Close()
		}
	}()
	files := make([]KeyFile, len(contents))
	learnt := false
	for i, c := range contents {
		dg := digest.Digest(c.File.Digest)
		if spare {
			if err := e.st.PutSpare(dg, bytes.NewReader(c.Data)); err != nil {
				return nil, fmt.Errorf("%s: %w", c.File.Name, err)
			}
		} else {
			if err := e.st.Put(dg, bytes.NewReader(c.Data)); err != nil {
				return nil, fmt.Errorf("%s: %w", c.File.Name, err)
			}
			f, err := e.st.Open(dg)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", c.File.Name, err)
			}
			pins = append(pins, f)
		}
		files[i] = KeyFile{Name: c.File.Name, Size: c.File.Size, Mode: os.FileMode(c.File.Mode & 0o777),
			Digest: dg, Group: triton.IsGroupFile(c.File.Name)}
		learnt = learnt || d.Files[i].Digest == ""
	}
	if spare {
		for _, f := range files {
			if !e.st.Has(f.Digest) {
				return nil, fmt.Errorf("%s: evicted while its dir was committed", f.Name)
			}
		}
	}
	if learnt {
		e.learn(l, d.Key, files)
	}
	return files, nil
}

// readSpan fills span from offset off of l's bytes in src with one ranged
// read: the layer blob, or the local tar of a gzip layer.
func (e *Engine) readSpan(ctx context.Context, l resolver.LayerRef, src source, span []byte, off int64) error {
	var r interface {
		ReadAtContext(ctx context.Context, p []byte, off int64) (int, error)
	}
	switch src {
	case fromDiff:
		f, err := e.openDiff(ctx, l)
		if err != nil {
			return err
		}
		defer f.Close()
		r = contextFree{f}
	default:
		b, err := e.res.Blob(ctx, l)
		if err != nil {
			return err
		}
		defer b.Close()
		defer e.account(ctx, b.Counters())
		r = b
	}
	if n, err := r.ReadAtContext(ctx, span, off); n < len(span) {
		if err == nil || errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("%s: read [%d,%d) of its %s: %w", l, off, off+int64(len(span)), src, err)
	}
	return nil
}

// contextFree reads a local file, where a read does not block on the
// network.
type contextFree struct{ io.ReaderAt }

func (c contextFree) ReadAtContext(_ context.Context, p []byte, off int64) (int, error) {
	return c.ReadAt(p, off)
}

func (e *Engine) learntPath(l resolver.LayerRef, key string) string {
	return filepath.Join(e.state, "layers", l.Desc.Digest.String()+".keys", key+".json")
}

// learnt returns the digests a fetch learnt for a dir, from memory or disk.
func (e *Engine) learnt(l resolver.LayerRef, key string) ([]KeyFile, bool) {
	e.mu.Lock()
	files, ok := e.known[dirKey(l, key)]
	e.mu.Unlock()
	if ok {
		return files, true
	}
	data, err := os.ReadFile(e.learntPath(l, key))
	if err != nil {
		return nil, false
	}
	if err := json.Unmarshal(data, &files); err != nil {
		return nil, false
	}
	for _, f := range files {
		if !plainFileName(f.Name) || f.Digest.Validate() != nil {
			return nil, false
		}
	}
	e.mu.Lock()
	e.known[dirKey(l, key)] = files
	e.mu.Unlock()
	return files, true
}

func (e *Engine) learn(l resolver.LayerRef, key string, files []KeyFile) {
	e.mu.Lock()
	e.known[dirKey(l, key)] = files
	e.mu.Unlock()
	data, err := json.Marshal(files)
	if err == nil {
		err = saveFileAtomic(e.learntPath(l, key), data)
	}
	if err != nil {
		// Costs a refetch after a restart, nothing more.
		e.log.Warn("cannot record fetched digests", "layer", l.String(), "key", key, "err", err)
	}
}
