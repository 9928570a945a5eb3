package layer

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"

	"cargohold/kind"
)

// Format is how a layer blob stores its files.
type Format string

const (
	FormatEStargz Format = "estargz" // gzip members per file, TOC, footer
	FormatTar     Format = "tar"     // uncompressed tar
	FormatGzip    Format = "gzip"    // a tar+gzip without index, decompressed locally (OpenGunzipped)
)

// File is one cache file in a layer.
type File struct {
	Name string `json:"name"`
	Size int64  `json:"size"`
	// Mode is the permission bits only (& 0o777): files are always regular.
	Mode uint32 `json:"mode"`
	// Digest is "sha256:..." of the content, "" if unknown (a tar file body
	// that was skipped rather than read while indexing).
	Digest string `json:"digest,omitempty"`
	// Offset and End are the byte span of the blob holding the file's data;
	// both zero for an empty file.
	Offset int64 `json:"offset"`
	End    int64 `json:"end"`
	// Chunks, set for eStargz, say where each part of the file's data is
	// compressed. Empty means the data is stored raw at [Offset, End).
	Chunks []Chunk `json:"chunks,omitempty"`
}

// Chunk is one part of an eStargz file: Size bytes at Offset in the file,
// found InnerOffset uncompressed bytes into the gzip member starting at
// BlobOffset.
type Chunk struct {
	Offset      int64  `json:"offset"`
	Size        int64  `json:"size"`
	BlobOffset  int64  `json:"blobOffset"`
	InnerOffset int64  `json:"innerOffset,omitempty"`
	Digest      string `json:"digest,omitempty"`
}

// Dir is one unit of a layer: a Triton KEY dir, a vLLM or Inductor dir.
type Dir struct {
	// Key is the unit's path, relative to the kind's root (a KEY for
	// Triton).
	Key   string `json:"key"`
	Files []File `json:"files"` // sorted by name
	// Offset and End are one contiguous span of the blob covering the data
	// of every file of the dir. End == Offset when every file is empty.
	Offset int64 `json:"offset"`
	End    int64 `json:"end"`
}

// Index is what a layer holds, by unit path. It is immutable once
// returned.
type Index struct {
	Format    Format          `json:"format"`
	Size      int64           `json:"size"`
	TOCDigest string          `json:"tocDigest,omitempty"` // eStargz: digest of the TOC JSON
	Kind      kind.Kind       `json:"kind,omitempty"`      // the cache's kind; "" when the layer holds no cache file
	Dirs      map[string]*Dir `json:"dirs"`
	Skipped   []string        `json:"skipped,omitempty"`  // entries outside the cache, as named in the layer
	Manifest  *File           `json:"manifest,omitempty"` // MCV's io.<kind>.manifest/manifest.json, when the layer holds one
}

// ManifestDir is a Dir holding only the manifest file, for Dir.Read; nil
// when the layer holds no manifest.
func (idx *Index) ManifestDir() *Dir {
	if idx.Manifest == nil {
		return nil
	}
	return &Dir{Key: string(idx.Kind) + " manifest", Files: []File{*idx.Manifest}, Offset: idx.Manifest.Offset, End: idx.Manifest.End}
}

// Open indexes a layer blob of the given size. An eStargz blob costs two
// reads (footer, then TOC); its TOC is checked against tocDigest unless that
// is "". An uncompressed tar is indexed by OpenTar with the default block
// size. A gzip (or zstd) blob that is not eStargz gives an error matching
// ErrNotIndexable.
func Open(ra io.ReaderAt, size int64, tocDigest string) (*Index, error) {
	idx, err := OpenEStargz(ra, size, tocDigest)
	if !errors.Is(err, ErrNotEStargz) {
		return idx, err
	}
	f, err := Sniff(ra, size)
	if err != nil {
		return nil, err
	}
	if f == FormatGzip {
		return nil, fmt.Errorf("layer: open: gzip: %w", ErrNotIndexable)
	}
	return OpenTar(ra, size, 0)
}

