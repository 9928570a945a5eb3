package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"cargohold/gpu"
	"cargohold/internal/cli"
	"cargohold/kind"
	"cargohold/layer"
	"cargohold/resolver"
)

// maxManifest bounds the manifest inspect reads (MCV's are a few KiB).
const maxManifest = 16 << 20

// inspect prints what an image holds and whether it will hit here: its
// kind, labels, units (from the layer indexes: a few ranged reads), targets
// and their fit, and for vLLM the hash dirs and the factors of their hash
// that depend on the host.
func inspect(ctx context.Context, o options, ropts resolver.Options, log *slog.Logger) error {
	r := resolver.New(ropts)
	im, err := r.Fetch(ctx, o.image)
	if err != nil {
		return fmt.Errorf("inspect: %w", err)
	}
	local, rep, err := localTargets(o)
	if err != nil {
		return fmt.Errorf("inspect: %w", err)
	}
	fmt.Printf("image:   %s\ndigest:  %s\n", im.Ref, im.Digest)
	var size int64
	for _, l := range im.Layers {
		size += l.Desc.Size
	}
	fmt.Printf("layers:  %d (%s compressed)\n", len(im.Layers), cli.Bytes(size))
	fmt.Println("labels:")
	for _, k := range slices.Sorted(maps.Keys(im.Labels)) {
		v := im.Labels[k]
		if len(v) > 200 {
			v = v[:200] + "..."
		}
		fmt.Printf("  %s = %s\n", k, v)
	}

	// What the layers hold, from their indexes.
	var (
		layerKind kind.Kind
		units     = map[string]bool{}
		triton    int
		packed    int64
		skipped   []string
		manifests [][]byte
		unindexed int
	)
	for i := range im.Layers {
		idx, mf, err := indexLayer(ctx, r, im.LayerRef(i))
		if errors.Is(err, layer.ErrNotIndexable) {
			unindexed++
			continue
		}
		if err != nil {
			return fmt.Errorf("inspect: layer %d: %w", i, err)
		}
		if layerKind == "" {
			layerKind = idx.Kind
		}
		skipped = append(skipped, idx.Skipped...)
		if mf != nil {
			manifests = append(manifests, mf)
		}
		for u, d := range idx.Dirs {
			if !units[u] && kind.IsTritonUnit(idx.Kind, u) {
				triton++
			}
			units[u] = true
			for _, f := range d.Files {
				packed += f.Size
			}
		}
	}

	sum, lerr := kind.ParseLabels(im.Labels)
	k := sum.Kind
	from := "labels"
	if k == "" {
		k, from = layerKind, "layer contents"
	}
	if k == "" {
		fmt.Println("kind:    unknown (no cache labels, and no layer that cargohold can index holds a cache)")
	} else {
		fmt.Printf("kind:    %s (from its %s; extract into $%s)\n", k, from, k.Env())
	}
	if layerKind != "" && k != "" && layerKind != k {
		fmt.Printf("         the labels say %s, the layer holds a %s cache: extract and the mount go by the layer\n", k, layerKind)
	}
	switch {
	case len(units) > 0:
		fmt.Printf("units:   %d dirs (%d Triton KEY dirs), %s of files\n", len(units), triton, cli.Bytes(packed))
	case unindexed > 0:
		fmt.Printf("units:   not listed: %d gzip layer(s) without an index (extract lists them)\n", unindexed)
	}
	if len(skipped) > 0 {
		fmt.Printf("not taken: %d entries (%s)\n", len(skipped), strings.Join(skipped[:min(len(skipped), 5)], ", "))
		log.Warn("entries the cache's kind does not take: extract and the mount leave them out", "count", len(skipped), "first", skipped[0])
	}
	if lerr != nil {
		fmt.Printf("targets: unknown (%v); extract reads them from the kernel JSONs\n", lerr)
		return nil
	}
	what := map[kind.Kind]string{kind.Triton: "kernels", kind.VLLM: "hash dirs under torch_compile_cache", kind.Inductor: "units"}[k]
	fmt.Printf("entry-count: %d (%s, as MCV counts them), %s packed\n", sum.EntryCount, what, cli.Bytes(sum.CacheSize))
	if sum.Format != "" {
		fmt.Printf("format:  %s\n", sum.Format)
	}
	fmt.Printf("local GPU: %s (%s)\n", gpu.FormatList(local), rep.Source)
	fmt.Println("targets:")
	for _, t := range sum.Targets {
		fmt.Printf("  %-16s %s\n", t, fitsWhere(t, local, rep.Devices))
	}
	if !gpu.AnyFits(sum.Targets, local) {
		fmt.Printf("will not hit: no target of the image (%s) fits the local GPU (%s)\n", gpu.FormatList(sum.Targets), gpu.FormatList(local))
	}
	if k == kind.VLLM {
		inspectVLLM(sum, manifests, unindexed > 0)
	}
	return nil
}

