package catalog

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"slices"
	"strings"
	"time"

	"cargohold/fetch"
	"cargohold/gpu"
	"cargohold/kind"
	"cargohold/resolver"
	"cargohold/store"
	"cargohold/triton"
)

// maxKernelJSON bounds what Entry reads of a kernel metadata JSON (Triton
// writes a few KB).
const maxKernelJSON = 4 << 20

// Entry makes KEY dir key available for the mount: it waits (within ctx)
// until the catalog is ready, then tries key's locations in priority order:
// the dir is fetched and verified into the content store (fetch.Engine.Key:
// a dir spread over several layers of the image is merged file by file,
// later layers winning, as unpacking the image would),
// and its kernel JSON, when it has one, must fit the local targets, whatever
// the image's labels said (the kernel JSON wins: a location whose kernel
// does not fit is skipped, counted in IndexStats.LabelLies or Misfits, and
// the next one is tried). It returns the files of the first location that
// passes; with Config.Prefetch, that location's layer is then prefetched. A location that fails is logged at debug level and counted
// (Stats.EntryFallbacks when a next one is tried); the caller records the
// failure that ends the call.
//
// A KEY that is not indexed, or whose every location lacks it or does not
// fit, gives an error wrapping fs.ErrNotExist: no image has it. A failure to
// find out (catalog not ready, a fetch that failed, ctx ended) is not that:
// its error joins the causes and does not wrap fs.ErrNotExist, so that the
// mount can tell "the images cannot answer now" from "the images have no
// such KEY" (the mount answers ENOENT to a lookup either way, and Triton
// compiles).
func (cat *Catalog) Entry(ctx context.Context, key string) ([]fetch.KeyFile, error) {
	select {
	case <-cat.ready:
	case <-ctx.Done():
		cat.misses.Add(1)
		return nil, fmt.Errorf("catalog: KEY %s: catalog not ready: %w", key, ctx.Err())
	}
	s := cat.cur.Load()
	ls := s.keys[key]
	if len(ls) == 0 {
		cat.misses.Add(1)
		return nil, fmt.Errorf("catalog: KEY %s: %w in the catalog", key, fs.ErrNotExist)
	}
	var errs []error
	for i, l := range ls {
		if err := ctx.Err(); err != nil {
			errs = append(errs, err)
			break
		}
		if i > 0 {
			cat.fallbacks.Add(1)
		}
		loc := l.location()
		files, err := cat.eng.Key(ctx, loc.layers(), key)
		if err != nil {
			errs = append(errs, err)
			cat.log.Debug("KEY fetch failed; next image, if any", "key", key, "image", loc.Image, "err", err)
			continue
		}
		files = cat.marked(key, files)
		ok, err := cat.fits(loc, key, files)
		if err != nil {
			errs = append(errs, err)
			cat.log.Debug("KEY rejected; next image, if any", "key", key, "image", loc.Image, "err", err)
			continue
		}
		if !ok {
			continue
		}
		cat.hits.Add(1)
		if cat.cfg.Prefetch {
			cat.prefetchAfter(s, l)
		}
		return files, nil
	}
	cat.misses.Add(1)
	absent := true
	for _, err := range errs {
		absent = absent && errors.Is(err, fs.ErrNotExist)
	}
	if absent {
		errs = append([]error{fs.ErrNotExist}, errs...)
	}
	return nil, fmt.Errorf("catalog: KEY %s: no usable location of %d: %w", key, len(ls), errors.Join(errs...))
}

// marked returns files with Rewrite set to what the catalog's kind changes
// in them where they are served (kind.RewriteOf): RewriteGroup only for a
// group file of a Triton unit, not a file of that name elsewhere.
func (cat *Catalog) marked(unit string, files []fetch.KeyFile) []fetch.KeyFile {
	out := slices.Clone(files)
	for i := range out {
		out[i].Rewrite = kind.RewriteOf(cat.cfg.Kind, unit, out[i].Name)
	}
	return out
}

