package catalog

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"cargohold/fetch"
	"cargohold/gpu"
	"cargohold/kind"
	"cargohold/resolver"
	"cargohold/triton"
)

// imageResult is one listed image, resolved or not.
type imageResult struct {
	ref string
	rec *imageRec
	err error
}

// build is one image record being built, shared by the tags that name it.
type build struct {
	done chan struct{}
	rec  *imageRec
	err  error
}

// builder is one refresh's work.
type builder struct {
	cat *Catalog

	mu       sync.Mutex
	memo     map[string]*imageRec // guarded by mu: known records by memo key
	inflight map[string]*build    // guarded by mu

	built atomic.Int64 // records read from their images
}

// run expands every source and resolves its images on a bounded pool.
// results[i] are source i's images in listing order; srcErrs[i] is set
// when source i could not be listed.
func (b *builder) run(ctx context.Context) ([][]imageResult, []error) {
	n := len(b.cat.sources)
	results := make([][]imageResult, n)
	srcErrs := make([]error, n)
	sem := make(chan struct{}, indexWorkers)
	var wg sync.WaitGroup
	for i, src := range b.cat.sources {
		wg.Go(func() {
			items, err := b.cat.expand(ctx, src)
			if err != nil {
				srcErrs[i] = err
				return
			}
			results[i] = make([]imageResult, len(items))
			var iwg sync.WaitGroup
			for j, it := range items {
				results[i][j].ref = it.ref
				iwg.Go(func() {
					select {
					case sem <- struct{}{}:
					case <-ctx.Done():
						results[i][j].err = ctx.Err()
						return
					}
					defer func() { <-sem }()
					results[i][j].rec, results[i][j].err = b.resolve(ctx, it)
				})
			}
			iwg.Wait()
		})
	}
	wg.Wait()
	return results, srcErrs
}

