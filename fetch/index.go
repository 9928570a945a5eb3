package fetch

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"cargohold/kind"
	"cargohold/layer"
	"cargohold/resolver"
)

// layerIndexVersion changes whenever the cached index format does. 2: the
// byte source is recorded (source). 3: indexes come only from bytes the
// manifest vouches for, and every file has a digest (older ones may hold
// digests of unverified bytes: they are rebuilt). 4: the layer's cache
// kind, units keyed by path (layer.Index.Kind), MCV's manifest.
const layerIndexVersion = 4

// indexSlots is how many layer indexes load at once (loadIndex): a TOC
// costs memory while it is parsed, and a layer read whole to check its
// index takes its slot for the whole download.
const indexSlots = 4

// tocBudget bounds the compressed TOC bytes parsed into indexes at once:
// an index takes memory in proportion to its TOC (about 4 MiB for the
// 0.9 MiB TOC of 2,000 Triton KEY dirs) until it is cached, so large TOCs
// load one at a time while small layers still load indexSlots at once.
const tocBudget = 1 << 20

// source is where the offsets of a layer's index point: the engine reads a
// KEY dir's span from there.
type source string

const (
	fromBlob source = "blob" // the layer blob itself, by range (Resolver.Blob)
	fromDiff source = "diff" // the layer's uncompressed tar in the content store, under its DiffID (legacy.go)
)

// indexed is a layer's index and the byte source its offsets point into.
// Immutable.
type indexed struct {
	*layer.Index
	src source
}

// layerIndexFile is the disk cache of one layer's index.
type layerIndexFile struct {
	Version int          `json:"version"`
	Layer   v1.Hash      `json:"layer"`
	Size    int64        `json:"size"`
	Source  source       `json:"source"`
	DiffID  v1.Hash      `json:"diff_id,omitzero"` // fromDiff: the store key of the local tar
	Index   *layer.Index `json:"index"`
}

// Index returns the index of layer l: from memory (the resolver's
// Options.LayerIndexes most recently used ones), else from the disk cache
// (no request), else built from the blob, from bytes the manifest vouches
// for only:
//   - an eStargz layer whose descriptor carries the TOC digest annotation
//     and whose TOC gives every file a digest costs two ranged reads
//     (footer, TOC, checked against the annotation); its files are then
//     verified against the TOC digests as they are read;
//   - another eStargz layer (no annotation, or files without digests) is
//     read whole once as a stream (resolver.Stream: its digest is checked
//     at the end), its TOC checked against its tar and every file's digest
//     taken from the tar (layer.Index.Check); a TOC that disagrees with the
//     tar is refused;
//   - an uncompressed tar is read whole once as a stream, likewise, and
//     indexed from it (layer.ScanTar), every body with its digest;
//   - a gzip layer that is not eStargz has no random access: it is
//     downloaded once in full, verified, decompressed into the content
//     store under its DiffID and indexed there (legacy.go).
//
// So every file of every index has a digest that chains to the manifest,
// and an index is cached (memory, disk) only once those bytes were checked:
// corruption met while indexing fails the load and leaves nothing behind.
// Concurrent calls for one layer share one load; indexSlots load at once.
func (e *Engine) Index(ctx context.Context, l resolver.LayerRef) (*layer.Index, error) {
	ix, err := e.index(ctx, l, true)
	if err != nil {
		return nil, err
	}
	return ix.Index, nil
}

// Units is what a layer holds, as a catalog lists it.
type Units struct {
	Kind    kind.Kind // "" when the layer holds no cache
	Keys    []string  // its units (Triton KEYs, or dir paths under the kind's root), sorted
	Skipped []string  // entries outside its cache, as named in the layer (layer.Index.Skipped)
}

