package image

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"cargohold/gpu"
	"cargohold/layer"
	"cargohold/resolver"
	"cargohold/triton"
)

// Unpacked says what Unpack did, KEY by KEY.
type Unpacked struct {
	Targets   []gpu.Target // the image's targets (labels, else kernel JSONs)
	Installed []string     // KEY dirs written
	Kept      []string     // KEY dirs already present locally, left alone
	Unfit     []string     // KEY dirs whose kernels fit no local GPU
	Failed    []Failure    // KEY dirs left out: bad content, or their install failed
	Reason    string       // why nothing was extracted, when nothing was
}

// Failure is one KEY dir Unpack left out, and why.
type Failure struct {
	Key string
	Err error
}

// ErrSomeFailed says Unpack installed what it could but left some KEY
// dirs out (Unpacked.Failed); Triton compiles those.
var ErrSomeFailed = errors.New("image: unpack: some KEY dirs failed")

// maxMeta bounds a kernel JSON or group file, read into memory to check it
// (or rewrite it); a larger one fails its KEY dir.
const maxMeta = 64 << 20

// maxSpanInMemory: a KEY dir's span up to this size is read into memory in
// one read; a larger one is read from the blob file as its files stream.
const maxSpanInMemory = 8 << 20

// Streamer opens a layer's whole blob, verified (*resolver.Resolver).
type Streamer interface {
	Stream(ctx context.Context, l resolver.LayerRef) (*resolver.Stream, error)
}

// Unpack extracts the entries of im that fit the local targets into dir,
// streaming its layers through r. Group files are rewritten to dir. An
// image whose labels name no fitting target is not downloaded at all.
//
// What it writes is bounded by the free space of dir's file system, taken
// when it starts: each blob's download, and each layer's uncompressed cache
// files before any of them is written (a gzip layer's file by file, as its
// tar headers come); an image that needs more is refused with an error
// wrapping ErrNoSpace.
//
// A layer that cannot be trusted (its digest, unsafe entries, an eStargz TOC
// that disagrees with its tar) fails the whole image, and nothing is
// installed. A KEY dir whose own content is bad (a file that fails its TOC
// digest, a malformed kernel JSON or group file) or whose install fails is
// left out, as the mount would miss it: the other KEY dirs are installed,
// the bad ones listed in Unpacked.Failed, and the error wraps
// ErrSomeFailed.
func Unpack(ctx context.Context, r Streamer, im *resolver.Image, dir string, local []gpu.Target, log *slog.Logger) (*Unpacked, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	res := &Unpacked{}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("image: unpack: %w", err)
	}
	sum, lerr := triton.ParseLabels(im.Labels)
	switch {
	case lerr == nil:
		res.Targets = sum.Targets
		if !gpu.AnyFits(sum.Targets, local) {
			res.Reason = fmt.Sprintf("no target of the image (%s) fits the local GPU (%s)", gpu.FormatList(sum.Targets), gpu.FormatList(local))
			return res, nil
		}
	case errors.Is(lerr, triton.ErrNoLabels):
		log.Info("image has no cache labels; learning targets from its kernel JSONs", "image", im.Ref)
	default:
		log.Warn("ignoring malformed cache labels; learning targets from its kernel JSONs", "image", im.Ref, "err", lerr)
	}
	if err := os.MkdirAll(abs, 0o755); err != nil {
		return nil, fmt.Errorf("image: unpack: %w", err)
	}
	// Staged inside dir so that installing a KEY dir is a rename on one
	// filesystem; its name is not a KEY, so Triton never looks at it.
	stage, err := os.MkdirTemp(abs, ".cargohold-unpack-")
	if err != nil {
		return nil, fmt.Errorf("image: unpack: %w", err)
	}
	defer os.RemoveAll(stage)
	free, err := freeSpace(abs)
	if err != nil {
		return nil, fmt.Errorf("image: unpack: %w", err)
	}
	st := &stager{stage: stage, root: abs, dirs: map[string]*stagedDir{}, failed: map[string]error{},
		room: &budget{left: free, dir: abs}}
	for i := range im.Layers {
		if err := st.layer(ctx, r, im, i); err != nil {
			return nil, err
		}
	}
	st.install(local, res, log)
	if n := len(res.Failed); n > 0 {
		return res, fmt.Errorf("%w: %d of %d KEY dirs", ErrSomeFailed, n, n+len(res.Installed)+len(res.Kept)+len(res.Unfit))
	}
	return res, nil
}

