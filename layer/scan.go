package layer

import (
	"archive/tar"
	"bufio"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/klauspost/compress/gzip"
	digest "github.com/opencontainers/go-digest"
)

// What the manifest vouches for. A layer digest covers the whole blob; an
// eStargz TOC digest annotation covers the TOC, and through its digests the
// files it lists. Bytes read by range are only as good as the digest they
// are checked against, so a layer is read lazily only when its index came
// from bytes the manifest vouches for and gives every file a digest
// (Verifiable); else the whole blob is read once as a stream, its digest
// checked at the end, and the index taken from (ScanTar) or checked
// against (Check) that stream.

// Complete reports whether every non-empty cache file of idx has a digest.
func (idx *Index) Complete() bool {
	if m := idx.Manifest; m != nil && m.Size > 0 && m.Digest == "" {
		return false
	}
	for _, d := range idx.Dirs {
		for _, f := range d.Files {
			if f.Size > 0 && f.Digest == "" {
				return false
			}
		}
	}
	return true
}

// Verifiable reports whether every byte Dir reads of idx can be checked
// against a digest that chains to tocDigest, the TOC digest annotation of
// the layer's descriptor: idx is an eStargz index of that TOC, and every
// non-empty file has a digest. When it is not, nothing of the blob may be
// trusted before the whole blob's digest was checked (Check).
func (idx *Index) Verifiable(tocDigest string) bool {
	return idx.Format == FormatEStargz && tocDigest != "" && idx.TOCDigest == tocDigest && idx.Complete()
}

// ScanTar indexes an uncompressed tar read as a stream, reading r to its
// end: every cache file gets its offset in the stream and the digest of its
// body, so the index can serve ranged reads that are each verified. size is
// the stream's length. The index is only as good as the stream: the caller
// checks the stream's digest at its end before using the index.
func ScanTar(r io.Reader, size int64) (*Index, error) {
	cr := &countingReader{r: bufio.NewReaderSize(r, 1<<20)}
	tr := tar.NewReader(cr)
	b := newBuilder(FormatTar, size)
	sum := sha256.New()
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("layer: scan tar at byte %d: %w", cr.n, err)
		}
		e, f, ok, err := b.tarFile(h, cr.n, size)
		if err != nil {
			return nil, err
		}
		if !ok {
			continue
		}
		sum.Reset()
		if _, err := io.Copy(sum, tr); err != nil {
			return nil, fmt.Errorf("layer: scan tar: %s: %w", h.Name, err)
		}
		f.Digest = digest.NewDigest(digest.SHA256, sum).String()
		b.addEntry(e, f)
	}
	if _, err := io.Copy(io.Discard, cr); err != nil { // to the end: its digest is checked there
		return nil, fmt.Errorf("layer: scan tar: %w", err)
	}
	if cr.n != size {
		return nil, fmt.Errorf("layer: scan tar: %d bytes, want %d", cr.n, size)
	}
	return b.finish(), nil
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// DisagreeError says an eStargz blob's TOC and its tar stream disagree
// about a file: what the TOC serves is not what unpacking the tar gives.
type DisagreeError struct {
	Path   string // KEY/file, or the TOC itself
	Reason string
}

func (e *DisagreeError) Error() string {
	return fmt.Sprintf("layer: TOC and tar disagree on %s: %s", e.Path, e.Reason)
}

