package layer

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"sync"

	"github.com/containerd/stargz-snapshotter/estargz"
	kgzip "github.com/klauspost/compress/gzip"
	digest "github.com/opencontainers/go-digest"
	"golang.org/x/sync/semaphore"
)

// gzipWriter is one gzip member compressor, reused member after member
// (*gzip.Writer of klauspost/compress or of the standard library).
type gzipWriter interface {
	Reset(w io.Writer)
	Write(p []byte) (int, error)
	Flush() error
	Close() error
}

// writerOptions fix what an eStargz writer produces; the output depends on
// everything here but workers.
type writerOptions struct {
	workers   int               // goroutines compressing members; >= 1
	chunkSize int64             // largest piece of a file in one gzip member
	newGzip   func() gzipWriter // one per worker, and one for the TOC
	budget    int64             // uncompressed bytes queued or being compressed, at most
	inFlight  int               // members queued, at most (tiny files)
}

// defaultWriterOptions are BuildSource's: klauspost's deflate at level 6. Its
// output is a pure function of level and input, as the standard library's
// is, and it is 2-3x faster.
func defaultWriterOptions(workers int) writerOptions {
	return writerOptions{
		workers:   max(1, workers),
		chunkSize: chunkSize,
		newGzip: func() gzipWriter {
			zw, err := kgzip.NewWriterLevel(io.Discard, compressionLevel)
			if err != nil {
				panic(err) // a constant level
			}
			return zw
		},
		budget:   64 << 20,
		inFlight: 4 * max(1, workers),
	}
}

// writer writes an eStargz blob with the layout of estargz.Writer.AppendTar
// (one gzip member per chunk of a regular file's data; tar headers and the
// padding of a file go in the member open at the time, so a file's header
// ends the member before its data; the TOC member and the footer last),
// but compresses its members on a pool of workers: the caller (the
// producer) lays the uncompressed members out in order, workers compress
// them in any order, and one goroutine writes them out in order, stamping
// each TOC entry with its member's offset. Every member is compressed
// alone, so the bytes do not depend on the number of workers.
//
// Not safe for concurrent use: one producer calls dir, file, then close.
type writer struct {
	// immutable after newWriter
	o      writerOptions
	ctx    context.Context
	cancel context.CancelCauseFunc
	out    *countWriter
	budget *semaphore.Weighted
	work   chan *member // to the workers
	queue  chan *member // to the consumer, in order
	done   sync.WaitGroup

	// the producer's
	tw     *tar.Writer // writes into cur
	cur    *member     // open member, nil when none
	toc    []*estargz.TOCEntry
	closed bool

	// the consumer's until done.Wait returns
	diff  hash.Hash // of the uncompressed tar
	usize int64
}

// member is one gzip member: laid out by the producer, compressed by a
// worker (done closed when out is set), written by the consumer.
type member struct {
	raw    []byte
	flush  bool // estargz.Writer flushes a member it closes for a new chunk
	spans  []span
	stamps []*estargz.TOCEntry // entries whose Offset is this member's
	weight int64

	out  []byte
	err  error
	done chan struct{}
}

// span is one chunk's data inside member.raw: its digest is the chunk's,
// and the file's when the file is that one chunk.
type span struct {
	start, end int
	chunk      *estargz.TOCEntry
	file       *estargz.TOCEntry // nil when the file has more chunks
}

// Members' buffers are reused: most members are small, and allocating
// (and clearing) a buffer per member costs as much as compressing it.
var (
	rawPool = sync.Pool{New: func() any { return new([]byte) }}
	outPool = sync.Pool{New: func() any { return new([]byte) }}
)

func newWriter(ctx context.Context, w io.Writer, o writerOptions) *writer {
	ctx, cancel := context.WithCancelCause(ctx)
	x := &writer{
		o:      o,
		ctx:    ctx,
		cancel: cancel,
		out:    &countWriter{w: w, h: sha256.New()},
		budget: semaphore.NewWeighted(o.budget),
		work:   make(chan *member, o.inFlight),
		queue:  make(chan *member, o.inFlight),
		diff:   sha256.New(),
	}
	x.tw = tar.NewWriter(sink{x})
	for range o.workers {
		x.done.Go(x.compress)
	}
	x.done.Go(x.consume)
	return x
}

