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
	Skipped   []string     // entries of the image its kind does not take, as named in the layer
	Reason    string       // why nothing was extracted, when nothing was
}

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
	st := &stager{stage: stage, root: abs, kind: res.Kind, units: map[string]*stagedUnit{}}
	for i := range im.Layers {
		if err := st.layer(ctx, r, im, i); err != nil {
			return nil, err
		}
	}
	res.Kind = st.kind
	res.Skipped = st.skipped
	return res, st.install(local, labelled, res, log)
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

	mu      sync.Mutex
	kind    kind.Kind              // guarded by mu: the image's kind, set by labels or the first cache file
	units   map[string]*stagedUnit // guarded by mu
	skipped []string               // guarded by mu
}

// stagedUnit is what a unit holds so far. One goroutine at a time writes a
// unit (layers are staged one after the other).
type stagedUnit struct {
	dir   string // its stage dir
	files map[string]triton.File
	json  map[string][]byte // Triton units: kernel JSON candidates, by name
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
// is walked as a stream.
func (s *stager) layer(ctx context.Context, r Streamer, im *resolver.Image, i int) error {
	l := im.LayerRef(i)
	fail := func(err error) error { return fmt.Errorf("image: unpack layer %d: %w", i, err) }
	blob, size, err := download(ctx, r, l, s.stage)
	if err != nil {
		return fail(err)
	}
	defer func() {
		blob.Close()
		os.Remove(blob.Name())
	}()
	idx, err := layer.Open(blob, size, l.TOCDigest)
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
// GOMAXPROCS workers.
func (s *stager) indexed(ctx context.Context, blob io.ReaderAt, idx *layer.Index) error {
	s.mu.Lock()
	s.skipped = append(s.skipped, idx.Skipped...)
	s.mu.Unlock()
	keys := make([]string, 0, len(idx.Dirs))
	for k := range idx.Dirs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	if len(keys) > 0 && !s.takes(idx.Kind, fmt.Sprintf("the %d %s units of a layer", len(keys), idx.Kind)) {
		return nil
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	next := make(chan string)
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			for key := range next {
				if err := s.dir(blob, idx.Dirs[key]); err != nil {
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

// dir reads one unit's span and stages its verified files.
func (s *stager) dir(blob io.ReaderAt, d *layer.Dir) error {
	span := make([]byte, d.End-d.Offset)
	if len(span) > 0 {
		if _, err := blob.ReadAt(span, d.Offset); err != nil {
			return fmt.Errorf("read %s: %w", d.Key, err)
		}
	}
	files, err := d.Read(span)
	if err != nil {
		return err
	}
	su, err := s.mkdir(d.Key)
	if err != nil {
		return err
	}
	for _, c := range files {
		if err := s.file(su, d.Key, c.File, c.Data); err != nil {
			return err
		}
	}
	return nil
}

// walk stages every cache file of a layer without an index (a plain
// gzip), as a stream.
func (s *stager) walk(ctx context.Context, blob io.Reader) error {
	return layer.WalkSkipped(blob, func(k kind.Kind, unit string, f layer.File, content io.Reader) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if !s.takes(k, k.Prefix()+unit+"/"+f.Name) {
			return nil
		}
		su, err := s.mkdir(unit)
		if err != nil {
			return err
		}
		if f.Size > maxFileSize {
			return fmt.Errorf("%s/%s: %d bytes, more than the %d a cache file may have", unit, f.Name, f.Size, maxFileSize)
		}
		data := make([]byte, f.Size)
		if _, err := io.ReadFull(content, data); err != nil {
			return fmt.Errorf("%s/%s: %w", unit, f.Name, err)
		}
		return s.file(su, unit, f, data)
	}, func(name string) {
		s.mu.Lock()
		s.skipped = append(s.skipped, name)
		s.mu.Unlock()
	})
}

// maxFileSize bounds one file of a streamed layer, read whole into memory.
const maxFileSize = 1 << 30

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

// file writes one staged file, replacing what an earlier layer put there:
// mode 0755 when executable, else 0644; a file the kind rewrites
// (kind.RewriteOf) rewritten for the cache root. Plain syscalls (no poller
// registration) and no fsync: a crash leaves the stage dir, never a half
// unit in the cache.
func (s *stager) file(su *stagedUnit, unit string, f layer.File, data []byte) error {
	fail := func(err error) error { return fmt.Errorf("%s/%s: %w", unit, f.Name, err) }
	perm := uint32(0o644)
	if f.Mode&0o111 != 0 {
		perm = 0o755
	}
	s.mu.Lock()
	k := s.kind
	s.mu.Unlock()
	su.files[f.Name] = triton.File{Name: f.Name, Size: f.Size, Mode: os.FileMode(perm)}
	delete(su.json, f.Name)
	if kind.IsTritonUnit(k, unit) && strings.HasSuffix(f.Name, ".json") && !triton.IsGroupFile(f.Name) {
		su.json[f.Name] = bytes.Clone(data) // data may be a slice of a whole span
	}
	if rw := kind.RewriteOf(k, unit, f.Name); rw != kind.RewriteNone {
		var err error
		if data, err = rw.Apply(data, s.root, unit); err != nil {
			return fail(err)
		}
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
	for len(data) > 0 {
		var n int
		if err = retryEINTR(func() (err error) { n, err = unix.Write(fd, data); return err }); err != nil {
			break
		}
		data = data[n:]
	}
	if cerr := unix.Close(fd); err == nil {
		err = cerr
	}
	if err != nil {
		return fail(&os.PathError{Op: "write", Path: p, Err: err})
	}
	return nil
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
// fits).
func (s *stager) install(local []gpu.Target, labelled bool, res *Unpacked, log *slog.Logger) error {
	type staged struct {
		unit  string
		entry triton.Entry
	}
	var units []staged
	var all []gpu.Target
	kernelFits := false
	for unit, su := range s.units {
		u := staged{unit: unit}
		if kind.IsTritonUnit(s.kind, unit) {
			files := make([]triton.File, 0, len(su.files))
			for _, f := range su.files {
				files = append(files, f)
			}
			e, err := triton.NewEntry(filepath.Join(su.dir, path.Base(unit)), files, func(name string) ([]byte, error) { return su.json[name], nil })
			if err != nil {
				return fmt.Errorf("image: unpack: %w", err)
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
			return fmt.Errorf("image: unpack: install %s: %w", u.unit, err)
		}
	}
	if len(res.Installed)+len(res.Kept) == 0 {
		switch {
		case len(units) == 0:
			res.Reason = fmt.Sprintf("the image holds no %s cache files", s.kind)
		case len(res.Targets) == 0:
			res.Reason = "the image names no targets (no labels, no kernel JSON) to check against the local GPU"
		default:
			res.Reason = fmt.Sprintf("no unit of the image (%s) fits the local GPU (%s)", gpu.FormatList(res.Targets), gpu.FormatList(local))
		}
	}
	return nil
}
