package resolver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"

	"cargohold/gpu"
	"cargohold/triton"
)

// maxKernelJSON bounds what Entry reads of a kernel metadata JSON (Triton
// writes a few KB).
const maxKernelJSON = 4 << 20

// Entry makes KEY dir key available for the mount: it waits (within ctx)
// until the index is ready, then tries key's locations in priority order:
// the dir is fetched and verified into the content store (Engine.FetchDir;
// a dir spread over several layers of the image is merged file by file,
// later layers winning, as unpacking the image would),
// and its kernel JSON, when it has one, must fit the local targets, whatever
// the image's labels said (the kernel JSON wins: a location whose kernel
// does not fit is skipped, counted in IndexStats.LabelLies or Misfits, and
// the next one is tried). It returns the files of the first location that
// passes.
//
// A KEY that is not indexed, or whose every location lacks it or does not
// fit, gives an error wrapping fs.ErrNotExist: no image has it. A failure to
// find out (index not ready, a fetch that failed, ctx ended) is not that:
// its error joins the causes and does not wrap fs.ErrNotExist, so that the
// mount can tell "the images cannot answer now" from "the images have no
// such KEY" (the mount answers ENOENT to a lookup either way, and Triton
// compiles).
func (ix *Index) Entry(ctx context.Context, key string) ([]KeyFile, error) {
	select {
	case <-ix.ready:
	case <-ctx.Done():
		ix.misses.Add(1)
		return nil, fmt.Errorf("resolver: KEY %s: index not ready: %w", key, ctx.Err())
	}
	s := ix.cur.Load()
	ls := s.keys[key]
	if len(ls) == 0 {
		ix.misses.Add(1)
		return nil, fmt.Errorf("resolver: KEY %s: %w in the index", key, fs.ErrNotExist)
	}
	var errs []error
	for i, l := range ls {
		if err := ctx.Err(); err != nil {
			errs = append(errs, err)
			break
		}
		if i > 0 {
			ix.fallbacks.Add(1)
		}
		loc := l.location()
		files, err := ix.eng.fetchMerged(ctx, loc.layers(), key)
		if err != nil {
			errs = append(errs, err)
			ix.log.Warn("KEY fetch failed, trying the next image", "key", key, "image", loc.Image, "err", err)
			continue
		}
		ok, err := ix.fits(loc, key, files)
		if err != nil {
			errs = append(errs, err)
			ix.log.Warn("KEY rejected, trying the next image", "key", key, "image", loc.Image, "err", err)
			continue
		}
		if !ok {
			continue
		}
		ix.hits.Add(1)
		return files, nil
	}
	ix.misses.Add(1)
	absent := true
	for _, err := range errs {
		absent = absent && errors.Is(err, fs.ErrNotExist)
	}
	if absent {
		errs = append([]error{fs.ErrNotExist}, errs...)
	}
	return nil, fmt.Errorf("resolver: KEY %s: no usable location of %d: %w", key, len(ls), errors.Join(errs...))
}

// fits checks the kernel JSON of a fetched KEY dir against the local
// targets. A dir without a kernel JSON (launcher, other) fits: its image
// was admitted by its labels or has none. Verdicts are remembered by the
// layer digests and KEY, and logged once.
func (ix *Index) fits(loc Location, key string, files []KeyFile) (bool, error) {
	var vk string
	for _, l := range loc.layers() {
		vk += l.Desc.Digest.String() + "/"
	}
	vk += key
	ix.verdictMu.Lock()
	v, seen := ix.verdicts[vk]
	ix.verdictMu.Unlock()
	if seen {
		return v, nil
	}
	k, found, err := ix.kernelOf(key, files)
	if err != nil {
		return false, err
	}
	ok := !found || gpu.Fits(k.Target, ix.cfg.Targets)
	if !ok {
		if loc.Kernel != nil {
			ix.labelLies.Add(1)
			ix.log.Warn("image label lies about a kernel's target; skipping it", "key", key, "image", loc.Image,
				"label", loc.Kernel.String(), "kernel", k.Target.String())
		} else {
			ix.misfits.Add(1)
			ix.log.Info("kernel does not fit the local targets; skipping it", "key", key, "image", loc.Image,
				"kernel", k.Target.String(), "local", gpu.FormatList(ix.cfg.Targets))
		}
	}
	ix.verdictMu.Lock()
	ix.verdicts[vk] = ok
	ix.verdictMu.Unlock()
	return ok, nil
}

// kernelOf finds the kernel metadata JSON among a KEY dir's files and reads
// it from the content store. found is false for a dir without one. A kernel
// JSON whose hash does not name this KEY is an error: Triton would never
// find it there.
func (ix *Index) kernelOf(key string, files []KeyFile) (triton.Kernel, bool, error) {
	for _, f := range files {
		if f.Group || !strings.HasSuffix(f.Name, ".json") || f.Size > maxKernelJSON {
			continue
		}
		sf, err := ix.eng.st.Open(f.Digest)
		if err != nil {
			return triton.Kernel{}, false, fmt.Errorf("resolver: KEY %s: read %s: %w", key, f.Name, err)
		}
		data, err := io.ReadAll(io.LimitReader(sf, maxKernelJSON))
		sf.Close()
		if err != nil {
			return triton.Kernel{}, false, fmt.Errorf("resolver: KEY %s: read %s: %w", key, f.Name, err)
		}
		k, ok, err := triton.ParseKernel(data)
		if err != nil || !ok {
			// Not kernel metadata (autotuner results and the like), or
			// JSON that does not parse: not what decides the fit.
			continue
		}
		if k.Key() != key {
			return triton.Kernel{}, false, fmt.Errorf("resolver: KEY %s: %s has the hash of KEY %s", key, f.Name, k.Key())
		}
		return k, true, nil
	}
	return triton.Kernel{}, false, nil
}

// layers are the layers holding loc's KEY dir, in layer order.
func (loc Location) layers() []LayerRef {
	if len(loc.Layers) > 0 {
		return loc.Layers
	}
	return []LayerRef{loc.Layer}
}