// sink appends what the tar writer writes to the open member, opening one
// when none is (as estargz.Writer opens a gzip stream on demand).
type sink struct{ w *writer }

func (s sink) Write(p []byte) (int, error) {
	s.w.open()
	s.w.cur.raw = append(s.w.cur.raw, p...)
	return len(p), nil
}

func (w *writer) open() {
	if w.cur == nil {
		raw := rawPool.Get().(*[]byte)
		w.cur = &member{raw: (*raw)[:0], done: make(chan struct{})}
	}
}

// emit hands the open member to the workers and the consumer.
func (w *writer) emit(flush bool) error {
	m := w.cur
	if m == nil {
		return nil
	}
	w.cur = nil
	m.flush = flush
	m.weight = min(int64(len(m.raw)), w.o.budget)
	if err := w.budget.Acquire(w.ctx, m.weight); err != nil {
		return context.Cause(w.ctx)
	}
	w.work <- m
	w.queue <- m
	return nil
}

// header writes a non-regular entry (a directory).
func (w *writer) header(h *tar.Header) error {
	if err := w.tw.WriteHeader(h); err != nil {
		return err
	}
	w.toc = append(w.toc, &estargz.TOCEntry{Name: h.Name, Type: "dir", Mode: h.Mode})
	return w.tw.Flush()
}

// file writes a regular file of h.Size bytes read from r.
func (w *writer) file(h *tar.Header, r io.Reader) error {
	if err := w.tw.WriteHeader(h); err != nil {
		return err
	}
	first := &estargz.TOCEntry{Name: h.Name, Type: "reg", Mode: h.Mode, Size: h.Size}
	if h.Size == 0 {
		first.Digest = digest.SHA256.FromBytes(nil).String()
		w.toc = append(w.toc, first)
		return w.tw.Flush()
	}
	var whole hash.Hash // the file's digest, when it has several chunks
	if h.Size > w.o.chunkSize {
		whole = sha256.New()
		r = io.TeeReader(r, whole)
	}
	ent := first
	for off := int64(0); off < h.Size; {
		n := w.o.chunkSize
		if rest := h.Size - off; rest < n {
			n = rest
		} else {
			ent.ChunkSize = n // as estargz.Writer: set unless the chunk is a shorter last one
		}
		if err := w.emit(true); err != nil {
			return err
		}
		w.open()
		w.cur.stamps = append(w.cur.stamps, ent)
		ent.ChunkOffset = off
		start := len(w.cur.raw)
		if _, err := io.CopyN(w.tw, r, n); err != nil {
			return err
		}
		sp := span{start: start, end: len(w.cur.raw), chunk: ent}
		if whole == nil {
			sp.file = ent
		}
		w.cur.spans = append(w.cur.spans, sp)
		w.toc = append(w.toc, ent)
		off += n
		ent = &estargz.TOCEntry{Name: h.Name, Type: "chunk"}
	}
	if whole != nil {
		first.Digest = digest.NewDigest(digest.SHA256, whole).String()
	}
	return w.tw.Flush()
}

// compress is one worker.
func (w *writer) compress() {
	zw := w.o.newGzip()
	for m := range w.work {
		out := outPool.Get().(*[]byte)
		buf := bytes.NewBuffer((*out)[:0])
		zw.Reset(buf)
		_, m.err = zw.Write(m.raw)
		if m.err == nil && m.flush {
			m.err = zw.Flush()
		}
		if err := zw.Close(); m.err == nil {
			m.err = err
		}
		m.out = buf.Bytes()
		for _, s := range m.spans {
			d := digest.SHA256.FromBytes(m.raw[s.start:s.end]).String()
			s.chunk.ChunkDigest = d
			if s.file != nil {
				s.file.Digest = d
			}
		}
		close(m.done)
	}
}

