package resolver

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
	"cargohold/store"
	"cargohold/triton"
)

// maxSpan bounds the bytes one KEY dir may span in a layer; a bigger one
// (a hostile index) is refused before anything is allocated for it.
const maxSpan = 1 << 30

// FetchDir makes every file of KEY dir key of layer l present in the content
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
// in the store when FetchDir returns; an LRU-bounded store may evict them
// later, when a caller that has not opened them yet calls again.
func (e *Engine) FetchDir(ctx context.Context, l LayerRef, key string) ([]KeyFile, error) {
	idx, err := e.Index(ctx, l)
	if err != nil {
		return nil, err
	}
	d := idx.Dirs[key]
	if d == nil {
		return nil, fmt.Errorf("resolver: layer %s: KEY %s: %w", l, key, fs.ErrNotExist)
	}
	if files, ok := e.stored(l, d); ok {
		e.bump(func(s *EngineStats) { s.Hits++ })
		return files, nil
	}
	files, err := e.dirs.do(ctx, e.life, dirKey(l, key), func(ctx context.Context) ([]KeyFile, error) {
		return e.fetchDir(ctx, l, idx, d)
	})
	if err != nil {
		err = fmt.Errorf("resolver: fetch KEY %s from layer %s: %w", key, l, err)
		e.recordErr(err)
		return nil, err
	}
	return files, nil
}

func dirKey(l LayerRef, key string) string { return l.Desc.Digest.String() + "/" + key }

// stored returns d's files when each has a known digest that the store
// holds.
func (e *Engine) stored(l LayerRef, d *layer.Dir) ([]KeyFile, bool) {
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

// fetchDir reads, verifies and stores d (see FetchDir).
func (e *Engine) fetchDir(ctx context.Context, l LayerRef, idx *layer.Index, d *layer.Dir) ([]KeyFile, error) {
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
		if err := e.readSpan(ctx, l, idx, span, d.Offset); err != nil {
			return nil, err
		}
	}
	e.bump(func(s *EngineStats) { s.Fetches++ })
	read := time.Since(start)
	contents, err := d.Read(span)
	if err != nil {
		return nil, err
	}
	verified := time.Since(start)
	// Every file passed: commit. Each stored file stays open (pinned) until
	// the last is in, so that putting one does not evict another.
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
		if err := e.st.Put(dg, bytes.NewReader(c.Data)); err != nil {
			return nil, fmt.Errorf("%s: %w", c.File.Name, err)
		}
		f, err := e.st.Open(dg)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", c.File.Name, err)
		}
		pins = append(pins, f)
		files[i] = KeyFile{Name: c.File.Name, Size: c.File.Size, Mode: os.FileMode(c.File.Mode & 0o777),
			Digest: dg, Group: triton.IsGroupFile(c.File.Name)}
		learnt = learnt || d.Files[i].Digest == ""
	}
	if learnt {
		e.learn(l, d.Key, files)
	}
	e.res.opts.Logger.Debug("fetched KEY dir", "layer", l.String(), "key", d.Key, "files", len(files), "span", n,
		"read", read, "verify", verified-read, "commit", time.Since(start)-verified)
	return files, nil
}

// readSpan fills span from offset off of l's blob with one ranged read, or
// from the local tar of a gzip layer.
func (e *Engine) readSpan(ctx context.Context, l LayerRef, idx *layer.Index, span []byte, off int64) error {
	if idx.Format == layer.FormatGzip {
		f, err := e.openDiff(ctx, l)
		if err != nil {
			return err
		}
		defer f.Close()
		if n, err := f.ReadAt(span, off); n < len(span) {
			if err == nil || errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("local tar %s: read [%d,%d): %w", l.DiffID, off, off+int64(len(span)), err)
		}
		return nil
	}
	b, err := e.openBlob(ctx, l)
	if err != nil {
		return err
	}
	defer b.Close()
	defer e.account(ctx, b.Counters())
	if n, err := b.ReadAtContext(ctx, span, off); n < len(span) {
		if err == nil || errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return err
	}
	return nil
}

func (e *Engine) learntPath(l LayerRef, key string) string {
	return filepath.Join(e.state, "layers", l.Desc.Digest.String()+".keys", key+".json")
}

// learnt returns the digests a fetch learnt for a dir, from memory or disk.
func (e *Engine) learnt(l LayerRef, key string) ([]KeyFile, bool) {
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

func (e *Engine) learn(l LayerRef, key string, files []KeyFile) {
	e.mu.Lock()
	e.known[dirKey(l, key)] = files
	e.mu.Unlock()
	data, err := json.Marshal(files)
	if err == nil {
		err = saveFileAtomic(e.learntPath(l, key), data)
	}
	if err != nil {
		// Costs a refetch after a restart, nothing more.
		e.res.opts.Logger.Warn("cannot record fetched digests", "layer", l.String(), "key", key, "err", err)
	}
}

// FetchKey fetches KEY dir key of im as unpacking im would make it: every
// layer is indexed, and the dirs of the layers holding key are merged file
// by file, a later layer's file winning. It returns the files and the last
// layer holding key. An image without key gives an error wrapping
// fs.ErrNotExist.
func (e *Engine) FetchKey(ctx context.Context, im *Image, key string) ([]KeyFile, LayerRef, error) {
	var held []LayerRef
	for i := range im.Layers {
		l := im.LayerRef(i)
		idx, err := e.Index(ctx, l)
		if err != nil {
			return nil, l, err
		}
		if idx.Dirs[key] != nil {
			held = append(held, l)
		}
	}
	if len(held) == 0 {
		return nil, LayerRef{}, fmt.Errorf("resolver: image %s: no KEY dir %s in its %d layer(s): %w", im.Ref, key, len(im.Layers), fs.ErrNotExist)
	}
	last := held[len(held)-1]
	files, err := e.fetchMerged(ctx, held, key)
	return files, last, err
}