// fits checks the kernel JSON of a fetched Triton unit against the local
// targets. A dir without a kernel JSON (launcher, other) fits: its image
// was admitted by its labels or has none; so does every unit other than
// Triton's, whose image was admitted by its targets. Verdicts are
// remembered by the layer digests and KEY, and logged once.
func (cat *Catalog) fits(loc Location, key string, files []fetch.KeyFile) (bool, error) {
	if !kind.IsTritonUnit(cat.cfg.Kind, key) {
		return true, nil
	}
	var vk string
	for _, l := range loc.layers() {
		vk += l.Desc.Digest.String() + "/"
	}
	vk += key
	cat.verdictMu.Lock()
	v, seen := cat.verdicts[vk]
	cat.verdictMu.Unlock()
	if seen {
		return v, nil
	}
	k, found, err := cat.kernelOf(key, files)
	if err != nil {
		return false, err
	}
	ok := !found || gpu.Fits(k.Target, cat.cfg.Targets)
	if !ok {
		if loc.Kernel != nil {
			cat.labelLies.Add(1)
			cat.log.Warn("image label lies about a kernel's target; skipping it", "key", key, "image", loc.Image,
				"label", loc.Kernel.String(), "kernel", k.Target.String())
		} else {
			cat.misfits.Add(1)
			cat.log.Info("kernel does not fit the local targets; skipping it", "key", key, "image", loc.Image,
				"kernel", k.Target.String(), "local", gpu.FormatList(cat.cfg.Targets))
		}
	}
	cat.verdictMu.Lock()
	cat.verdicts[vk] = ok
	cat.verdictMu.Unlock()
	return ok, nil
}

// kernelOf finds the kernel metadata JSON among a KEY dir's files and reads
// it from the content store. found is false for a dir without one. A kernel
// JSON whose hash does not name this KEY is an error: Triton would never
// find it there.
func (cat *Catalog) kernelOf(key string, files []fetch.KeyFile) (triton.Kernel, bool, error) {
	for _, f := range files {
		if triton.IsGroupFile(f.Name) || !strings.HasSuffix(f.Name, ".json") || f.Size > maxKernelJSON {
			continue
		}
		sf, err := cat.eng.Open(f)
		if err != nil {
			return triton.Kernel{}, false, fmt.Errorf("catalog: KEY %s: read %s: %w", key, f.Name, err)
		}
		data, err := io.ReadAll(io.LimitReader(sf, maxKernelJSON))
		sf.Close()
		if err != nil {
			return triton.Kernel{}, false, fmt.Errorf("catalog: KEY %s: read %s: %w", key, f.Name, err)
		}
		k, ok, err := triton.ParseKernel(data)
		if err != nil || !ok {
			// Not kernel metadata (autotuner results and the like), or
			// JSON that does not parse: not what decides the fit.
			continue
		}
		if !k.In(path.Base(key)) {
			return triton.Kernel{}, false, fmt.Errorf("catalog: KEY %s: %s has the hash of KEY %s", key, f.Name, k.Key())
		}
		return k, true, nil
	}
	return triton.Kernel{}, false, nil
}

// layers are the layers holding loc's KEY dir, in layer order.
func (loc Location) layers() []resolver.LayerRef {
	if len(loc.Layers) > 0 {
		return loc.Layers
	}
	return []resolver.LayerRef{loc.Layer}
}

// Open opens the stored content of f, a file Entry returned for key. Nothing
// pins content between Entry and Open, so content evicted meanwhile is
// fetched again (Entry) under ctx; timeout bounds that fetch where ctx has
// no deadline of its own (0: none). An error matching fs.ErrNotExist means
// the content could not be had again.
func (cat *Catalog) Open(ctx context.Context, key string, f fetch.KeyFile, timeout time.Duration) (*store.File, error) {
	c, err := cat.eng.Open(f)
	if !errors.Is(err, fs.ErrNotExist) {
		return c, err
	}
	if _, ok := ctx.Deadline(); !ok && timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	if _, err := cat.Entry(ctx, key); err != nil {
		return nil, fmt.Errorf("catalog: open %s/%s: evicted, and fetching it again failed: %w", key, f.Name, err)
	}
	return cat.eng.Open(f)
}