// indexLayer reads l's index with ranged reads, and its manifest when it
// has one.
func indexLayer(ctx context.Context, r *resolver.Resolver, l resolver.LayerRef) (*layer.Index, []byte, error) {
	b, err := r.Blob(ctx, l)
	if err != nil {
		return nil, nil, err
	}
	defer b.Close()
	idx, err := layer.Open(b, b.Size(), l.TOCDigest)
	if err != nil {
		return nil, nil, err
	}
	md := idx.ManifestDir()
	if md == nil || md.End-md.Offset > maxManifest {
		return idx, nil, nil
	}
	span := make([]byte, md.End-md.Offset)
	if _, err := b.ReadAt(span, md.Offset); err != nil {
		return idx, nil, fmt.Errorf("read the manifest: %w", err)
	}
	cs, err := md.Read(span)
	if err != nil {
		return idx, nil, err
	}
	return idx, cs[0].Data, nil
}

// inspectVLLM says which hash dirs the image holds and what, besides the
// model and vLLM's own code and config, decides whether vLLM here computes
// the same hash (research: vllm/compilation/backends.py hashes
// envs.compile_factors(), which holds VLLM_CONFIG_ROOT and
// VLLM_XLA_CACHE_PATH, home-derived paths; not VLLM_CACHE_ROOT).
func inspectVLLM(sum kind.Summary, manifests [][]byte, unindexed bool) {
	fmt.Printf("vLLM hash dirs: %s\n", strings.Join(sum.Hashes, ", "))
	fmt.Println("  vLLM uses a hash dir only where it computes the same hash: the same model, vLLM config and install, torch and env factors.")
	var binaries []kind.VLLMBinary
	for _, m := range manifests {
		binaries = append(binaries, kind.VLLMBinaries(m)...)
	}
	here := hostVLLMFactors()
	shown := false
	for _, b := range binaries {
		for _, name := range slices.Sorted(maps.Keys(here)) {
			v, ok := b.Env[name].(string)
			if !ok {
				continue
			}
			verdict := "same here"
			if v != here[name] {
				verdict = fmt.Sprintf("here %s: differs, so vLLM here computes another hash and compiles unless %s=%s is set", here[name], name, v)
			}
			fmt.Printf("  %s %s/%s: %s=%s (%s)\n", b.Hash, b.Rank, b.Prefix, name, v, verdict)
			shown = true
		}
	}
	if !shown {
		why := "the image's manifest lists no cache_key_factors"
		if unindexed {
			why = "its layer has no index to read the manifest by range"
		}
		fmt.Printf("  host-dependent factors (VLLM_CONFIG_ROOT, VLLM_XLA_CACHE_PATH) not shown: %s\n", why)
	}
}

// hostVLLMFactors are the values this host gives the home-derived factors
// of vLLM's hash (vllm/envs.py defaults).
func hostVLLMFactors() map[string]string {
	home, _ := os.UserHomeDir()
	cfg := os.Getenv("XDG_CONFIG_HOME")
	if cfg == "" {
		cfg = filepath.Join(home, ".config")
	}
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		cache = filepath.Join(home, ".cache")
	}
	out := map[string]string{
		"VLLM_CONFIG_ROOT":    filepath.Join(cfg, "vllm"),
		"VLLM_XLA_CACHE_PATH": filepath.Join(cache, "vllm", "xla_cache"),
	}
	for name := range out {
		if v := os.Getenv(name); v != "" {
			out[name] = v
		}
	}
	return out
}
