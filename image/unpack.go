package image

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"cargohold/gpu"
	"cargohold/kind"
	"cargohold/layer"
	"cargohold/resolver"
	"cargohold/triton"
)

// Unpacked says what Unpack did, unit by unit (a unit is a Triton KEY, or
// a dir path under the root for vLLM and Inductor).
type Unpacked struct {
	Kind      kind.Kind    // the image's cache kind
	Dir       string       // the cache root it was unpacked into
	Targets   []gpu.Target // the image's targets (labels, else kernel JSONs)
	Installed []string     // units written
	Kept      []string     // units already present locally, left alone
	Unfit     []string     // units whose targets fit no local GPU
	Failed    []Failure    // units left out: bad content, or their install failed
	Skipped   []string     // entries of the image its kind does not take, as named in the layer
	Reason    string       // why nothing was extracted, when nothing was
}

// Failure is one unit Unpack left out, and why.
type Failure struct {
	Key string // the unit
	Err error
}

// ErrSomeFailed says Unpack installed what it could but left some units
// out (Unpacked.Failed); the framework compiles those.
var ErrSomeFailed = errors.New("image: unpack: some units failed")

// maxMeta bounds a kernel JSON or a file the kind rewrites, read into
// memory to check it (or rewrite it); a larger one fails its unit.
const maxMeta = 64 << 20

// maxSpanInMemory: a unit's span up to this size is read into memory in
// one read; a larger one is read from the blob file as its files stream.
const maxSpanInMemory = 8 << 20

// Streamer opens a layer's whole blob, verified (*resolver.Resolver).
type Streamer interface {
	Stream(ctx context.Context, l resolver.LayerRef) (*resolver.Stream, error)
}

// Blobber opens a layer's blob for ranged reads (*resolver.Resolver): Unpack
// uses it, when it has one, to learn the kind of an image without labels
// before choosing its default dir.
type Blobber interface {
	Blob(ctx context.Context, l resolver.LayerRef) (resolver.Blob, error)
}

// Unpack extracts the units of im that fit the local targets into dir (""
// for the default root of the image's kind, kind.DefaultRoot), streaming
// its layers through r. The image's kind comes from its labels, else from
// its first layer that holds a cache; files of another kind are skipped
// (named in Unpacked.Skipped). Triton units fit by their kernel JSONs
// (launchers and the like go with a fitting image); other units by the
// image's targets. Group files are rewritten to where their KEY dir is
// installed, vLLM's vllm_compile_cache.py to dir (kind.RewriteOf). An image
// whose labels name no fitting target is not downloaded at all.
//
// What it writes is bounded by the free space of dir's file system, taken
// when it starts: each blob's download, and each layer's uncompressed cache
// files before any of them is written (a gzip layer's file by file, as its
// tar headers come); an image that needs more is refused with an error
// wrapping ErrNoSpace.
//
// A layer that cannot be trusted (its digest, unsafe entries, an eStargz TOC
// that disagrees with its tar) fails the whole image, and nothing is
// installed. A unit whose own content is bad (a file that fails its TOC
// digest, a malformed kernel JSON or group file) or whose install fails is
// left out, as the mount would miss it: the other units are installed, the
// bad ones listed in Unpacked.Failed, and the error wraps ErrSomeFailed.
func Unpack(ctx context.Context, r Streamer, im *resolver.Image, dir string, local []gpu.Target, log *slog.Logger) (*Unpacked, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	res := &Unpacked{}
	sum, lerr := kind.ParseLabels(im.Labels)
	res.Kind = sum.Kind
	labelled := lerr == nil
	if res.Kind == "" && dir == "" {
		res.Kind = peekKind(ctx, r, im)
	}
	if dir == "" {
		var err error
		if dir, err = res.Kind.DefaultRoot(); err != nil {
			return nil, fmt.Errorf("image: unpack: %w", err)
		}
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("image: unpack: %w", err)
	}
	res.Dir = abs
	switch {
	case labelled:
		res.Targets = sum.Targets
		if !gpu.AnyFits(sum.Targets, local) {
			res.Reason = fmt.Sprintf("no target of the image (%s) fits the local GPU (%s)", gpu.FormatList(sum.Targets), gpu.FormatList(local))
			return res, nil
		}
	case errors.Is(lerr, kind.ErrNoLabels):
		log.Info("image has no cache labels; learning targets from its kernel JSONs", "image", im.Ref)
	default:
		log.Warn("ignoring malformed cache labels; learning targets from its kernel JSONs", "image", im.Ref, "err", lerr)
	}
	if err := os.MkdirAll(abs, 0o755); err != nil {
		return nil, fmt.Errorf("image: unpack: %w", err)
	}
	// Staged inside dir so that installing a unit is a rename on one
	// filesystem; its name is taken by no kind, so no framework looks at
	// it.
	stage, err := os.MkdirTemp(abs, ".cargohold-unpack-")
	if err != nil {
		return nil, fmt.Errorf("image: unpack: %w", err)
	}
	defer os.RemoveAll(stage)
	free, err := freeSpace(abs)
	if err != nil {
		return nil, fmt.Errorf("image: unpack: %w", err)
	}
	st := &stager{stage: stage, root: abs, kind: res.Kind, units: map[string]*stagedUnit{}, failed: map[string]error{},
		room: &budget{left: free, dir: abs}}
	for i := range im.Layers {
		if err := st.layer(ctx, r, im, i); err != nil {
			return nil, err
		}
	}
	res.Kind = st.kind
	res.Skipped = st.skipped
	st.install(local, labelled, res, log)
	if n := len(res.Failed); n > 0 {
		return res, fmt.Errorf("%w: %d of %d units", ErrSomeFailed, n, n+len(res.Installed)+len(res.Kept)+len(res.Unfit))
	}
	return res, nil
}

