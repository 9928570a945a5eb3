package layer

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"slices"
	"sync"

	"github.com/klauspost/compress/gzip"
	digest "github.com/opencontainers/go-digest"
)

// Content is one verified file of a Dir read whole into memory (Read).
type Content struct {
	File File // File.Digest is always set: the digest of Data
	Data []byte
}

// maxDeflateRatio bounds how many bytes a deflate stream can expand to per
// compressed byte (1032:1 in theory); a chunk claiming more is refused before
// anything is read for it.
const maxDeflateRatio = 1032

// Read returns every file of the dir from span, the blob bytes
// [d.Offset, d.End), read whole into memory: for small dirs and tests. Each
// file is read as Open reads it; a file that fails comes back as a
// *VerifyError naming it, and no content is returned with it.
func (d *Dir) Read(span []byte) ([]Content, error) {
	if want := d.End - d.Offset; int64(len(span)) != want {
		return nil, fmt.Errorf("layer: read %s: span of %d bytes, want %d", d.Key, len(span), want)
	}
	ra := &shifted{r: bytes.NewReader(span), off: d.Offset}
	out := make([]Content, 0, len(d.Files))
	for _, f := range d.Files {
		fr := d.Open(ra, f)
		data, err := io.ReadAll(fr)
		fr.Close()
		if err != nil {
			return nil, err
		}
		f.Digest = fr.Digest()
		out = append(out, Content{File: f, Data: data})
	}
	return out, nil
}

// shifted reads r as if it started at blob offset off.
type shifted struct {
	r   io.ReaderAt
	off int64
}

func (s *shifted) ReadAt(p []byte, off int64) (int, error) {
	if off < s.off {
		return 0, fmt.Errorf("read at %d, before the span at %d", off, s.off)
	}
	return s.r.ReadAt(p, off-s.off)
}

// ByOffset returns d's files in the order their data lie in the blob, the
// order that reads a span front to back.
func (d *Dir) ByOffset() []File {
	files := slices.Clone(d.Files)
	slices.SortStableFunc(files, func(a, b File) int { return cmp.Compare(a.Offset, b.Offset) })
	return files
}

// Open returns a reader of file f of d, whose data it reads from ra at the
// blob's offsets (within d's span): eStargz chunks are decompressed, tar
// bodies read as they are. It holds no more than a decompressor's window
// and a small buffer, however large the file. As it goes it checks each
// chunk's size and digest, and at the end the file's size and digest
// (those the index knows); a mismatch, or data that does not decode, is a
// *VerifyError naming the file instead of io.EOF, so a caller must read to
// io.EOF before trusting what it read. An error of ra itself (the network)
// comes back as it is, not as a *VerifyError. Close returns the
// decompressor for reuse.
func (d *Dir) Open(ra io.ReaderAt, f File) *FileReader {
	r := &FileReader{d: d, ra: &watchedAt{r: ra}, f: f, sum: sha256.New()}
	r.err = r.check()
	return r
}

// watchedAt remembers the first error of its ReaderAt other than io.EOF:
// the source failed, which says nothing about the data.
type watchedAt struct {
	r   io.ReaderAt
	err error
}

func (w *watchedAt) ReadAt(p []byte, off int64) (int, error) {
	n, err := w.r.ReadAt(p, off)
	if err != nil && !errors.Is(err, io.EOF) && w.err == nil {
		w.err = err
	}
	return n, err
}

// FileReader is one file being read and verified (Dir.Open).
type FileReader struct {
	d   *Dir
	ra  *watchedAt
	f   File
	sum hash.Hash // of the whole file
	n   int64     // bytes returned so far
	err error     // sticky

	// eStargz: the chunk being read
	zr       *gzip.Reader
	chunk    int
	cur      io.Reader // the current chunk's (or tar body's) bytes left
	curSum   hash.Hash // of the current chunk, when it has a digest
	curStart int64
	raw      bool // tar body: cur reads the blob directly
	digest   string
}

// gzipReaders are reused: a reader's window and tables cost more than
// decompressing a small file.
var gzipReaders sync.Pool

// check refuses a file whose chunks or body cannot be what the index says,
// before anything is read.
func (r *FileReader) check() error {
	f, d := r.f, r.d
	if f.Size < 0 {
		return r.fail(fmt.Errorf("negative size %d", f.Size))
	}
	if f.Size == 0 {
		return nil
	}
	span := d.End - d.Offset
	if len(f.Chunks) == 0 {
		if f.End-f.Offset != f.Size || f.Offset < d.Offset || f.End > d.End {
			return r.fail(fmt.Errorf("data [%d,%d) of a %d-byte file is not inside span [%d,%d)",
				f.Offset, f.End, f.Size, d.Offset, d.End))
		}
		r.raw = true
		r.cur = io.NewSectionReader(r.ra, f.Offset, f.Size)
		return nil
	}
	var total int64
	for _, c := range f.Chunks {
		rel := c.BlobOffset - d.Offset
		if c.Size <= 0 || c.InnerOffset < 0 || rel < 0 || rel >= span {
			return r.fail(fmt.Errorf("chunk at %d (blob offset %d) is not inside span [%d,%d)",
				c.Offset, c.BlobOffset, d.Offset, d.End))
		}
		if limit := (span - rel) * maxDeflateRatio; c.Size > limit || c.InnerOffset > limit {
			return r.fail(fmt.Errorf("chunk at %d claims %d bytes, more than its %d compressed bytes can hold",
				c.Offset, c.Size, span-rel))
		}
		total += c.Size
	}
	if total != f.Size {
		return r.fail(fmt.Errorf("%w: chunks hold %d bytes, want %d", ErrMismatch, total, f.Size))
	}
	return nil
}

