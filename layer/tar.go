package layer

import (
	"archive/tar"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"strings"

	digest "github.com/opencontainers/go-digest"
)

// DefaultBlockSize is OpenTar's read size when its blockSize is <= 0.
const DefaultBlockSize = 1 << 20

// probeSize is the first read after a skipped body.
const probeSize = 64 << 10

// OpenTar indexes an uncompressed tar blob, reading it in blocks of
// blockSize bytes (DefaultBlockSize when <= 0); the first read after a skip
// is at most 64 KiB. File bodies larger than a block that are not already
// buffered are skipped without being read, so a layer of large files is
// never read whole; every body that was read gets its Digest, the others
// keep "" and are checked by size only.
func OpenTar(ra io.ReaderAt, size int64, blockSize int) (*Index, error) {
	if size < 0 {
		return nil, fmt.Errorf("layer: open tar: negative size %d", size)
	}
	if blockSize <= 0 {
		blockSize = DefaultBlockSize
	}
	br := &blockReader{ra: ra, size: size, block: blockSize}
	tr := tar.NewReader(br)
	b := newBuilder(FormatTar, size)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("layer: open tar at byte %d: %w", br.pos, err)
		}
		// Bodies not read below are skipped by seeking; a large one is
		// followed by a small read.
		br.probe = h.Size > int64(blockSize) && !br.buffered(br.pos, h.Size)
		e, f, ok, err := b.tarFile(h, br.pos, size)
		if err != nil {
			return nil, err
		}
		if !ok {
			continue
		}
		if br.buffered(f.Offset, h.Size) || h.Size <= int64(blockSize) {
			sum := sha256.New()
			if _, err := io.Copy(sum, tr); err != nil {
				return nil, fmt.Errorf("layer: open tar: %s: %w", h.Name, err)
			}
			f.Digest = digest.NewDigest(digest.SHA256, sum).String()
		}
		b.addEntry(e, f)
	}
	return b.finish(), nil
}

// blockReader reads an io.ReaderAt sequentially in blocks and seeks without
// reading, which archive/tar uses to skip bodies.
type blockReader struct {
	ra    io.ReaderAt
	size  int64
	block int

	pos    int64
	buf    []byte // blob bytes [bufOff, bufOff+len(buf))
	bufOff int64
	probe  bool // make the next read small: a large body is being skipped
}

func (r *blockReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if r.pos >= r.size {
		return 0, io.EOF
	}
	if !r.buffered(r.pos, 1) {
		n := int64(r.block)
		if r.probe {
			// After a skipped large body the next entry may be another
			// large one: probe with a small read, go on in full blocks.
			n, r.probe = min(n, probeSize), false
		}
		n = min(n, r.size-r.pos)
		if int64(cap(r.buf)) < n {
			r.buf = make([]byte, n)
		}
		r.buf = r.buf[:n]
		if _, err := readFullAt(r.ra, r.buf, r.pos); err != nil {
			r.buf = r.buf[:0]
			return 0, fmt.Errorf("read [%d,%d): %w", r.pos, r.pos+n, err)
		}
		r.bufOff = r.pos
	}
	n := copy(p, r.buf[r.pos-r.bufOff:])
	r.pos += int64(n)
	return n, nil
}

func (r *blockReader) Seek(off int64, whence int) (int64, error) {
	switch whence {
	case io.SeekCurrent:
		off += r.pos
	case io.SeekEnd:
		off += r.size
	case io.SeekStart:
	default:
		return 0, fmt.Errorf("seek: bad whence %d", whence)
	}
	if off < 0 {
		return 0, fmt.Errorf("seek: negative position %d", off)
	}
	r.pos = off
	return off, nil
}

// buffered reports whether [off, off+n) is in the buffer.
func (r *blockReader) buffered(off, n int64) bool {
	return off >= r.bufOff && off+n <= r.bufOff+int64(len(r.buf))
}

// tarFile checks the entry of header h, recording it as skipped where it
// is not part of the cache; ok says it is a cache file, f, whose body
// starts at pos of a blob of size bytes. archive/tar reads headers in exact
// 512-byte blocks and buffers nothing, so its reader stands at the start
// of the body once Next returned h.
func (b *builder) tarFile(h *tar.Header, pos, size int64) (e entry, f File, ok bool, err error) {
	if h.Typeflag == tar.TypeXGlobalHeader {
		return entry{}, File{}, false, nil
	}
	e, err = checkEntry(h.Name, tarType(h.Typeflag))
	if err != nil {
		return entry{}, File{}, false, err
	}
	if e.p == placeFile && !b.takes(e.kind) {
		e.p = placeSkip
	}
	if e.p == placeSkip {
		b.skip(h.Name)
	}
	if e.p != placeFile && e.p != placeManifest {
		return entry{}, File{}, false, nil
	}
	f = File{Name: strings.Clone(e.file), Size: h.Size, Mode: uint32(h.Mode & 0o777)}
	if h.Size > 0 {
		f.Offset, f.End = pos, pos+h.Size
		if f.End > size {
			return entry{}, File{}, false, fmt.Errorf("layer: tar: %s: body [%d,%d) beyond the %d-byte blob: %w",
				h.Name, f.Offset, f.End, size, io.ErrUnexpectedEOF)
		}
	}
	return e, f, true, nil
}
