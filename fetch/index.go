package resolver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"cargohold/layer"
)

// layerIndexVersion changes whenever the cached index format does.
const layerIndexVersion = 1

// layerIndexFile is the disk cache of one layer's index.
type layerIndexFile struct {
	Version int          `json:"version"`
	Layer   v1.Hash      `json:"layer"`
	Size    int64        `json:"size"`
	DiffID  v1.Hash      `json:"diff_id,omitzero"` // gzip: the store key of the local tar
	Index   *layer.Index `json:"index"`
}

// Index returns the index of layer l: from memory (the
// Options.LayerIndexes most recently used ones), else from the disk cache
// (no request), else built from the blob. An eStargz layer costs two ranged
// reads (footer, TOC). Any other layer first costs the same footer read and a
// 512-byte probe; an uncompressed tar is then read in blocks of
// layer.DefaultBlockSize that skip bodies larger than a block; a gzip layer
// that is not eStargz has no random access and is downloaded once in full,
// verified, decompressed into the content store under its DiffID and indexed
// there (layer.FormatGzip: offsets are into that local tar).
//
// Concurrent calls for one layer share one load.
func (e *Engine) Index(ctx context.Context, l LayerRef) (*layer.Index, error) {
	if err := l.check(); err != nil {
		return nil, err
	}
	e.mu.Lock()
	idx := e.idx.get(l.Desc.Digest)
	e.mu.Unlock()
	if idx != nil {
		return idx, nil
	}
	idx, err := e.indexes.do(ctx, e.life, l.Desc.Digest.String(), func(ctx context.Context) (*layer.Index, error) {
		return e.loadIndex(ctx, l)
	})
	if err != nil {
		err = fmt.Errorf("resolver: index layer %s: %w", l, err)
		e.recordErr(err)
		return nil, err
	}
	return idx, nil
}

func (e *Engine) loadIndex(ctx context.Context, l LayerRef) (*layer.Index, error) {
	idx, err := e.readIndexCache(l)
	if err != nil {
		e.res.opts.Logger.Warn("ignoring cached layer index", "layer", l.String(), "err", err)
	}
	if idx != nil {
		e.bump(func(s *EngineStats) { s.IndexCacheHits++ })
	} else {
		if idx, err = e.buildIndex(ctx, l); err != nil {
			return nil, err
		}
		e.bump(func(s *EngineStats) { s.Indexes++ })
		if err := e.writeIndexCache(l, idx); err != nil {
			// The index still serves this process; the next one rebuilds it.
			e.res.opts.Logger.Warn("cannot cache layer index", "layer", l.String(), "err", err)
		}
	}
	e.mu.Lock()
	e.idx.put(l.Desc.Digest, idx)
	e.mu.Unlock()
	return idx, nil
}

// buildIndex reads the blob (see Index).
func (e *Engine) buildIndex(ctx context.Context, l LayerRef) (*layer.Index, error) {
	b, err := e.openBlob(ctx, l)
	if err != nil {
		return nil, err
	}
	idx, err := layer.Open(b, b.Size(), l.TOCDigest)
	b.Close()
	e.account(ctx, b.Counters())
	if errors.Is(err, layer.ErrNotIndexable) {
		if strings.Contains(string(l.Desc.MediaType), "zstd") {
			return nil, fmt.Errorf("zstd layer (%s) without an eStargz index: not supported", l.Desc.MediaType)
		}
		return e.indexGzip(ctx, l)
	}
	return idx, err
}

func (e *Engine) indexPath(l LayerRef) string {
	return filepath.Join(e.state, "layers", l.Desc.Digest.String()+".json")
}

// readIndexCache returns the cached index of l, nil when there is none. An
// error says why a cached file was not used (it is then rebuilt).
func (e *Engine) readIndexCache(l LayerRef) (*layer.Index, error) {
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
	case f.Index.Format == layer.FormatGzip && f.DiffID != l.DiffID:
		return nil, fmt.Errorf("%s: for diff_id %s, the layer says %s", p, f.DiffID, l.DiffID)
	case f.Index.Format != layer.FormatGzip && f.Index.Size != l.Desc.Size:
		return nil, fmt.Errorf("%s: index of a %d-byte blob, the layer has %d", p, f.Index.Size, l.Desc.Size)
	case f.Index.Format == layer.FormatEStargz && l.TOCDigest != "" && f.Index.TOCDigest != l.TOCDigest:
		return nil, fmt.Errorf("%s: TOC digest %s, the layer says %s", p, f.Index.TOCDigest, l.TOCDigest)
	}
	for key, d := range f.Index.Dirs {
		if d == nil || d.Key != key || !plainFileName(key) {
			return nil, fmt.Errorf("%s: bad dir entry %q", p, key)
		}
		for _, file := range d.Files {
			if !plainFileName(file.Name) {
				return nil, fmt.Errorf("%s: %s: bad file name %q", p, key, file.Name)
			}
		}
	}
	return f.Index, nil
}

// writeIndexCache saves idx atomically (temp file, rename).
func (e *Engine) writeIndexCache(l LayerRef, idx *layer.Index) error {
	f := layerIndexFile{Version: layerIndexVersion, Layer: l.Desc.Digest, Size: l.Desc.Size, Index: idx}
	if idx.Format == layer.FormatGzip {
		f.DiffID = l.DiffID
	}
	data, err := json.Marshal(f)
	if err != nil {
		return err
	}
	return saveFileAtomic(e.indexPath(l), data)
}

// saveFileAtomic writes data to p through a temp file in p's dir.
func saveFileAtomic(p string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(p), ".tmp-*")
	if err != nil {
		return err
	}
	_, err = tmp.Write(data)
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