func (r *FileReader) fail(err error) error {
	return &VerifyError{Key: r.d.Key, File: r.f.Name, Err: err}
}

// Read reads the file's content, verified as described at Dir.Open.
func (r *FileReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	for r.cur == nil {
		if r.raw || r.chunk == len(r.f.Chunks) {
			r.err = r.finish()
			return 0, r.err
		}
		if err := r.nextChunk(); err != nil {
			r.err = r.failed(err)
			return 0, r.err
		}
	}
	n, err := r.cur.Read(p)
	r.sum.Write(p[:n])
	if r.curSum != nil {
		r.curSum.Write(p[:n])
	}
	r.n += int64(n)
	if err == io.EOF {
		err = r.endCur()
	}
	if err != nil {
		r.err = r.failed(err)
		return n, r.err
	}
	return n, nil
}

// failed is the error of a failed read: the source's own, or else a
// verification failure of the file.
func (r *FileReader) failed(err error) error {
	if r.ra.err != nil {
		return fmt.Errorf("layer: read %s/%s: %w", r.d.Key, r.f.Name, r.ra.err)
	}
	return r.fail(err)
}

// nextChunk starts the next eStargz chunk: a gzip member read from its
// start, InnerOffset bytes skipped.
func (r *FileReader) nextChunk() error {
	c := r.f.Chunks[r.chunk]
	if c.Offset != r.n {
		return fmt.Errorf("chunk at %d does not continue the file at %d", c.Offset, r.n)
	}
	if r.zr == nil {
		r.zr, _ = gzipReaders.Get().(*gzip.Reader)
		if r.zr == nil {
			r.zr = new(gzip.Reader)
		}
	}
	// The member ends before the span does.
	if err := r.zr.Reset(io.NewSectionReader(r.ra, c.BlobOffset, r.d.End-c.BlobOffset)); err != nil {
		return fmt.Errorf("chunk at %d: %w", c.Offset, err)
	}
	r.zr.Multistream(false) // a chunk never crosses its gzip member
	if _, err := io.CopyN(io.Discard, r.zr, c.InnerOffset); err != nil {
		return fmt.Errorf("chunk at %d: skip %d bytes: %w", c.Offset, c.InnerOffset, err)
	}
	r.cur = io.LimitReader(r.zr, c.Size)
	r.curSum, r.curStart = nil, r.n
	if c.Digest != "" && !(len(r.f.Chunks) == 1 && c.Digest == r.f.Digest) {
		r.curSum = sha256.New() // a one-chunk file's digest is checked once, as the file's
	}
	return nil
}

// endCur ends the current chunk or body: its size and digest must be the
// index's.
func (r *FileReader) endCur() error {
	if r.raw {
		r.cur = nil
		if r.n != r.f.Size {
			return fmt.Errorf("%w: %d bytes, want %d", ErrMismatch, r.n, r.f.Size)
		}
		return nil
	}
	c := r.f.Chunks[r.chunk]
	if got := r.n - r.curStart; got != c.Size {
		return fmt.Errorf("chunk at %d: %w: %d bytes, want %d", c.Offset, io.ErrUnexpectedEOF, got, c.Size)
	}
	if r.curSum != nil {
		if got := digest.NewDigest(digest.SHA256, r.curSum).String(); got != c.Digest {
			return fmt.Errorf("chunk at %d: %w: digest %s, want %s", c.Offset, ErrMismatch, got, c.Digest)
		}
	}
	r.cur = nil
	r.chunk++
	return nil
}

// finish checks the whole file at its end.
func (r *FileReader) finish() error {
	if r.n != r.f.Size {
		return r.fail(fmt.Errorf("%w: %d bytes, want %d", ErrMismatch, r.n, r.f.Size))
	}
	r.digest = digest.NewDigest(digest.SHA256, r.sum).String()
	if r.f.Digest != "" && r.digest != r.f.Digest {
		return r.fail(fmt.Errorf("%w: digest %s, want %s", ErrMismatch, r.digest, r.f.Digest))
	}
	return io.EOF
}

// Digest is the digest of the content, once Read returned io.EOF; "" before.
func (r *FileReader) Digest() string {
	if !errors.Is(r.err, io.EOF) {
		return ""
	}
	return r.digest
}

// Close returns the decompressor for reuse; the reader fails afterwards.
func (r *FileReader) Close() error {
	if r.zr != nil {
		gzipReaders.Put(r.zr)
		r.zr = nil
	}
	if r.err == nil {
		r.err = errors.New("layer: read after Close")
	}
	r.cur = nil
	return nil
}
