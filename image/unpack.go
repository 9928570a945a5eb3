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
	"cargohold/kind"
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
	Reason    string       // why nothing was extracted, when nothing was
}

// Streamer opens a layer's whole blob, verified (*resolver.Resolver).
type Streamer interface {
	Stream(ctx context.Context, l resolver.LayerRef) (*resolver.Stream, error)
}

// Unpack extracts the entries of im that fit the local targets into dir,
// streaming its layers through r. Group files are rewritten to dir. An
// image whose labels name no fitting target is not downloaded at all.
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
	st := &stager{stage: stage, root: abs, dirs: map[string]*stagedDir{}}
	for i := range im.Layers {
		if err := st.layer(ctx, r, im, i); err != nil {
			return nil, err
		}
	}
	return res, st.install(local, res, log)
}

// stager writes the cache files of an image's layers under stage/KEY/,
// group files already rewritten to root, the cache dir they are installed
// into, and remembers what it wrote so that install need not read it back.
type stager struct {
	// immutable
	stage, root string

	mu   sync.Mutex
	dirs map[string]*stagedDir // guarded by mu
}

// stagedDir is what a KEY dir holds so far. One goroutine at a time
// writes a KEY dir (layers are staged one after the other).
type stagedDir struct {
	files map[string]triton.File
	json  map[string][]byte // kernel JSON candidates, by name
}

// layer stages every cache file of layer i. Later layers overwrite earlier
// ones, as in any image. The blob is downloaded into stage first and its
// digest checked (Resolver.Stream) before any of it is decompressed; an
// indexable layer (eStargz, plain tar) is then unpacked KEY dir by KEY dir
// on every core, each file verified against the TOC, and a plain gzip layer
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

// indexed stages every KEY dir of idx, read from blob and verified, on
// GOMAXPROCS workers.
func (s *stager) indexed(ctx context.Context, blob io.ReaderAt, idx *layer.Index) error {
	keys := make([]string, 0, len(idx.Dirs))
	for k := range idx.Dirs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
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

// dir reads one KEY dir's span and stages its verified files.
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
	sd, err := s.mkdir(d.Key)
	if err != nil {
		return err
	}
	for _, c := range files {
		if err := s.file(sd, d.Key, c.File, c.Data); err != nil {
			return err
		}
	}
	return nil
}

// walk stages every cache file of a layer without an index (a plain
// gzip), as a stream.
func (s *stager) walk(ctx context.Context, blob io.Reader) error {
	return layer.Walk(blob, func(k kind.Kind, key string, f layer.File, content io.Reader) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if k != kind.Triton {
			return nil
		}
		sd, err := s.mkdir(key)
		if err != nil {
			return err
		}
		if f.Size > maxFileSize {
			return fmt.Errorf("%s/%s: %d bytes, more than the %d a cache file may have", key, f.Name, f.Size, maxFileSize)
		}
		data := make([]byte, f.Size)
		if _, err := io.ReadFull(content, data); err != nil {
			return fmt.Errorf("%s/%s: %w", key, f.Name, err)
		}
		return s.file(sd, key, f, data)
	})
}

// maxFileSize bounds one file of a streamed layer, read whole into memory.
const maxFileSize = 1 << 30

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

// file writes one staged file, replacing what an earlier layer put there:
// mode 0755 when executable, else 0644; a group file with its child paths
// rewritten to the cache dir. Plain syscalls (no poller registration) and
// no fsync: a crash leaves the stage dir, never a half KEY dir in the
// cache.
func (s *stager) file(sd *stagedDir, key string, f layer.File, data []byte) error {
	fail := func(err error) error { return fmt.Errorf("%s/%s: %w", key, f.Name, err) }
	perm := uint32(0o644)
	if f.Mode&0o111 != 0 {
		perm = 0o755
	}
	sd.files[f.Name] = triton.File{Name: f.Name, Size: f.Size, Mode: os.FileMode(perm)}
	delete(sd.json, f.Name)
	if strings.HasSuffix(f.Name, ".json") && !triton.IsGroupFile(f.Name) {
		sd.json[f.Name] = bytes.Clone(data) // data may be a slice of a whole span
	}
	if triton.IsGroupFile(f.Name) {
		var err error
		if data, err = triton.RewriteGroup(data, s.root); err != nil {
			return fail(err)
		}
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

// install moves each fitting staged KEY dir into root, never over an
// existing one. Launcher and other non-kernel entries go with the kernels:
// they are installed when some kernel of the image fits.
func (s *stager) install(local []gpu.Target, res *Unpacked, log *slog.Logger) error {
	var entries []triton.Entry
	var all []gpu.Target
	fitting := false
	for key, sd := range s.dirs {
		files := make([]triton.File, 0, len(sd.files))
		for _, f := range sd.files {
			files = append(files, f)
		}
		e, err := triton.NewEntry(filepath.Join(s.stage, key), files, func(name string) ([]byte, error) { return sd.json[name], nil })
		if err != nil {
			return fmt.Errorf("image: unpack: %w", err)
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
			return fmt.Errorf("image: unpack: install %s: %w", e.Key, err)
		}
	}
	if len(res.Installed)+len(res.Kept) == 0 {
		res.Reason = fmt.Sprintf("no kernel of the image (%s) fits the local GPU (%s)", gpu.FormatList(res.Targets), gpu.FormatList(local))
	}
	return nil
}
