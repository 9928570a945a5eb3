package layer

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/containerd/stargz-snapshotter/estargz"
	digest "github.com/opencontainers/go-digest"
)

// maxTOCSize bounds the compressed TOC read and the TOC JSON decoded, so a
// hostile footer or a gzip bomb cannot exhaust memory. A TOC entry takes
// about 300 bytes: this is room for some 200k files.
const maxTOCSize = 64 << 20

// legacyFooterSize is the footer of stargz before eStargz (the estargz
// package keeps its constant unexported).
const legacyFooterSize = 47

// openEStargz indexes an eStargz blob: one read for the footer, one for the
// TOC. ok is false, with no error, when the blob has no eStargz footer.
func openEStargz(ra io.ReaderAt, size int64, tocDigest string) (idx *Index, ok bool, err error) {
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
	buf := make([]byte, tocEnd-tocOff)
	if _, err := readFullAt(ra, buf, tocOff); err != nil {
		return nil, true, fmt.Errorf("layer: open toc: read [%d,%d): %w", tocOff, tocEnd, err)
	}
	toc, dgst, err := parseTOC(bytes.NewReader(buf))
	if err != nil {
		return nil, true, fmt.Errorf("layer: open toc: %w", err)
	}
	if tocDigest != "" && dgst.String() != tocDigest {
		return nil, true, fmt.Errorf("layer: open toc: %w: got %s, want %s", ErrTOCDigest, dgst, tocDigest)
	}
	idx, err = indexTOC(toc, tocOff, size)
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

// parseTOC decodes the TOC gzip member: a tar whose first entry is the TOC
// JSON. The digest is of the JSON bytes, as the toc.digest annotation is.
func parseTOC(r io.Reader) (*estargz.JTOC, digest.Digest, error) {
	zr, err := gzip.NewReader(r)
	if err != nil {
		return nil, "", fmt.Errorf("gzip: %w", err)
	}
	zr.Multistream(false)
	tr := tar.NewReader(zr)
	h, err := tr.Next()
	if err != nil {
		return nil, "", fmt.Errorf("tar: %w", err)
	}
	if h.Name != estargz.TOCTarName {
		return nil, "", fmt.Errorf("first entry is %q, want %q", h.Name, estargz.TOCTarName)
	}
	if h.Size > maxTOCSize {
		return nil, "", fmt.Errorf("TOC JSON of %d bytes, more than the %d allowed", h.Size, maxTOCSize)
	}
	data, err := io.ReadAll(tr)
	if err != nil {
		return nil, "", fmt.Errorf("read TOC JSON: %w", err)
	}
	var toc estargz.JTOC
	if err := json.Unmarshal(data, &toc); err != nil {
		return nil, "", fmt.Errorf("decode TOC JSON: %w", err)
	}
	return &toc, digest.NewDigestFromBytes(digest.SHA256, sha256Sum(data)), nil
}

func sha256Sum(b []byte) []byte {
	s := sha256.Sum256(b)
	return s[:]
}

// indexTOC turns TOC entries into an Index. Every data offset must lie
// before the TOC; a chunk's gzip member ends at the next distinct data
// offset (or the TOC), which bounds each file's span.
func indexTOC(toc *estargz.JTOC, tocOff, size int64) (*Index, error) {
	offs := []int64{tocOff}
	for _, e := range toc.Entries {
		if e == nil {
			return nil, fmt.Errorf("null TOC entry")
		}
		if (e.Type == "reg" && e.Size > 0) || e.Type == "chunk" {
			if e.Offset < 0 || e.Offset >= tocOff {
				return nil, fmt.Errorf("entry %q: data offset %d outside [0,%d)", e.Name, e.Offset, tocOff)
			}
			offs = append(offs, e.Offset)
		}
	}
	sort.Slice(offs, func(i, j int) bool { return offs[i] < offs[j] })
	memberEnd := func(off int64) int64 {
		return offs[sort.Search(len(offs), func(i int) bool { return offs[i] > off })]
	}

	b := newBuilder(FormatEStargz, size)
	var (
		cur     *File
		curName string
		curKey  string
		curUse  bool
	)
	flush := func() error {
		if cur != nil && curUse {
			if err := finishChunks(cur, memberEnd); err != nil {
				return fmt.Errorf("entry %q: %w", curName, err)
			}
			b.add(curKey, *cur)
		}
		cur = nil
		return nil
	}
	for _, e := range toc.Entries {
		if e.Type == "chunk" {
			if cur == nil {
				return nil, fmt.Errorf("chunk entry %q follows no regular file", e.Name)
			}
			if e.Name != "" && e.Name != curName {
				return nil, fmt.Errorf("chunk entry %q inside file %q", e.Name, curName)
			}
			cs := e.ChunkSize
			if cs == 0 { // zero means "to the end of the file"
				cs = cur.Size - e.ChunkOffset
			}
			cur.Chunks = append(cur.Chunks, Chunk{Offset: e.ChunkOffset, Size: cs, BlobOffset: e.Offset,
				InnerOffset: e.InnerOffset, Digest: e.ChunkDigest})
			continue
		}
		if err := flush(); err != nil {
			return nil, err
		}
		key, file, p, err := checkEntry(e.Name, tocKind(e.Type))
		if err != nil {
			return nil, err
		}
		if p == placeSkip {
			b.skip(e.Name)
		}
		if e.Type != "reg" {
			continue
		}
		if e.Size < 0 {
			return nil, fmt.Errorf("entry %q: negative size %d", e.Name, e.Size)
		}
		cur, curName, curKey, curUse = &File{Name: file, Size: e.Size, Mode: uint32(e.Mode & 0o777), Digest: e.Digest},
			e.Name, key, p == placeFile
		if e.Size > 0 {
			cs := e.ChunkSize
			if cs == 0 {
				cs = e.Size
			}
			cur.Chunks = []Chunk{{Offset: e.ChunkOffset, Size: cs, BlobOffset: e.Offset,
				InnerOffset: e.InnerOffset, Digest: e.ChunkDigest}}
		}
	}
	if err := flush(); err != nil {
		return nil, err
	}
	return b.finish(), nil
}

// finishChunks checks that a file's chunks tile it exactly and sets its span.
func finishChunks(f *File, memberEnd func(int64) int64) error {
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
		next += c.Size
		if end := memberEnd(c.BlobOffset); i == 0 || end > f.End {
			f.End = end
		}
		if i == 0 || c.BlobOffset < f.Offset {
			f.Offset = c.BlobOffset
		}
	}
	if next != f.Size {
		return fmt.Errorf("chunks cover %d bytes of a %d-byte file", next, f.Size)
	}
	return nil
}

func checkDigest(d string) error {
	if d == "" {
		return nil
	}
	if _, err := digest.Parse(d); err != nil || !strings.HasPrefix(d, "sha256:") {
		return fmt.Errorf("digest %q is not a sha256 digest", d)
	}
	return nil
}