// Check reads the whole eStargz blob that idx indexes as a stream (r, to
// its end) and makes sure its TOC says what its tar holds: the TOC in the
// stream is the one idx was built from (by digest), and both list the same
// cache files, each with the same size, the TOC's digest (where it gives
// one) being that of the tar body. It returns a copy of idx with every
// file's digest set from the stream, or a *DisagreeError. Like ScanTar, the
// result is only as good as the stream, whose digest the caller checks at
// its end.
func (idx *Index) Check(r io.Reader) (*Index, error) {
	if idx.Format != FormatEStargz {
		return nil, fmt.Errorf("layer: check: a %s index has no TOC", idx.Format)
	}
	zr, err := gzip.NewReader(bufio.NewReaderSize(r, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("layer: check: gzip: %w", err)
	}
	tr := tar.NewReader(zr)
	type seen struct {
		size   int64
		digest string
	}
	type path struct{ unit, file string }
	files := map[path]seen{} // the last entry of a name winning
	var manifest *seen
	tocDigest := ""
	sum := sha256.New()
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("layer: check: %w", err)
		}
		if h.Typeflag == tar.TypeXGlobalHeader {
			continue
		}
		var e entry
		if h.Name != estargz.TOCTarName {
			if e, err = checkEntry(h.Name, tarType(h.Typeflag)); err != nil {
				return nil, err
			}
			// Files of another kind than the index's are not in it.
			if e.p == placeFile && e.kind != idx.Kind || e.p != placeFile && e.p != placeManifest {
				continue
			}
		}
		sum.Reset()
		if _, err := io.Copy(sum, tr); err != nil {
			return nil, fmt.Errorf("layer: check: %s: %w", h.Name, err)
		}
		dg := digest.NewDigest(digest.SHA256, sum).String()
		switch {
		case h.Name == estargz.TOCTarName:
			tocDigest = dg
		case e.p == placeManifest:
			manifest = &seen{h.Size, dg}
		default:
			files[path{e.unit, e.file}] = seen{h.Size, dg}
		}
	}
	// The footer's empty member and anything after: read to the end, where
	// the caller's stream checks its digest.
	if _, err := io.Copy(io.Discard, zr); err != nil {
		return nil, fmt.Errorf("layer: check: %w", err)
	}
	if _, err := io.Copy(io.Discard, r); err != nil {
		return nil, fmt.Errorf("layer: check: %w", err)
	}
	if tocDigest != idx.TOCDigest {
		return nil, &DisagreeError{Path: estargz.TOCTarName, Reason: fmt.Sprintf("the blob holds TOC %s, the index is of %s", tocDigest, idx.TOCDigest)}
	}
	check := func(name string, f File, s seen, ok bool) (File, error) {
		switch {
		case !ok:
			return f, &DisagreeError{Path: name, Reason: "in the TOC, not in the tar"}
		case s.size != f.Size:
			return f, &DisagreeError{Path: name, Reason: fmt.Sprintf("%d bytes in the TOC, %d in the tar", f.Size, s.size)}
		case f.Digest != "" && f.Digest != s.digest:
			return f, &DisagreeError{Path: name, Reason: fmt.Sprintf("digest %s in the TOC, %s in the tar", f.Digest, s.digest)}
		}
		f.Digest = s.digest
		return f, nil
	}
	out := *idx
	out.Dirs = make(map[string]*Dir, len(idx.Dirs))
	if m := idx.Manifest; m != nil || manifest != nil {
		if m == nil {
			return nil, &DisagreeError{Path: string(idx.Kind) + " manifest", Reason: "in the tar, not in the TOC"}
		}
		var s seen
		if manifest != nil {
			s = *manifest
		}
		f, err := check(string(idx.Kind)+" manifest", *m, s, manifest != nil)
		if err != nil {
			return nil, err
		}
		out.Manifest = &f
	}
	n := 0
	for key, d := range idx.Dirs {
		nd := *d
		nd.Files = make([]File, len(d.Files))
		for i, f := range d.Files {
			s, ok := files[path{key, f.Name}]
			var err error
			if nd.Files[i], err = check(key+"/"+f.Name, f, s, ok); err != nil {
				return nil, err
			}
		}
		n += len(d.Files)
		out.Dirs[key] = &nd
	}
	if n != len(files) {
		for p := range files {
			if d := idx.Dirs[p.unit]; d == nil || !hasFile(d, p.file) {
				return nil, &DisagreeError{Path: p.unit + "/" + p.file, Reason: "in the tar, not in the TOC"}
			}
		}
	}
	return &out, nil
}

func hasFile(d *Dir, name string) bool {
	for _, f := range d.Files {
		if f.Name == name {
			return true
		}
	}
	return false
}
