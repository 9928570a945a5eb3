package layer

import (
	"archive/tar"
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/klauspost/compress/gzip"
	digest "github.com/opencontainers/go-digest"
)

// maxTOCSize bounds the compressed TOC read and the TOC JSON decoded, so a
// hostile footer or a gzip bomb cannot exhaust memory. A TOC entry takes
// about 300 bytes: this is room for some 200k files.
const maxTOCSize = 64 << 20

// tocPiece is the most compressed TOC bytes held at once while a TOC is
// parsed (one read of the blob each).
const tocPiece = 4 << 20

// legacyFooterSize is the footer of stargz before eStargz (the estargz
// package keeps its constant unexported).
const legacyFooterSize = 47

// openEStargz indexes an eStargz blob: one read for the footer, one for the
// TOC. ok is false, with no error, when the blob has no eStargz footer.
func openEStargz(ra io.ReaderAt, size int64, tocDigest string, gate Gate) (idx *Index, ok bool, err error) {
	if size < estargz.FooterSize {
		return nil, false, nil
	}
	footer := make([]byte, estargz.FooterSize)
	if _, err := readFullAt(ra, footer, size-estargz.FooterSize); err != nil {
		return nil, false, fmt.Errorf("layer: open: read footer: %w", err)
	}
	tocOff, footerSize, ok := parseFooter(footer)
	if !ok {
		return nil, false, nil
	}
	tocEnd := size - footerSize
	if tocOff < 0 || tocOff >= tocEnd {
		return nil, true, fmt.Errorf("layer: open toc: offset %d outside blob of %d bytes", tocOff, size)
	}
	if tocEnd-tocOff > maxTOCSize {
		return nil, true, fmt.Errorf("layer: open toc: %d bytes, more than the %d allowed", tocEnd-tocOff, maxTOCSize)
	}
	if gate != nil {
		if err := gate(tocEnd - tocOff); err != nil {
			return nil, true, fmt.Errorf("layer: open toc: %w", err)
		}
	}
	// Read through a buffer of at most tocPiece bytes: one read for most
	// TOCs, and a huge one never held whole.
	toc := bufio.NewReaderSize(io.NewSectionReader(ra, tocOff, tocEnd-tocOff), int(min(tocEnd-tocOff, tocPiece)))
	ix := newTOCIndexer(tocOff, size)
	dgst, err := parseTOC(toc, ix.add)
	if err != nil {
		return nil, true, fmt.Errorf("layer: open toc [%d,%d): %w", tocOff, tocEnd, err)
	}
	if tocDigest != "" && dgst.String() != tocDigest {
		return nil, true, fmt.Errorf("layer: open toc: %w: got %s, want %s", ErrTOCDigest, dgst, tocDigest)
	}
	idx, err = ix.finish()
	if err != nil {
		return nil, true, fmt.Errorf("layer: open toc: %w", err)
	}
	idx.TOCDigest = dgst.String()
	return idx, true, nil
}

// parseFooter reads an eStargz footer, or a legacy stargz one in its last
// 47 bytes.
func parseFooter(footer []byte) (tocOff, footerSize int64, ok bool) {
	if _, off, _, err := (&estargz.GzipDecompressor{}).ParseFooter(footer); err == nil {
		return off, estargz.FooterSize, true
	}
	legacy := footer[len(footer)-legacyFooterSize:]
	if _, off, _, err := (&estargz.LegacyGzipDecompressor{}).ParseFooter(legacy); err == nil {
		return off, legacyFooterSize, true
	}
	return 0, 0, false
}

// tocEntry is what the index takes of an eStargz TOC entry
// (estargz.TOCEntry less what it ignores).
type tocEntry struct {
	Name        string `json:"name"`
	Type        string `json:"type"`
	Size        int64  `json:"size"`
	Mode        int64  `json:"mode"`
	Offset      int64  `json:"offset"`
	InnerOffset int64  `json:"innerOffset"`
	Digest      string `json:"digest"`
	ChunkOffset int64  `json:"chunkOffset"`
	ChunkSize   int64  `json:"chunkSize"`
	ChunkDigest string `json:"chunkDigest"`
}

