package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"cargohold/gpu"
	"cargohold/image"
	"cargohold/internal/cli"
	"cargohold/resolver"
)

func run(ctx context.Context, o options) error {
	level, _ := cli.ParseLevel(o.logLevel)
	log := cli.NewLogger(cli.Stderr, level)
	ropts := resolver.Options{Store: o.store, PlainHTTP: o.plainHTTP, Timeout: o.timeout, Logger: log}
	switch o.mode {
	case "create":
		return create(ctx, o, ropts, log)
	case "extract":
		return extract(ctx, o, ropts, log)
	case "inspect":
		return inspect(ctx, o, ropts, log)
	case "gpu":
		return showGPU(o)
	case "fetch":
		return fetchKeys(ctx, o, ropts, log)
	}
	return fmt.Errorf("unknown mode %q", o.mode)
}

func create(ctx context.Context, o options, ropts resolver.Options, log *slog.Logger) error {
	start := time.Now()
	ref, err := resolver.ParseRef(o.image, ropts)
	if err != nil {
		return fmt.Errorf("create: %w", err)
	}
	// The title is the repository's last element, or the layout dir's name.
	title := filepath.Base(ref.Layout)
	if !ref.IsLayout() {
		title = path.Base(ref.Image.Context().RepositoryStr())
	}
	var order []string
	if o.order != "" {
		f, err := os.Open(o.order)
		if err != nil {
			return fmt.Errorf("create: --order: %w", err)
		}
		order, err = image.ReadOrder(f)
		f.Close()
		if err != nil {
			return fmt.Errorf("create: --order %s: %w", o.order, err)
		}
	}
	// The layer is built while it is uploaded or written: one pass.
	p, err := image.PrepareKind(ctx, o.dir, image.Options{Kind: o.cache, Title: title, Order: order,
		Targets: func() ([]gpu.Target, error) {
			ts, rep, err := localTargets(o)
			if err == nil && len(ts) > 0 {
				log.Info("GPU targets for units no kernel JSON describes", "targets", gpu.FormatList(ts), "source", rep.Source)
			}
			return ts, err
		}})
	if err != nil {
		return fmt.Errorf("create: %w", err)
	}
	defer p.Close()
	for _, s := range p.Tree.Skipped {
		log.Warn("not packed", "path", s.Path, "why", s.Reason)
	}
	if n := len(p.Unknown); n > 0 {
		log.Warn("the order names KEYs the cache dir does not hold; ignored", "count", n, "first", p.Unknown[0])
	}
	if len(order) > 0 {
		log.Info("KEY dirs in access order first", "order", o.order, "keys", len(order), "unknown", len(p.Unknown))
	}
	var d fmt.Stringer
	if o.push {
		bar := cli.NewProgress(cli.Stderr, "push")
		ropts.Progress = func(u v1.Update) { bar.Update(u.Complete, u.Total) }
		h, err := resolver.Push(ctx, o.image, p.Image, ropts)
		bar.Done()
		if err != nil {
			return fmt.Errorf("create: %w", err)
		}
		d = h
	} else {
		h, err := resolver.Save(ctx, o.image, p.Image, ropts)
		if err != nil {
			return fmt.Errorf("create: %w", err)
		}
		d = h
	}
	if built, err := p.Built(); err == nil {
		log.Info("packed", "kind", p.Tree.Kind, "units", len(p.Tree.Units), "kernels", len(p.Tree.Kernels()), "bytes", cli.Bytes(p.Tree.Size()),
			"targets", gpu.FormatList(p.Targets), "layer", cli.Bytes(built.Size), "uncompressed", cli.Bytes(built.UncompressedSize))
	}
	where := "registry"
	switch {
	case ref.IsLayout():
		where = ref.Layout
	case !o.push:
		where = storeDir(ropts)
	}
	log.Info("created", "image", o.image, "digest", d.String(), "in", where, "took", time.Since(start).Round(time.Millisecond))
	fmt.Printf("%s@%s\n", o.image, d)
	return nil
}

func localTargets(o options) ([]gpu.Target, gpu.Report, error) {
	rep, err := gpu.Detect(gpu.Options{Override: o.gpu})
	if err != nil {
		return nil, rep, err
	}
	return rep.Targets, rep, nil
}

func extract(ctx context.Context, o options, ropts resolver.Options, log *slog.Logger) error {
	start := time.Now()
	local, _, err := localTargets(o)
	if err != nil {
		return fmt.Errorf("extract: %w", err)
	}
	bar := cli.NewProgress(cli.Stderr, "pull")
	ropts.Progress = func(u v1.Update) { bar.Update(u.Complete, u.Total) }
	r := resolver.New(ropts)
	im, err := r.Fetch(ctx, o.image)
	if err != nil {
		return fmt.Errorf("extract: %w", err)
	}
	// With no -d, the image's kind decides the root: $TRITON_CACHE_DIR,
	// $VLLM_CACHE_ROOT, $TORCHINDUCTOR_CACHE_DIR or their defaults.
	res, err := image.Unpack(ctx, r, im, o.dir, local, log)
	bar.Done()
	if err != nil && !errors.Is(err, image.ErrSomeFailed) {
		return fmt.Errorf("extract: %w", err)
	}
	for _, s := range res.Skipped {
		log.Warn("not extracted: not part of a cache of the image's kind", "kind", res.Kind, "entry", s)
	}
	if res.Reason != "" {
		log.Warn("extracted nothing", "why", res.Reason)
	}
	log.Info("extracted", "image", o.image, "kind", res.Kind, "dir", res.Dir, "installed", len(res.Installed), "kept_local", len(res.Kept),
		"unfit", len(res.Unfit), "took", time.Since(start).Round(time.Millisecond))
	fmt.Printf("%s cache in %s: installed %d, kept %d local, %d not for this GPU (%s)\n", res.Kind, res.Dir,
		len(res.Installed), len(res.Kept), len(res.Unfit), gpu.FormatList(local))
	if len(res.Failed) > 0 {
		fmt.Printf("left out %d with bad content or a failed install (the framework compiles them):\n", len(res.Failed))
		for _, f := range res.Failed {
			fmt.Printf("  %s: %v\n", f.Key, f.Err)
		}
		return fmt.Errorf("extract: %w", err)
	}
	return nil
}

func showGPU(o options) error {
	_, rep, err := localTargets(o)
	if err != nil {
		return fmt.Errorf("gpu: %w", err)
	}
	fmt.Printf("source:  %s\n", rep.Source)
	for _, d := range rep.Devices {
		fmt.Printf("device %d: %s %s\n", d.Index, d.Name, d.Target)
	}
	if rep.NVIDIA != "" {
		fmt.Printf("nvidia:  %s\n", rep.NVIDIA)
	}
	if rep.AMD != "" {
		fmt.Printf("amd:     %s\n", rep.AMD)
	}
	fmt.Printf("targets: %s\n", gpu.FormatList(rep.Targets))
	return nil
}

func storeDir(o resolver.Options) string {
	if o.Store != "" {
		return o.Store
	}
	return resolver.DefaultStore()
}

// fitsWhere says which local GPUs a target fits: the devices by index when
// they were detected, else the override's targets.
func fitsWhere(t gpu.Target, local []gpu.Target, devs []gpu.Device) string {
	if !gpu.Fits(t, local) {
		return "does not fit"
	}
	var on []string
	for _, d := range devs {
		if d.Target == t {
			on = append(on, fmt.Sprintf("device %d (%s)", d.Index, d.Name))
		}
	}
	if len(on) == 0 {
		return "fits"
	}
	return "fits " + strings.Join(on, ", ")
}