// OpenEStargz indexes an eStargz blob with two reads (footer, then TOC),
// checking the TOC against tocDigest unless that is "". A blob without an
// eStargz footer gives an error matching ErrNotEStargz.
func OpenEStargz(ra io.ReaderAt, size int64, tocDigest string) (*Index, error) {
	return OpenEStargzGated(ra, size, tocDigest, nil)
}

// Gate is called with the compressed size of a TOC once the footer has
// been read, before the TOC is read and parsed: the part of an index load
// whose memory grows with the TOC. It may wait (for room, say); an error
// ends the open. What it takes, the caller gives back when done with the
// index.
type Gate func(tocSize int64) error

// OpenEStargzGated is OpenEStargz with the TOC's read and parse behind
// gate (nil: none).
func OpenEStargzGated(ra io.ReaderAt, size int64, tocDigest string, gate Gate) (*Index, error) {
	if size < 0 {
		return nil, fmt.Errorf("layer: open: negative size %d", size)
	}
	idx, ok, err := openEStargz(ra, size, tocDigest, gate)
	if err == nil && !ok {
		err = ErrNotEStargz
	}
	return idx, err
}

// Sniff tells a blob that is not eStargz by its first 512 bytes: FormatGzip
// for gzip, FormatTar for anything else (an uncompressed tar, if it is a
// layer at all); zstd is an error matching ErrNotIndexable.
func Sniff(ra io.ReaderAt, size int64) (Format, error) {
	head := make([]byte, max(min(size, 512), 0))
	if _, err := readFullAt(ra, head, 0); err != nil {
		return "", fmt.Errorf("layer: open: read head: %w", err)
	}
	switch {
	case bytes.HasPrefix(head, []byte{0x1f, 0x8b}):
		return FormatGzip, nil
	case len(head) >= 4 && binary.LittleEndian.Uint32(head) == 0xfd2fb528:
		return "", fmt.Errorf("layer: open: zstd: %w", ErrNotIndexable)
	}
	return FormatTar, nil
}

// OpenGunzipped indexes the uncompressed tar of a gzip layer that has no
// index of its own (Open says ErrNotIndexable), read whole from a local,
// verified copy (ScanTar: every file gets its digest): the index says
// FormatGzip, and its offsets are into that tar, not the blob.
func OpenGunzipped(ra io.ReaderAt, size int64) (*Index, error) {
	idx, err := ScanTar(io.NewSectionReader(ra, 0, size), size)
	if err != nil {
		return nil, err
	}
	idx.Format = FormatGzip
	return idx, nil
}

// Describes checks that idx (from a cache, say) is the index of a blob of
// the given size and TOC digest ("" for none known). The index of a gzip
// layer describes its local tar, not the blob: only its format is checked.
func (idx *Index) Describes(size int64, tocDigest string) error {
	switch {
	case idx.Format == FormatGzip:
		return nil
	case idx.Size != size:
		return fmt.Errorf("layer: index of a %d-byte blob, the layer has %d", idx.Size, size)
	case idx.Format == FormatEStargz && tocDigest != "" && idx.TOCDigest != tocDigest:
		return fmt.Errorf("layer: index of TOC %s, the layer says %s", idx.TOCDigest, tocDigest)
	case idx.Format != FormatEStargz && idx.Format != FormatTar:
		return fmt.Errorf("layer: index of unknown format %q", idx.Format)
	}
	return nil
}

