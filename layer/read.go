package layer

import (
	"bytes"
	"fmt"
	"io"
	"sync"

	"github.com/klauspost/compress/gzip"
	digest "github.com/opencontainers/go-digest"
)

// Content is one verified file of a Dir.
type Content struct {
	File File   // File.Digest is always set: the digest of Data
	Data []byte // for a tar layer, a slice of the span passed to Read
}

// maxDeflateRatio bounds how many bytes a deflate stream can expand to per
// compressed byte (1032:1 in theory); a chunk claiming more is refused before
// anything is allocated for it.
const maxDeflateRatio = 1032

// Read returns every file of the dir from span, the blob bytes
// [d.Offset, d.End): eStargz chunks are decompressed, tar bodies sliced.
// Each file's size and every known digest (file and chunk) are verified; a
// file that fails comes back as a *VerifyError naming it, and no content is
// returned with it.
func (d *Dir) Read(span []byte) ([]Content, error) {
	if want := d.End - d.Offset; int64(len(span)) != want {
		return nil, fmt.Errorf("layer: read %s: span of %d bytes, want %d", d.Key, len(span), want)
	}
	out := make([]Content, 0, len(d.Files))
	for _, f := range d.Files {
		data, sum, err := d.readFile(span, f)
		if err == nil {
			if sum == "" {
				sum = digest.FromBytes(data).String()
			}
			err = verify(data, f.Size, f.Digest, sum)
		}
		if err != nil {
			return nil, &VerifyError{Key: d.Key, File: f.Name, Err: err}
		}
		f.Digest = sum
		out = append(out, Content{File: f, Data: data})
	}
	return out, nil
}

// gzipReaders are reused: a reader's window and tables cost more than
// decompressing a small file.
var gzipReaders sync.Pool

// readFile returns f's data and, when it had to compute it (a file of one
// chunk), its digest.
func (d *Dir) readFile(span []byte, f File) (data []byte, sum string, err error) {
	if f.Size < 0 {
		return nil, "", fmt.Errorf("negative size %d", f.Size)
	}
	if len(f.Chunks) == 0 {
		if f.Size == 0 {
			return []byte{}, "", nil
		}
		lo, hi := f.Offset-d.Offset, f.End-d.Offset
		if f.End-f.Offset != f.Size || lo < 0 || hi > int64(len(span)) {
			return nil, "", fmt.Errorf("data [%d,%d) of a %d-byte file is not inside span [%d,%d)",
				f.Offset, f.End, f.Size, d.Offset, d.End)
		}
		return span[lo:hi], "", nil
	}
	var total int64
	for _, c := range f.Chunks {
		rel := c.BlobOffset - d.Offset
		if c.Size <= 0 || c.InnerOffset < 0 || rel < 0 || rel >= int64(len(span)) {
			return nil, "", fmt.Errorf("chunk at %d (blob offset %d) is not inside span [%d,%d)",
				c.Offset, c.BlobOffset, d.Offset, d.End)
		}
		if limit := (int64(len(span)) - rel) * maxDeflateRatio; c.Size > limit || c.InnerOffset > limit {
			return nil, "", fmt.Errorf("chunk at %d claims %d bytes, more than its %d compressed bytes can hold",
				c.Offset, c.Size, int64(len(span))-rel)
		}
		total += c.Size
	}
	if total != f.Size {
		return nil, "", fmt.Errorf("%w: chunks hold %d bytes, want %d", ErrMismatch, total, f.Size)
	}
	zr, _ := gzipReaders.Get().(*gzip.Reader)
	if zr == nil {
		zr = new(gzip.Reader)
	}
	defer gzipReaders.Put(zr)
	data = make([]byte, 0, f.Size)
	for _, c := range f.Chunks {
		rel := c.BlobOffset - d.Offset
		if err := zr.Reset(bytes.NewReader(span[rel:])); err != nil {
			return nil, "", fmt.Errorf("chunk at %d: %w", c.Offset, err)
		}
		zr.Multistream(false) // a chunk never crosses its gzip member
		if _, err := io.CopyN(io.Discard, zr, c.InnerOffset); err != nil {
			return nil, "", fmt.Errorf("chunk at %d: skip %d bytes: %w", c.Offset, c.InnerOffset, err)
		}
		start := len(data)
		if c.Offset != int64(start) {
			return nil, "", fmt.Errorf("chunk at %d does not continue the file at %d", c.Offset, start)
		}
		data = data[:start+int(c.Size)]
		if _, err := io.ReadFull(zr, data[start:]); err != nil {
			return nil, "", fmt.Errorf("chunk at %d: %w", c.Offset, err)
		}
		// A file of one chunk is hashed once, for both digests.
		chunkSum := digest.FromBytes(data[start:]).String()
		if len(f.Chunks) == 1 {
			sum = chunkSum
		}
		if err := verify(data[start:], c.Size, c.Digest, chunkSum); err != nil {
			return nil, "", fmt.Errorf("chunk at %d: %w", c.Offset, err)
		}
	}
	return data, sum, nil
}

// verify checks data against a size and a digest ("" for unknown); sum is
// data's digest.
func verify(data []byte, size int64, want, sum string) error {
	if int64(len(data)) != size {
		return fmt.Errorf("%w: %d bytes, want %d", ErrMismatch, len(data), size)
	}
	if want != "" && sum != want {
		return fmt.Errorf("%w: digest %s, want %s", ErrMismatch, sum, want)
	}
	return nil
}