// peekKind is the kind of the first layer of im that cargohold can index by
// range and that holds a cache; Triton when it cannot tell (an image
// without labels, in a gzip layer: what other tools build of Triton
// caches).
func peekKind(ctx context.Context, r Streamer, im *resolver.Image) kind.Kind {
	if b, ok := r.(Blobber); ok {
		for i := range im.Layers {
			l := im.LayerRef(i)
			blob, err := b.Blob(ctx, l)
			if err != nil {
				break
			}
			idx, err := layer.Open(blob, blob.Size(), l.TOCDigest)
			blob.Close()
			if err == nil && idx.Kind != "" {
				return idx.Kind
			}
		}
	}
	return kind.Triton
}

// stager writes the cache files of an image's layers into a dir of their
// own per unit under stage (stage/<n>/: units nest, vLLM's rank dir holds
// units of its own), Triton group files and vLLM's cache file already
// rewritten for root, the cache root they are installed into, and
// remembers what it wrote so that install need not read it back.
type stager struct {
	// immutable
	stage, root string
	room        *budget

	mu      sync.Mutex
	kind    kind.Kind              // guarded by mu: the image's kind, set by labels or the first cache file
	units   map[string]*stagedUnit // guarded by mu
	skipped []string               // guarded by mu
	failed  map[string]error       // guarded by mu: units left out, and why
}

// stagedUnit is what a unit holds so far. One goroutine at a time writes a
// unit (layers are staged one after the other).
type stagedUnit struct {
	dir   string // its stage dir
	files map[string]triton.File
	json  map[string][]byte // Triton units: kernel JSON candidates, by name
}

// fail leaves unit out, for why; the first cause is kept.
func (s *stager) fail(unit string, why error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failed[unit] == nil {
		s.failed[unit] = why
	}
}

// unitLevel reports whether err is a fault of one unit's content rather
// than of the layer, the disk or the caller: that unit is left out, the
// others go on.
func unitLevel(err error) bool {
	var ve *layer.VerifyError
	var me *metaError
	return errors.As(err, &ve) || errors.As(err, &me)
}

// metaError is a kernel JSON or a file to rewrite that cannot be used.
type metaError struct{ err error }

func (e *metaError) Error() string { return e.err.Error() }
func (e *metaError) Unwrap() error { return e.err }

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

// takes reports whether files of kind k belong to the image, recording
// what does not.
func (s *stager) takes(k kind.Kind, name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.kind == "" {
		s.kind = k
	}
	if k != s.kind {
		s.skipped = append(s.skipped, name)
		return false
	}
	return true
}