// consume writes members in order; after a failure it only drains.
func (w *writer) consume() {
	failed := false
	for m := range w.queue {
		<-m.done
		if !failed {
			err := m.err
			if err == nil {
				for _, e := range m.stamps {
					e.Offset = w.out.n
				}
				w.diff.Write(m.raw)
				w.usize += int64(len(m.raw))
				_, err = w.out.Write(m.out)
			}
			if err != nil {
				failed = true
				w.cancel(fmt.Errorf("write: %w", err))
			}
		}
		w.budget.Release(m.weight)
		raw, out := m.raw[:0], m.out[:0]
		rawPool.Put(&raw)
		outPool.Put(&out)
		m.raw, m.out = nil, nil
	}
}

// stop ends the pipeline: workers and consumer finish what was emitted.
func (w *writer) stop() {
	if !w.closed {
		w.closed = true
		close(w.work)
		close(w.queue)
		w.done.Wait()
	}
}

// abort stops the pipeline after a producer error.
func (w *writer) abort(err error) {
	w.cancel(err)
	w.stop()
}

// close writes the last member, the TOC member and the footer.
func (w *writer) close() (Built, error) {
	defer w.cancel(nil)
	err := w.emit(false) // estargz.Writer closes its last stream unflushed
	w.stop()
	if cause := context.Cause(w.ctx); cause != nil {
		return Built{}, cause
	}
	if err != nil {
		return Built{}, err
	}
	// As estargz.GzipCompressor.WriteTOCAndFooter writes them.
	tocJSON, err := json.MarshalIndent(&estargz.JTOC{Version: 1, Entries: w.toc}, "", "\t")
	if err != nil {
		return Built{}, fmt.Errorf("toc: %w", err)
	}
	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: estargz.TOCTarName, Size: int64(len(tocJSON))}); err != nil {
		return Built{}, fmt.Errorf("toc: %w", err)
	}
	if _, err := tw.Write(tocJSON); err != nil {
		return Built{}, fmt.Errorf("toc: %w", err)
	}
	if err := tw.Close(); err != nil {
		return Built{}, fmt.Errorf("toc: %w", err)
	}
	w.diff.Write(raw.Bytes())
	w.usize += int64(raw.Len())
	tocOff := w.out.n
	zw := w.o.newGzip()
	zw.Reset(w.out)
	if _, err := zw.Write(raw.Bytes()); err != nil {
		return Built{}, fmt.Errorf("write: %w", err)
	}
	if err := zw.Close(); err != nil {
		return Built{}, fmt.Errorf("write: %w", err)
	}
	if _, err := w.out.Write(footer(tocOff)); err != nil {
		return Built{}, fmt.Errorf("write: %w", err)
	}
	if w.out.err != nil {
		return Built{}, fmt.Errorf("write: %w", w.out.err)
	}
	return Built{
		Digest:           digest.NewDigest(digest.SHA256, w.out.h),
		DiffID:           digest.NewDigest(digest.SHA256, w.diff),
		TOCDigest:        digest.FromBytes(tocJSON),
		Size:             w.out.n,
		UncompressedSize: w.usize,
	}, nil
}

// footer is eStargz's 51-byte footer pointing at the TOC member (the
// estargz package keeps its own builder unexported).
func footer(tocOff int64) []byte {
	sub := fmt.Sprintf("%016xSTARGZ", tocOff)
	extra := []byte{'S', 'G', 0, 0}
	binary.LittleEndian.PutUint16(extra[2:], uint16(len(sub)))
	return estargz.CreateGzipFooter(append(extra, sub...))
}

// countWriter hashes and counts what goes to w.
type countWriter struct {
	w   io.Writer
	h   hash.Hash
	n   int64
	err error
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.h.Write(p[:n])
	c.n += int64(n)
	if err != nil && c.err == nil {
		c.err = err
	}
	return n, err
}