// stager writes the cache files of an image's layers under stage/KEY/,
// group files already rewritten to root, the cache dir they are installed
// into, and remembers what it wrote so that install need not read it back.
type stager struct {
	// immutable
	stage, root string
	room        *budget

	mu     sync.Mutex
	dirs   map[string]*stagedDir // guarded by mu
	failed map[string]error      // guarded by mu: KEY dirs left out, and why
}

// fail leaves KEY dir key out, for why; the first cause is kept.
func (s *stager) fail(key string, why error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failed[key] == nil {
		s.failed[key] = why
	}
}

// keyLevel reports whether err is a fault of one KEY dir's content rather
// than of the layer, the disk or the caller: that dir is left out, the
// others go on.
func keyLevel(err error) bool {
	var ve *layer.VerifyError
	var me *metaError
	return errors.As(err, &ve) || errors.As(err, &me)
}

// metaError is a kernel JSON or group file that cannot be used.
type metaError struct{ err error }

func (e *metaError) Error() string { return e.err.Error() }
func (e *metaError) Unwrap() error { return e.err }

// stagedDir is what a KEY dir holds so far. One goroutine at a time
// writes a KEY dir (layers are staged one after the other).
type stagedDir struct {
	files map[string]triton.File
	json  map[string][]byte // kernel JSON candidates, by name
}

// budget is the free space Unpack may still use.
type budget struct {
	dir  string
	mu   sync.Mutex
	left int64 // guarded by mu
}

// ErrNoSpace says an image needs more room than dir's file system has free.
var ErrNoSpace = errors.New("image: not enough free space")

// take claims n bytes for what, or refuses.
func (b *budget) take(n int64, what string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if n > b.left {
		return fmt.Errorf("%w: %s needs %d bytes, %d of the free space of %s are left", ErrNoSpace, what, n, max(b.left, 0), b.dir)
	}
	b.left -= n
	return nil
}

// give returns n bytes no longer used.
func (b *budget) give(n int64) {
	b.mu.Lock()
	b.left += n
	b.mu.Unlock()
}

// freeSpace is what an unprivileged user may still write on dir's file
// system.
func freeSpace(dir string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, fmt.Errorf("free space of %s: %w", dir, err)
	}
	return int64(st.Bavail) * st.Bsize, nil
}

// layer stages every cache file of layer i. Later layers overwrite earlier
// ones, as in any image. The blob is downloaded into stage first and its
// digest checked (Resolver.Stream) before any of it is decompressed; an
// indexed layer (eStargz, plain tar) is then unpacked KEY dir by KEY dir on
// every core, each file verified against the TOC, and a plain gzip layer
// is walked as a stream. An eStargz TOC the manifest does not vouch for
// file by file (layer.Index.Verifiable) is first checked against the
// blob's tar, as the mount does: a TOC that disagrees fails the layer.
func (s *stager) layer(ctx context.Context, r Streamer, im *resolver.Image, i int) error {
	l := im.LayerRef(i)
	fail := func(err error) error { return fmt.Errorf("image: unpack layer %d: %w", i, err) }
	if err := s.room.take(l.Desc.Size, fmt.Sprintf("layer %d's blob", i)); err != nil {
		return fail(err)
	}
	defer s.room.give(l.Desc.Size)
	blob, size, err := download(ctx, r, l, s.stage)
	if err != nil {
		return fail(err)
	}
	defer func() {
		blob.Close()
		os.Remove(blob.Name())
	}()
	idx, err := layer.Open(blob, size, l.TOCDigest)
	if err == nil && idx.Format == layer.FormatEStargz && !idx.Verifiable(l.TOCDigest) {
		idx, err = idx.Check(io.NewSectionReader(blob, 0, size))
	}
	switch {
	case errors.Is(err, layer.ErrNotIndexable):
		err = s.walk(ctx, io.NewSectionReader(blob, 0, size))
	case err == nil:
		err = s.indexed(ctx, blob, idx)
	}
	if err != nil {
		return fail(err)
	}
	return nil
}

// download copies layer l's blob into a temp file in dir; the copy ends
// with the blob's size and digest checked.
func download(ctx context.Context, r Streamer, l resolver.LayerRef, dir string) (*os.File, int64, error) {
	rc, err := r.Stream(ctx, l)
	if err != nil {
		return nil, 0, err
	}
	defer rc.Close()
	f, err := os.CreateTemp(dir, ".blob-")
	if err != nil {
		return nil, 0, err
	}
	n, err := io.CopyBuffer(f, ctxReader{ctx, rc}, make([]byte, 1<<20))
	if err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, 0, err
	}
	return f, n, nil
}