// parseTOC decodes the TOC gzip member, a tar whose first entry is the TOC
// JSON, passing each entry to fn as it is decoded (fn must not keep the
// pointer): the JSON is never held whole. The digest is of the JSON bytes, as the toc.digest annotation is.
func parseTOC(r io.Reader, fn func(*tocEntry) error) (digest.Digest, error) {
	zr, err := gzip.NewReader(r)
	if err != nil {
		return "", fmt.Errorf("gzip: %w", err)
	}
	zr.Multistream(false)
	tr := tar.NewReader(zr)
	h, err := tr.Next()
	if err != nil {
		return "", fmt.Errorf("tar: %w", err)
	}
	if h.Name != estargz.TOCTarName {
		return "", fmt.Errorf("first entry is %q, want %q", h.Name, estargz.TOCTarName)
	}
	if h.Size > maxTOCSize {
		return "", fmt.Errorf("TOC JSON of %d bytes, more than the %d allowed", h.Size, maxTOCSize)
	}
	sum := sha256.New()
	body := io.TeeReader(tr, sum)
	dec := json.NewDecoder(body)
	if err := decodeTOC(dec, fn); err != nil {
		return "", err
	}
	// Only white space may follow; it counts in the digest.
	rest, err := io.ReadAll(io.MultiReader(dec.Buffered(), body))
	if err != nil {
		return "", fmt.Errorf("read TOC JSON: %w", err)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return "", fmt.Errorf("decode TOC JSON: data after the TOC object")
	}
	return digest.NewDigest(digest.SHA256, sum), nil
}

// decodeTOC walks {"entries": [...], ...} token by token, decoding one
// entry at a time; other members are skipped.
func decodeTOC(dec *json.Decoder, fn func(*tocEntry) error) error {
	bad := func(err error) error { return fmt.Errorf("decode TOC JSON: %w", err) }
	if err := expectDelim(dec, '{'); err != nil {
		return bad(err)
	}
	seen := false
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return bad(err)
		}
		if tok != "entries" {
			var skip json.RawMessage
			if err := dec.Decode(&skip); err != nil {
				return bad(err)
			}
			continue
		}
		if seen {
			return bad(fmt.Errorf("two entries lists"))
		}
		seen = true
		if err := expectDelim(dec, '['); err != nil {
			return bad(fmt.Errorf("entries: %w", err))
		}
		var buf tocEntry // reused: fn keeps no pointer to it
		for dec.More() {
			buf = tocEntry{}
			e := &buf // decoding null sets e to nil
			if err := dec.Decode(&e); err != nil {
				return bad(err)
			}
			if e == nil {
				return fmt.Errorf("null TOC entry")
			}
			if err := fn(e); err != nil {
				return err
			}
		}
		if err := expectDelim(dec, ']'); err != nil {
			return bad(err)
		}
	}
	return expectDelim(dec, '}')
}

func expectDelim(dec *json.Decoder, d json.Delim) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	if tok != d {
		return fmt.Errorf("got %v, want %v", tok, d)
	}
	return nil
}

// tocIndexer turns TOC entries into an Index as they come. Every data
// offset must lie before the TOC; a chunk's gzip member ends at the next
// distinct data offset (or the TOC), which bounds each file's span: spans
// are set once every offset is known (finish).
type tocIndexer struct {
	b      *builder
	tocOff int64
	offs   []int64

	cur         *File // the regular file whose chunks may follow
	curName     string
	curKey      string
	curUse      bool
	curManifest bool // cur is MCV's manifest (Index.Manifest)
}

func newTOCIndexer(tocOff, size int64) *tocIndexer {
	return &tocIndexer{b: newBuilder(FormatEStargz, size), tocOff: tocOff, offs: []int64{tocOff}}
}