// layer stages every cache file of layer i. Later layers overwrite earlier
// ones, as in any image. The blob is downloaded into stage first and its
// digest checked (Resolver.Stream) before any of it is decompressed; an
// indexable layer (eStargz, plain tar) is then unpacked unit by unit on
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

// indexed stages every unit of idx, read from blob and verified, on
// GOMAXPROCS workers, once the layer's cache files fit the free space. A
// unit whose content is bad is left out (fail); any other error stops the
// layer.
func (s *stager) indexed(ctx context.Context, blob io.ReaderAt, idx *layer.Index) error {
	s.mu.Lock()
	s.skipped = append(s.skipped, idx.Skipped...)
	s.mu.Unlock()
	keys := make([]string, 0, len(idx.Dirs))
	var total int64
	for k, d := range idx.Dirs {
		keys = append(keys, k)
		for _, f := range d.Files {
			total += f.Size
		}
	}
	sort.Strings(keys)
	if len(keys) > 0 && !s.takes(idx.Kind, fmt.Sprintf("the %d %s units of a layer", len(keys), idx.Kind)) {
		return nil
	}
	if err := s.room.take(total, fmt.Sprintf("the layer's %d units", len(keys))); err != nil {
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
				case unitLevel(err):
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

// dir reads one unit's span and stages its verified files, streaming each
// into its file.
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
	su, err := s.mkdir(d.Key)
	if err != nil {
		return err
	}
	for _, f := range d.ByOffset() {
		fr := d.Open(src, f)
		err := s.file(su, d.Key, f, ctxReader{ctx, fr})
		fr.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// spanAt is a unit's span in memory, at the blob's offsets.
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
	err := layer.WalkSkipped(blob, func(k kind.Kind, unit string, f layer.File, content io.Reader) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if !s.takes(k, k.Prefix()+unit+"/"+f.Name) {
			return nil
		}
		if err := s.room.take(f.Size, unit+"/"+f.Name); err != nil {
			return err
		}
		su, err := s.mkdir(unit)
		if err != nil {
			return err
		}
		err = s.file(su, unit, f, content)
		if unitLevel(err) {
			s.fail(unit, err)
			return nil
		}
		return err
	}, func(name string) {
		s.mu.Lock()
		s.skipped = append(s.skipped, name)
		s.mu.Unlock()
	})
	var ve *layer.VerifyError
	if errors.As(err, &ve) { // a file the stream's TOC disagrees with, found at its end
		s.fail(ve.Key, err)
		return nil
	}
	return err
}

// mkdir makes a unit's stage dir once and returns its record.
func (s *stager) mkdir(unit string) (*stagedUnit, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if su := s.units[unit]; su != nil {
		return su, nil
	}
	d := filepath.Join(s.stage, strconv.Itoa(len(s.units)))
	if err := os.Mkdir(d, 0o755); err != nil {
		return nil, err
	}
	su := &stagedUnit{dir: d, files: map[string]triton.File{}, json: map[string][]byte{}}
	s.units[unit] = su
	return su, nil
}

// file writes one staged file from r, replacing what an earlier layer put
// there: mode 0755 when executable, else 0644; a file the kind rewrites
// (kind.RewriteOf) rewritten for the cache root. Kernel JSON and files to
// rewrite are read into memory (at most maxMeta bytes); others stream
// through a buffer. Plain syscalls (no poller registration) and no fsync:
// a crash leaves the stage dir, never a half unit in the cache. An error
// reading r comes back as it is (a *layer.VerifyError for bad content).
func (s *stager) file(su *stagedUnit, unit string, f layer.File, r io.Reader) error {
	fail := func(err error) error { return fmt.Errorf("%s/%s: %w", unit, f.Name, err) }
	perm := uint32(0o644)
	if f.Mode&0o111 != 0 {
		perm = 0o755
	}
	s.mu.Lock()
	k := s.kind
	s.mu.Unlock()
	if old, ok := su.files[f.Name]; ok { // replaced: its room is free again
		s.room.give(old.Size)
	}
	su.files[f.Name] = triton.File{Name: f.Name, Size: f.Size, Mode: os.FileMode(perm)}
	delete(su.json, f.Name)
	rw := kind.RewriteOf(k, unit, f.Name)
	isJSON := kind.IsTritonUnit(k, unit) && strings.HasSuffix(f.Name, ".json") && !triton.IsGroupFile(f.Name)
	if rw != kind.RewriteNone || isJSON {
		if f.Size > maxMeta {
			return &metaError{fail(fmt.Errorf("%d bytes, more than the %d a kernel JSON or a rewritten file may have", f.Size, maxMeta))}
		}
		data, err := io.ReadAll(r)
		if err != nil {
			return fail(err)
		}
		if isJSON {
			su.json[f.Name] = data
		}
		if rw != kind.RewriteNone {
			if data, err = rw.Apply(data, s.root, unit); err != nil {
				return &metaError{fail(err)}
			}
		}
		r = bytes.NewReader(data)
	}
	p := filepath.Join(su.dir, f.Name)
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

// install moves each fitting staged unit into root, parents first (the
// dirs above a unit are made as needed), never over an existing unit dir.
// Triton units with a kernel JSON fit by it; the other units go with an
// image that fits (by its labels, or, without labels, by some kernel that
// fits). A unit that failed while staged, whose kernel JSON is malformed,
// or whose install fails is left out and listed in res.Failed; the others
// go on.
func (s *stager) install(local []gpu.Target, labelled bool, res *Unpacked, log *slog.Logger) {
	s.mu.Lock()
	defer s.mu.Unlock()
	type staged struct {
		unit  string
		entry triton.Entry
	}
	var units []staged
	var all []gpu.Target
	kernelFits := false
	for unit, su := range s.units {
		if s.failed[unit] != nil {
			continue
		}
		u := staged{unit: unit}
		if kind.IsTritonUnit(s.kind, unit) {
			files := make([]triton.File, 0, len(su.files))
			for _, f := range su.files {
				files = append(files, f)
			}
			e, err := triton.NewEntry(filepath.Join(su.dir, path.Base(unit)), files, func(name string) ([]byte, error) { return su.json[name], nil })
			if err != nil {
				s.failed[unit] = err
				continue
			}
			u.entry = e
			all = append(all, e.Targets()...)
			kernelFits = kernelFits || gpu.AnyFits(e.Targets(), local)
		}
		units = append(units, u)
	}
	sort.Slice(units, func(i, j int) bool { return units[i].unit < units[j].unit })
	if res.Targets == nil {
		res.Targets = gpu.Dedup(all)
	}
	imageFits := (labelled && gpu.AnyFits(res.Targets, local)) || kernelFits
	for _, u := range units {
		ok := imageFits
		if u.entry.Kind == triton.KindKernel {
			ok = gpu.AnyFits(u.entry.Targets(), local)
		}
		if !ok {
			res.Unfit = append(res.Unfit, u.unit)
			continue
		}
		dst := filepath.Join(s.root, filepath.FromSlash(u.unit))
		err := os.MkdirAll(filepath.Dir(dst), 0o755)
		if err == nil {
			err = triton.RenameNoReplace(s.units[u.unit].dir, dst)
		}
		switch {
		case err == nil:
			res.Installed = append(res.Installed, u.unit)
		case errors.Is(err, os.ErrExist):
			log.Debug("kept local unit", "unit", u.unit)
			res.Kept = append(res.Kept, u.unit)
		default:
			s.failed[u.unit] = err
		}
	}
	for unit, err := range s.failed {
		log.Warn("left out a unit", "unit", unit, "err", err)
		res.Failed = append(res.Failed, Failure{Key: unit, Err: err})
	}
	sort.Slice(res.Failed, func(i, j int) bool { return res.Failed[i].Key < res.Failed[j].Key })
	if len(res.Installed)+len(res.Kept) == 0 && len(res.Failed) == 0 {
		switch {
		case len(units) == 0:
			res.Reason = fmt.Sprintf("the image holds no %s cache files", s.kind)
		case len(res.Targets) == 0:
			res.Reason = "the image names no targets (no labels, no kernel JSON) to check against the local GPU"
		default:
			res.Reason = fmt.Sprintf("no unit of the image (%s) fits the local GPU (%s)", gpu.FormatList(res.Targets), gpu.FormatList(local))
		}
	}
}