// resolve turns a listed item into its record: from the memo when its
// manifest digest is known, else built once however many tags name it.
func (b *builder) resolve(ctx context.Context, it item) (*imageRec, error) {
	c, err := it.identify(ctx)
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	if rec, ok := b.memo[c.Memo]; ok {
		b.mu.Unlock()
		return rec, nil
	}
	bl, ok := b.inflight[c.Memo]
	if !ok {
		bl = &build{done: make(chan struct{})}
		b.inflight[c.Memo] = bl
	}
	b.mu.Unlock()
	if ok {
		select {
		case <-bl.done:
			return bl.rec, bl.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	bl.rec, bl.err = b.cat.buildRec(ctx, c)
	if bl.err == nil {
		b.built.Add(1)
		b.mu.Lock()
		b.memo[c.Memo] = bl.rec
		b.mu.Unlock()
	}
	close(bl.done)
	return bl.rec, bl.err
}

// buildRec reads a new image: config labels decide the fit; for a fitting
// image its layers' KEY lists (fetch.Engine.Keys) give its KEYs.
func (cat *Catalog) buildRec(ctx context.Context, c resolver.Pending) (*imageRec, error) {
	im, err := c.Open(ctx)
	if err != nil {
		return nil, err
	}
	rec := &imageRec{Memo: c.Memo, Created: im.Config.Created.Time, Image: im.Name()}
	for i := range im.Layers {
		rec.Layers = append(rec.Layers, im.LayerRef(i))
	}
	if len(rec.Layers) > 1<<16-1 {
		return nil, fmt.Errorf("catalog: image %s: %d layers", c.Ref, len(rec.Layers))
	}

	kernelOf := map[string]gpu.Target{}
	sum, lerr := kind.ParseLabels(im.Labels)
	rec.Kind = sum.Kind
	switch {
	case errors.Is(lerr, kind.ErrNoLabels):
		rec.Unlabelled = true
		cat.log.Debug("image without labels: indexing every KEY, fit checked on fetch", "image", c.Ref)
	case rec.Kind != cat.cfg.Kind:
		rec.Why = fmt.Sprintf("a %s cache; this catalog serves %s caches", rec.Kind, cat.cfg.Kind)
		cat.log.Debug("image of another cache kind", "image", c.Ref, "kind", rec.Kind)
		return rec, nil
	case lerr != nil:
		rec.LabelError = lerr.Error()
	default:
		rec.Targets = sum.Targets
		if !gpu.AnyFits(sum.Targets, cat.cfg.Targets) {
			rec.Why = fmt.Sprintf("no target of the image (%s) fits the local GPU (%s)", gpu.FormatList(sum.Targets), gpu.FormatList(cat.cfg.Targets))
			cat.log.Debug("image fits no local target", "image", c.Ref, "targets", gpu.FormatList(sum.Targets))
			return rec, nil
		}
		for _, k := range sum.Kernels {
			key, err := triton.KeyOf(k.Hash)
			if err != nil {
				rec.LabelError = fmt.Sprintf("triton: label %s: %v", triton.LabelMetadata, err)
				clear(kernelOf)
				break
			}
			kernelOf[key] = k.Target
			kernelOf[k.Hash] = k.Target // the KEY of Triton 3.1 and older
		}
	}
	if rec.LabelError != "" {
		cat.log.Warn("image labels malformed: indexing every KEY, fit checked on fetch", "image", c.Ref, "err", rec.LabelError)
	}
	// Without usable labels, units other than Triton's (whose kernel JSON
	// decides at Entry) have no targets to fit: they are left out.
	tritonOnly := (rec.Unlabelled || rec.LabelError != "") && cat.cfg.Kind != kind.Triton

	// Every layer holding a KEY dir, in layer order: Entry merges them file
	// by file, later layers winning, as unpacking does. A layer of another
	// kind is left out.
	lists, err := cat.layerUnits(ctx, c.Ref, rec.Layers)
	if err != nil {
		return nil, err
	}
	held := map[string][]uint16{}
	for i, u := range lists {
		keys, lk := u.Keys, u.Kind
		if n := len(u.Skipped); n > 0 {
			cat.log.Warn("layer entries outside the cache its kind takes: the mount leaves them out",
				"image", c.Ref, "layer", i, "count", n, "first", u.Skipped[:min(n, 3)])
		}
		if lk == "" {
			continue
		}
		if rec.Kind == "" {
			rec.Kind = lk
		}
		if lk != cat.cfg.Kind {
			cat.log.Debug("layer of another cache kind", "image", c.Ref, "layer", i, "kind", lk)
			continue
		}
		for _, key := range keys {
			if tritonOnly && !kind.IsTritonUnit(lk, key) {
				continue
			}
			held[key] = append(held[key], uint16(i))
		}
	}
	switch {
	case rec.Kind != "" && rec.Kind != cat.cfg.Kind:
		rec.Why = fmt.Sprintf("a %s cache; this catalog serves %s caches", rec.Kind, cat.cfg.Kind)
		return rec, nil
	case tritonOnly:
		rec.Why = "no usable labels: only its Triton units (fit by their kernel JSON) are served"
	}
	rec.Fits = true

	kernelIdx := map[gpu.Target]uint16{}
	earlierIdx := map[string]uint16{} // an Earlier set, as a string of its indexes, -> 1 + its index
	rec.Keys = make([]keyRec, 0, len(held))
	for key, ls := range held {
		kr := keyRec{Key: key, Layer: ls[len(ls)-1]}
		if t, ok := kernelOf[key]; ok {
			if !gpu.Fits(t, cat.cfg.Targets) {
				continue
			}
			n, ok := kernelIdx[t]
			if !ok {
				rec.Kernels = append(rec.Kernels, t)
				n = uint16(len(rec.Kernels))
				kernelIdx[t] = n
			}
			kr.Kernel = n
		}
		if earlier := ls[:len(ls)-1]; len(earlier) > 0 {
			sk := fmt.Sprint(earlier)
			n, ok := earlierIdx[sk]
			if !ok {
				if len(rec.Earlier) == 1<<16-1 {
					return nil, fmt.Errorf("catalog: image %s: over %d distinct sets of layers sharing KEY dirs", c.Ref, 1<<16-1)
				}
				rec.Earlier = append(rec.Earlier, slices.Clone(earlier))
				n = uint16(len(rec.Earlier))
				earlierIdx[sk] = n
			}
			kr.Earlier = n
		}
		rec.Keys = append(rec.Keys, kr)
	}
	slices.SortFunc(rec.Keys, func(a, b keyRec) int { return cmp.Compare(a.Key, b.Key) })
	rec.Keys = slices.Clip(rec.Keys)
	return rec, nil
}

// layerWorkers bounds the layers of one image listed at once; the engine
// bounds the index loads behind them (over every image) itself.
const layerWorkers = 8

// layerUnits lists the kind and units of each layer (fetch.Engine.Units), layerWorkers
// layers at once: an image of hundreds of layers costs a few round trips
// of its registry, not hundreds one after the other. A failing layer fails
// the whole (its own error, not that of a layer canceled because of it).
func (cat *Catalog) layerUnits(ctx context.Context, ref string, layers []resolver.LayerRef) ([]fetch.Units, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	lists := make([]fetch.Units, len(layers))
	errs := make([]error, len(layers))
	sem := make(chan struct{}, layerWorkers)
	var wg sync.WaitGroup
	for i, l := range layers {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			errs[i] = ctx.Err()
		}
		if errs[i] != nil {
			break
		}
		wg.Go(func() {
			defer func() { <-sem }()
			if lists[i], errs[i] = cat.eng.Units(ctx, l); errs[i] != nil {
				cancel() // the image fails anyway: the other layers need not load
			}
		})
	}
	wg.Wait()
	var first error
	for i, err := range errs {
		if err == nil {
			continue
		}
		err = fmt.Errorf("catalog: image %s: layer %d: %w", ref, i, err)
		if !errors.Is(err, context.Canceled) {
			return nil, err
		}
		if first == nil {
			first = err
		}
	}
	return lists, first
}