// Units lists layer l's cache kind and units. It loads the index as Index
// does (memory, disk cache, blob) but does not keep it in memory: a
// catalog that lists the units of every image would otherwise fill the
// in-memory cache with layers no lookup has asked for.
func (e *Engine) Units(ctx context.Context, l resolver.LayerRef) (Units, error) {
	ix, err := e.index(ctx, l, false)
	if err != nil {
		return Units{}, err
	}
	keys := make([]string, 0, len(ix.Dirs))
	for k := range ix.Dirs {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return Units{Kind: ix.Kind, Keys: keys, Skipped: ix.Skipped}, nil
}

// index loads l's index; keep puts it in the in-memory cache.
func (e *Engine) index(ctx context.Context, l resolver.LayerRef, keep bool) (*indexed, error) {
	if err := l.Validate(); err != nil {
		return nil, err
	}
	e.mu.Lock()
	ix := e.idx.get(l.Desc.Digest)
	e.mu.Unlock()
	if ix != nil {
		return ix, nil
	}
	ix, err := e.indexes.do(ctx, e.life, l.Desc.Digest.String(), func(ctx context.Context) (*indexed, error) {
		return e.loadIndex(ctx, l)
	})
	if err != nil {
		return nil, fmt.Errorf("fetch: index layer %s: %w", l, err)
	}
	if keep {
		e.mu.Lock()
		e.idx.put(l.Desc.Digest, ix)
		e.mu.Unlock()
	}
	return ix, nil
}

// loadIndex reads l's index from the disk cache or builds it, indexSlots
// layers at a time and, of eStargz TOCs, tocBudget bytes at a time: a big
// TOC costs memory while it is parsed and until its index is cached, and a
// refresh asks for many layers at once.
func (e *Engine) loadIndex(ctx context.Context, l resolver.LayerRef) (*indexed, error) {
	select {
	case e.loading <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-e.loading }()
	ix, err := e.readIndexCache(l)
	if err != nil {
		e.log.Warn("ignoring cached layer index", "layer", l.String(), "err", err)
	}
	if ix != nil {
		e.bump(func(s *Stats) { s.IndexCacheHits++ })
		return ix, nil
	}
	var held int64 // of parsing, given back once the index is cached
	defer func() { e.parsing.Release(held) }()
	gate := func(tocSize int64) error {
		n := min(tocSize, tocBudget)
		if err := e.parsing.Acquire(ctx, n); err != nil {
			return err
		}
		held = n
		return nil
	}
	if ix, err = e.buildIndex(ctx, l, gate); err != nil {
		return nil, err
	}
	e.bump(func(s *Stats) { s.Indexes++ })
	if err := e.writeIndexCache(l, ix); err != nil {
		// The index still serves this process; the next one rebuilds it.
		e.log.Warn("cannot cache layer index", "layer", l.String(), "err", err)
	}
	return ix, nil
}

// buildIndex reads the blob (see Index).
func (e *Engine) buildIndex(ctx context.Context, l resolver.LayerRef, gate layer.Gate) (*indexed, error) {
	b, err := e.res.Blob(ctx, l)
	if err != nil {
		return nil, err
	}
	idx, err := layer.OpenEStargzGated(b, b.Size(), l.TOCDigest, gate)
	format := layer.FormatEStargz
	if errors.Is(err, layer.ErrNotEStargz) {
		format, err = layer.Sniff(b, b.Size())
	}
	b.Close()
	e.account(ctx, b.Counters())
	switch {
	case errors.Is(err, layer.ErrNotIndexable) && strings.Contains(string(l.Desc.MediaType), "zstd"):
		return nil, fmt.Errorf("zstd layer (%s) without an eStargz index: not supported", l.Desc.MediaType)
	case err != nil:
		return nil, err
	case format == layer.FormatGzip:
		return e.indexGzip(ctx, l)
	case format == layer.FormatTar:
		idx, err = e.whole(ctx, l, func(r io.Reader) (*layer.Index, error) { return layer.ScanTar(r, l.Desc.Size) })
	case !idx.Verifiable(l.TOCDigest):
		e.log.Debug("eStargz layer the manifest does not vouch for file by file: reading it whole", "layer", l.String(),
			"toc_digest_annotation", l.TOCDigest != "", "every_file_digested", idx.Complete())
		idx, err = e.whole(ctx, l, idx.Check)
	}
	if err != nil {
		return nil, err
	}
	return &indexed{Index: idx, src: fromBlob}, nil
}

// whole reads l's whole blob as one stream through scan, which reads it to
// its end, where resolver.Stream checks its size and digest: scan's index
// counts only if that check passed.
func (e *Engine) whole(ctx context.Context, l resolver.LayerRef, scan func(io.Reader) (*layer.Index, error)) (*layer.Index, error) {
	s, err := e.res.Stream(ctx, l)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	defer e.account(ctx, s.Counters())
	idx, err := scan(ctxReader{ctx, s})
	if err != nil {
		return nil, fmt.Errorf("read whole to index it: %w", err)
	}
	e.bump(func(s *Stats) { s.Downloads++ })
	return idx, nil
}

func (e *Engine) indexPath(l resolver.LayerRef) string {
	return filepath.Join(e.state, "layers", l.Desc.Digest.String()+".json")
}

// readIndexCache returns the cached index of l, nil when there is none. An
// error says why a cached file was not used (it is then rebuilt).
func (e *Engine) readIndexCache(l resolver.LayerRef) (*indexed, error) {
	p := e.indexPath(l)
	data, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var f layerIndexFile
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	switch {
	case f.Version != layerIndexVersion:
		return nil, fmt.Errorf("%s: version %d, want %d", p, f.Version, layerIndexVersion)
	case f.Index == nil || f.Layer != l.Desc.Digest || f.Size != l.Desc.Size:
		return nil, fmt.Errorf("%s: not the index of this layer", p)
	case f.Source == fromDiff && f.DiffID != l.DiffID:
		return nil, fmt.Errorf("%s: for diff_id %s, the layer says %s", p, f.DiffID, l.DiffID)
	case f.Source != fromDiff && f.Source != fromBlob:
		return nil, fmt.Errorf("%s: unknown source %q", p, f.Source)
	}
	if f.Source == fromBlob {
		if err := f.Index.Describes(l.Desc.Size, l.TOCDigest); err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
	}
	if f.Index.Kind != "" && !f.Index.Kind.Valid() {
		return nil, fmt.Errorf("%s: unknown cache kind %q", p, f.Index.Kind)
	}
	if !f.Index.Complete() {
		return nil, fmt.Errorf("%s: files without a digest", p)
	}
	for key, d := range f.Index.Dirs {
		if d == nil || d.Key != key || kind.CheckPath(key) != nil {
			return nil, fmt.Errorf("%s: bad dir entry %q", p, key)
		}
		for _, file := range d.Files {
			if !plainFileName(file.Name) {
				return nil, fmt.Errorf("%s: %s: bad file name %q", p, key, file.Name)
			}
		}
	}
	return &indexed{Index: f.Index, src: f.Source}, nil
}

// writeIndexCache saves ix atomically (temp file, rename), streaming the
// index a dir at a time (layer.Index.WriteJSON).
func (e *Engine) writeIndexCache(l resolver.LayerRef, ix *indexed) error {
	f := layerIndexFile{Version: layerIndexVersion, Layer: l.Desc.Digest, Size: l.Desc.Size, Source: ix.src}
	if ix.src == fromDiff {
		f.DiffID = l.DiffID
	}
	head, err := json.Marshal(f) // {..., "index":null}
	if err != nil {
		return err
	}
	head = bytes.TrimSuffix(head, []byte("null}"))
	return saveFileWith(e.indexPath(l), func(w io.Writer) error {
		bw := bufio.NewWriterSize(w, 64<<10)
		bw.Write(head)
		if err := ix.Index.WriteJSON(bw); err != nil {
			return err
		}
		bw.WriteString("}")
		return bw.Flush()
	})
}

// saveFileWith writes p through a temp file in p's dir, its content
// written by write.
func saveFileWith(p string, write func(io.Writer) error) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(p), ".tmp-*")
	if err != nil {
		return err
	}
	err = write(tmp)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), p)
	}
	if err != nil {
		os.Remove(tmp.Name())
	}
	return err
}

// plainFileName: one path element, nothing that walks out of a dir.
func plainFileName(s string) bool {
	return s != "" && s != "." && s != ".." && !strings.ContainsAny(s, "/\x00")
}