// WriteJSON writes idx as json.Marshal does (but for newlines between
// values), one dir at a time, so that a big index is never held twice in
// memory.
func (idx *Index) WriteJSON(w io.Writer) error {
	bw := &jsonWriter{w: w}
	bw.raw(`{"format":`)
	bw.value(idx.Format)
	bw.raw(`,"size":`)
	bw.value(idx.Size)
	if idx.TOCDigest != "" {
		bw.raw(`,"tocDigest":`)
		bw.value(idx.TOCDigest)
	}
	if idx.Kind != "" {
		bw.raw(`,"kind":`)
		bw.value(idx.Kind)
	}
	bw.raw(`,"dirs":`)
	if idx.Dirs == nil {
		bw.raw("null")
	} else {
		keys := make([]string, 0, len(idx.Dirs))
		for k := range idx.Dirs {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		sep := "{"
		for _, k := range keys {
			bw.raw(sep)
			bw.value(k)
			bw.raw(":")
			bw.value(idx.Dirs[k])
			sep = ","
		}
		if sep == "{" {
			bw.raw("{")
		}
		bw.raw("}")
	}
	if len(idx.Skipped) > 0 {
		bw.raw(`,"skipped":`)
		bw.value(idx.Skipped)
	}
	if idx.Manifest != nil {
		bw.raw(`,"manifest":`)
		bw.value(idx.Manifest)
	}
	bw.raw("}")
	return bw.err
}

// jsonWriter writes JSON pieces until the first error.
type jsonWriter struct {
	w   io.Writer
	enc *json.Encoder // reuses its buffers value after value
	err error
}

func (j *jsonWriter) raw(s string) {
	if j.err == nil {
		_, j.err = io.WriteString(j.w, s)
	}
}

// value writes v's JSON (and a newline, which JSON allows between tokens).
func (j *jsonWriter) value(v any) {
	if j.err != nil {
		return
	}
	if j.enc == nil {
		j.enc = json.NewEncoder(j.w)
		j.enc.SetEscapeHTML(true) // as json.Marshal
	}
	j.err = j.enc.Encode(v)
}

// readFullAt reads len(p) bytes at off; io.EOF with a full read is success,
// as io.ReaderAt allows it.
func readFullAt(ra io.ReaderAt, p []byte, off int64) (int, error) {
	n, err := ra.ReadAt(p, off)
	if n == len(p) {
		return n, nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

// builder collects files while a format is parsed.
type builder struct {
	idx *Index
}

func newBuilder(f Format, size int64) *builder {
	return &builder{idx: &Index{Format: f, Size: size, Dirs: map[string]*Dir{}}}
}

func (b *builder) skip(name string) { b.idx.Skipped = append(b.idx.Skipped, name) }

// takes reports whether a cache file of kind k belongs in the index: the
// first cache file decides the layer's kind; files of another kind are
// skipped (named: a layer holds one cache).
func (b *builder) takes(k kind.Kind) bool {
	if b.idx.Kind == "" {
		b.idx.Kind = k
	}
	return b.idx.Kind == k
}

// key returns the index's own copy of a unit path: one parsed from an
// entry name would keep the whole name alive.
func (b *builder) key(k string) string {
	if d := b.idx.Dirs[k]; d != nil {
		return d.Key
	}
	return strings.Clone(k)
}

// add records a file; a later entry of the same name replaces an earlier
// one, as when a tar is extracted (finish keeps the last).
func (b *builder) add(key string, f File) {
	d := b.idx.Dirs[key]
	if d == nil {
		d = &Dir{Key: key}
		b.idx.Dirs[key] = d
	}
	d.Files = append(d.Files, f)
}

// addEntry adds f, the file of entry e (a cache file or MCV's manifest).
func (b *builder) addEntry(e entry, f File) {
	if e.p == placeManifest {
		b.idx.Manifest = &f
		return
	}
	b.add(b.key(e.unit), f)
}

// finish sorts files, keeps the last of each name and computes each dir's
// span.
func (b *builder) finish() *Index {
	for _, d := range b.idx.Dirs {
		slices.SortStableFunc(d.Files, func(x, y File) int { return strings.Compare(x.Name, y.Name) })
		kept := d.Files[:0]
		for i, f := range d.Files {
			if i+1 < len(d.Files) && d.Files[i+1].Name == f.Name {
				continue // replaced by a later entry
			}
			kept = append(kept, f)
		}
		d.Files = slices.Clip(kept)
		first := true
		for _, f := range d.Files {
			if f.End == f.Offset {
				continue
			}
			if first || f.Offset < d.Offset {
				d.Offset = f.Offset
			}
			if first || f.End > d.End {
				d.End = f.End
			}
			first = false
		}
	}
	return b.idx
}