func (x *tocIndexer) add(e *tocEntry) error {
	if (e.Type == "reg" && e.Size > 0) || e.Type == "chunk" {
		if e.Offset < 0 || e.Offset >= x.tocOff {
			return fmt.Errorf("entry %q: data offset %d outside [0,%d)", e.Name, e.Offset, x.tocOff)
		}
		x.offs = append(x.offs, e.Offset)
	}
	if e.Type == "chunk" {
		if x.cur == nil {
			return fmt.Errorf("chunk entry %q follows no regular file", e.Name)
		}
		if e.Name != "" && e.Name != x.curName {
			return fmt.Errorf("chunk entry %q inside file %q", e.Name, x.curName)
		}
		cs := e.ChunkSize
		if cs == 0 { // zero means "to the end of the file"
			cs = x.cur.Size - e.ChunkOffset
		}
		x.cur.Chunks = append(x.cur.Chunks, Chunk{Offset: e.ChunkOffset, Size: cs, BlobOffset: e.Offset,
			InnerOffset: e.InnerOffset, Digest: e.ChunkDigest})
		return nil
	}
	if err := x.flush(); err != nil {
		return err
	}
	ce, err := checkEntry(e.Name, tocType(e.Type))
	if err != nil {
		return err
	}
	if ce.p == placeFile && !x.b.takes(ce.kind) {
		ce.p = placeSkip
	}
	if ce.p == placeSkip {
		x.b.skip(e.Name)
	}
	if e.Type != "reg" {
		return nil
	}
	if e.Size < 0 {
		return fmt.Errorf("entry %q: negative size %d", e.Name, e.Size)
	}
	// Own copies: key and file are slices of the whole entry name.
	x.cur = &File{Name: strings.Clone(ce.file), Size: e.Size, Mode: uint32(e.Mode & 0o777), Digest: e.Digest}
	x.curName, x.curKey, x.curUse, x.curManifest = e.Name, ce.unit, ce.p == placeFile || ce.p == placeManifest, ce.p == placeManifest
	if e.Size > 0 {
		cs := e.ChunkSize
		if cs == 0 {
			cs = e.Size
		}
		x.cur.Chunks = []Chunk{{Offset: e.ChunkOffset, Size: cs, BlobOffset: e.Offset,
			InnerOffset: e.InnerOffset, Digest: e.ChunkDigest}}
	}
	return nil
}

// flush records the current file once its chunks are all in.
func (x *tocIndexer) flush() error {
	f := x.cur
	x.cur = nil
	if f == nil || !x.curUse {
		return nil
	}
	if err := checkChunks(f); err != nil {
		return fmt.Errorf("entry %q: %w", x.curName, err)
	}
	if x.curManifest {
		x.b.idx.Manifest = f
		return nil
	}
	x.b.add(x.b.key(x.curKey), *f)
	return nil
}

// finish sets every file's span and returns the index.
func (x *tocIndexer) finish() (*Index, error) {
	if err := x.flush(); err != nil {
		return nil, err
	}
	slices.Sort(x.offs)
	memberEnd := func(off int64) int64 {
		i, _ := slices.BinarySearch(x.offs, off+1) // the first offset after off; tocOff is one
		return x.offs[i]
	}
	for _, d := range x.b.idx.Dirs {
		for i := range d.Files {
			setSpan(&d.Files[i], memberEnd)
		}
	}
	if m := x.b.idx.Manifest; m != nil {
		setSpan(m, memberEnd)
	}
	return x.b.finish(), nil
}

// checkChunks checks that a file's chunks tile it exactly and that its
// digests are well formed. A one-chunk file's chunk digest, the same as
// the file's, shares its string.
func checkChunks(f *File) error {
	if err := checkDigest(f.Digest); err != nil {
		return err
	}
	var next int64
	for i, c := range f.Chunks {
		if c.Offset != next || c.Size <= 0 || c.InnerOffset < 0 {
			return fmt.Errorf("chunk at %d of %d bytes (inner offset %d) does not continue the file at %d",
				c.Offset, c.Size, c.InnerOffset, next)
		}
		if err := checkDigest(c.Digest); err != nil {
			return err
		}
		if c.Digest == f.Digest {
			f.Chunks[i].Digest = f.Digest
		}
		next += c.Size
	}
	if next != f.Size {
		return fmt.Errorf("chunks cover %d bytes of a %d-byte file", next, f.Size)
	}
	return nil
}

// setSpan sets a file's span from its chunks' gzip members.
func setSpan(f *File, memberEnd func(int64) int64) {
	for i, c := range f.Chunks {
		if end := memberEnd(c.BlobOffset); i == 0 || end > f.End {
			f.End = end
		}
		if i == 0 || c.BlobOffset < f.Offset {
			f.Offset = c.BlobOffset
		}
	}
}

// checkDigest accepts "" or "sha256:" and 64 lower-case hex digits (what
// digest.Parse checks for sha256, without its regular expression: every
// TOC entry passes here).
func checkDigest(d string) error {
	if d == "" {
		return nil
	}
	hex, ok := strings.CutPrefix(d, "sha256:")
	ok = ok && len(hex) == 64
	for i := 0; ok && i < len(hex); i++ {
		c := hex[i]
		ok = '0' <= c && c <= '9' || 'a' <= c && c <= 'f'
	}
	if !ok {
		return fmt.Errorf("digest %q is not a sha256 digest", d)
	}
	return nil
}