// ctxReader stops a copy when ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// indexed stages every KEY dir of idx, read from blob and verified, on
// GOMAXPROCS workers, once the layer's cache files fit the free space. A
// KEY dir whose content is bad is left out (fail); any other error stops
// the layer.
func (s *stager) indexed(ctx context.Context, blob io.ReaderAt, idx *layer.Index) error {
	keys := make([]string, 0, len(idx.Dirs))
	var total int64
	for k, d := range idx.Dirs {
		keys = append(keys, k)
		for _, f := range d.Files {
			total += f.Size
		}
	}
	sort.Strings(keys)
	if err := s.room.take(total, fmt.Sprintf("the layer's %d KEY dirs", len(keys))); err != nil {
		return err
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	next := make(chan string)
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			for key := range next {
				err := s.dir(ctx, blob, idx.Dirs[key])
				switch {
				case err == nil:
				case keyLevel(err):
					s.fail(key, err)
				default:
					cancel(err)
				}
			}
		})
	}
feed:
	for _, k := range keys {
		select {
		case next <- k:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	return context.Cause(ctx)
}

// dir reads one KEY dir's span and stages its verified files, streaming
// each into its file.
func (s *stager) dir(ctx context.Context, blob io.ReaderAt, d *layer.Dir) error {
	src := blob
	if n := d.End - d.Offset; n <= maxSpanInMemory {
		span := make([]byte, n)
		if n > 0 {
			if _, err := blob.ReadAt(span, d.Offset); err != nil {
				return fmt.Errorf("read %s: %w", d.Key, err)
			}
		}
		src = spanAt{span, d.Offset}
	}
	sd, err := s.mkdir(d.Key)
	if err != nil {
		return err
	}
	for _, f := range d.ByOffset() {
		fr := d.Open(src, f)
		err := s.file(sd, d.Key, f, ctxReader{ctx, fr})
		fr.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// spanAt is a KEY dir's span in memory, at the blob's offsets.
type spanAt struct {
	b   []byte
	off int64
}

func (s spanAt) ReadAt(p []byte, off int64) (int, error) {
	if off < s.off || off-s.off > int64(len(s.b)) {
		return 0, fmt.Errorf("read at %d, outside the span at %d", off, s.off)
	}
	n := copy(p, s.b[off-s.off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// walk stages every cache file of a layer without an index (a plain
// gzip), as a stream, each file taking its size from the free space
// before it is written.
func (s *stager) walk(ctx context.Context, blob io.Reader) error {
	err := layer.Walk(blob, func(key string, f layer.File, content io.Reader) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := s.room.take(f.Size, key+"/"+f.Name); err != nil {
			return err
		}
		sd, err := s.mkdir(key)
		if err != nil {
			return err
		}
		err = s.file(sd, key, f, content)
		if keyLevel(err) {
			s.fail(key, err)
			return nil
		}
		return err
	})
	var ve *layer.VerifyError
	if errors.As(err, &ve) { // a file the stream's TOC disagrees with, found at its end
		s.fail(ve.Key, err)
		return nil
	}
	return err
}

// mkdir makes stage/KEY once and returns its record.
func (s *stager) mkdir(key string) (*stagedDir, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sd := s.dirs[key]; sd != nil {
		return sd, nil
	}
	if err := os.Mkdir(filepath.Join(s.stage, key), 0o755); err != nil {
		return nil, err
	}
	sd := &stagedDir{files: map[string]triton.File{}, json: map[string][]byte{}}
	s.dirs[key] = sd
	return sd, nil
}

// file writes one staged file from r, replacing what an earlier layer put
// there: mode 0755 when executable, else 0644; a group file with its child
// paths rewritten to the cache dir. Kernel JSON and group files are read
// into memory (at most maxMeta bytes); others stream through a buffer.
// Plain syscalls (no poller registration) and no fsync: a crash leaves the
// stage dir, never a half KEY dir in the cache. An error reading r comes
// back as it is (a *layer.VerifyError for bad content).
func (s *stager) file(sd *stagedDir, key string, f layer.File, r io.Reader) error {
	fail := func(err error) error { return fmt.Errorf("%s/%s: %w", key, f.Name, err) }
	perm := uint32(0o644)
	if f.Mode&0o111 != 0 {
		perm = 0o755
	}
	if old, ok := sd.files[f.Name]; ok { // replaced: its room is free again
		s.room.give(old.Size)
	}
	sd.files[f.Name] = triton.File{Name: f.Name, Size: f.Size, Mode: os.FileMode(perm)}
	delete(sd.json, f.Name)
	group := triton.IsGroupFile(f.Name)
	if group || strings.HasSuffix(f.Name, ".json") {
		if f.Size > maxMeta {
			return &metaError{fail(fmt.Errorf("%d bytes, more than the %d a kernel JSON or group file may have", f.Size, maxMeta))}
		}
		data, err := io.ReadAll(r)
		if err != nil {
			return fail(err)
		}
		if group {
			if data, err = triton.RewriteGroup(data, s.root); err != nil {
				return &metaError{fail(err)}
			}
		} else {
			sd.json[f.Name] = data
		}
		r = bytes.NewReader(data)
	}
	p := filepath.Join(s.stage, key, f.Name)
	var fd int
	err := retryEINTR(func() (err error) {
		fd, err = unix.Open(p, unix.O_WRONLY|unix.O_CREAT|unix.O_TRUNC|unix.O_CLOEXEC, perm)
		return err
	})
	if err != nil {
		return fail(&os.PathError{Op: "open", Path: p, Err: err})
	}
	err = writeAll(fd, r)
	if cerr := unix.Close(fd); err == nil {
		err = cerr
	}
	if err != nil {
		return fail(err)
	}
	return nil
}

// copyBufs are writeAll's buffers.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

// writeAll copies r to fd with plain write(2)s.
func writeAll(fd int, r io.Reader) error {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	for {
		n, rerr := r.Read(buf)
		data := buf[:n]
		for len(data) > 0 {
			var k int
			if err := retryEINTR(func() (err error) { k, err = unix.Write(fd, data); return err }); err != nil {
				return &os.PathError{Op: "write", Path: fmt.Sprintf("fd %d", fd), Err: err}
			}
			data = data[k:]
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

func retryEINTR(f func() error) error {
	for {
		if err := f(); !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

// install moves each fitting staged KEY dir into root, never over an
// existing one. Launcher and other non-kernel entries go with the kernels:
// they are installed when some kernel of the image fits. A KEY dir that
// failed while staged, whose kernel JSON is malformed, or whose install
// fails is left out and listed in res.Failed; the others go on.
func (s *stager) install(local []gpu.Target, res *Unpacked, log *slog.Logger) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var entries []triton.Entry
	var all []gpu.Target
	fitting := false
	for key, sd := range s.dirs {
		if s.failed[key] != nil {
			continue
		}
		files := make([]triton.File, 0, len(sd.files))
		for _, f := range sd.files {
			files = append(files, f)
		}
		e, err := triton.NewEntry(filepath.Join(s.stage, key), files, func(name string) ([]byte, error) { return sd.json[name], nil })
		if err != nil {
			s.failed[key] = err
			continue
		}
		entries = append(entries, e)
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Key < entries[j].Key })
	for _, e := range entries {
		all = append(all, e.Targets()...)
		fitting = fitting || gpu.AnyFits(e.Targets(), local)
	}
	if res.Targets == nil {
		res.Targets = gpu.Dedup(all)
	}
	for _, e := range entries {
		ok := fitting
		if e.Kind == triton.KindKernel {
			ok = gpu.AnyFits(e.Targets(), local)
		}
		if !ok {
			res.Unfit = append(res.Unfit, e.Key)
			continue
		}
		switch err := triton.MoveEntry(filepath.Join(s.stage, e.Key), s.root); {
		case err == nil:
			res.Installed = append(res.Installed, e.Key)
		case errors.Is(err, os.ErrExist):
			log.Debug("kept local entry", "key", e.Key)
			res.Kept = append(res.Kept, e.Key)
		default:
			s.failed[e.Key] = err
		}
	}
	for key, err := range s.failed {
		log.Warn("left out a KEY dir", "key", key, "err", err)
		res.Failed = append(res.Failed, Failure{Key: key, Err: err})
	}
	sort.Slice(res.Failed, func(i, j int) bool { return res.Failed[i].Key < res.Failed[j].Key })
	if len(res.Installed)+len(res.Kept) == 0 && len(res.Failed) == 0 {
		res.Reason = fmt.Sprintf("no kernel of the image (%s) fits the local GPU (%s)", gpu.FormatList(res.Targets), gpu.FormatList(local))
	}
}
