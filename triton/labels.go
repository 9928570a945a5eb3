package triton

import (
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"cargohold/gpu"
)

// Image config labels, the original tool's and its successor's.
const (
	LabelMetadata   = "cache.triton.image/metadata"
	LabelEntryCount = "cache.triton.image/entry-count"
	LabelVariant    = "cache.triton.image/variant"
	LabelSummary    = "cache.triton.image/summary"
	LabelCacheSize  = "cache.triton.image/cache-size-bytes"
	LabelTitle      = "org.opencontainers.image.title"
)

// Summary is what an image's labels say about its cache.
type Summary struct {
	Kernels    []Kernel     // from LabelMetadata
	Targets    []gpu.Target // from LabelSummary, or derived from Kernels
	EntryCount int          // kernels, as MCV counts them (older cargohold images: KEY dirs)
	CacheSize  int64
	Title      string
}

type labelKernel struct {
	Hash          string `json:"hash"`
	Backend       string `json:"backend"`
	Arch          any    `json:"arch"`
	WarpSize      int    `json:"warp_size"`
	PTXVersion    *int   `json:"ptx_version,omitempty"`
	NumWarps      int    `json:"num_warps,omitempty"`
	NumStages     int    `json:"num_stages,omitempty"`
	Debug         bool   `json:"debug"`
	Name          string `json:"name,omitempty"`
	TritonVersion string `json:"triton_version,omitempty"`
}

type labelSummary struct {
	Targets []labelTarget `json:"targets"`
}

type labelTarget struct {
	Backend  string `json:"backend"`
	Arch     any    `json:"arch"`
	WarpSize int    `json:"warp_size"`
}

// Labels gives the image config labels for a cache's entries:
// cache-size-bytes is the bytes of the files as packed (stored unmodified),
// entry-count the kernels (JSONs with a hash), as MCV's spec has them.
func Labels(entries []Entry, title string) (map[string]string, error) {
	kernels := []labelKernel{}
	var targets []gpu.Target
	var size int64
	for _, e := range entries {
		for _, f := range e.Files {
			size += f.Size
		}
		for _, k := range e.Kernels {
			kernels = append(kernels, labelKernel{Hash: k.Hash, Backend: k.Target.Backend, Arch: k.Target.Arch,
				WarpSize: k.Target.WarpSize, PTXVersion: k.PTXVersion, NumWarps: k.NumWarps, NumStages: k.NumStages,
				Debug: k.Debug, Name: k.Name, TritonVersion: k.TritonVersion})
			targets = append(targets, k.Target)
		}
	}
	sort.Slice(kernels, func(i, j int) bool { return kernels[i].Hash < kernels[j].Hash })
	meta, err := json.Marshal(kernels)
	if err != nil {
		return nil, fmt.Errorf("triton: labels: %w", err)
	}
	return map[string]string{
		LabelMetadata:   string(meta),
		LabelEntryCount: strconv.Itoa(len(kernels)),
		LabelVariant:    "multi",
		LabelSummary:    SummaryLabel(targets, false),
		LabelCacheSize:  strconv.FormatInt(size, 10),
		LabelTitle:      title,
	}, nil
}

// ErrNoLabels says an image carries none of cargohold's labels: its targets
// must be learnt from the kernel JSONs in its layers.
var ErrNoLabels = fmt.Errorf("image has no %s or %s label", LabelSummary, LabelMetadata)

// ParseLabels reads the labels of an image config. Either the summary or the
// metadata label is enough for the targets; a label that is present but
// malformed is an error (the caller then falls back to the kernel JSONs).
func ParseLabels(labels map[string]string) (Summary, error) {
	var s Summary
	s.Title = labels[LabelTitle]
	sj, hasSum := labels[LabelSummary]
	mj, hasMeta := labels[LabelMetadata]
	if !hasSum && !hasMeta {
		return s, ErrNoLabels
	}
	if hasMeta {
		var ks []labelKernel
		if err := json.Unmarshal([]byte(mj), &ks); err != nil {
			return s, fmt.Errorf("triton: label %s: %w", LabelMetadata, err)
		}
		for _, k := range ks {
			t, err := LabelTarget(k.Backend, k.Arch, k.WarpSize)
			if err != nil {
				return s, fmt.Errorf("triton: label %s: kernel %s: %w", LabelMetadata, k.Hash, err)
			}
			s.Kernels = append(s.Kernels, Kernel{Hash: k.Hash, Name: k.Name, Target: t, PTXVersion: k.PTXVersion,
				NumWarps: k.NumWarps, NumStages: k.NumStages, Debug: k.Debug, TritonVersion: k.TritonVersion})
			s.Targets = append(s.Targets, t)
		}
	}
	if hasSum {
		ts, err := SummaryTargets(sj)
		if err != nil {
			return s, fmt.Errorf("triton: label %s: %w", LabelSummary, err)
		}
		s.Targets = ts
	}
	s.Targets = gpu.Dedup(s.Targets)
	if v, ok := labels[LabelEntryCount]; ok {
		n, err := strconv.Atoi(v)
		if err != nil {
			return s, fmt.Errorf("triton: label %s: %w", LabelEntryCount, err)
		}
		s.EntryCount = n
	}
	if v, ok := labels[LabelCacheSize]; ok {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return s, fmt.Errorf("triton: label %s: %w", LabelCacheSize, err)
		}
		s.CacheSize = n
	}
	return s, nil
}

// SummaryLabel is a summary label's value, {"targets":[{backend, arch,
// warp_size}]} (the form every kind's summary label takes), CUDA arch as
// "sm_75" when sm is set (MCV's vLLM images; its preflight strips the
// "sm_"), as "75" otherwise.
func SummaryLabel(ts []gpu.Target, sm bool) string {
	sum := labelSummary{Targets: []labelTarget{}}
	for _, t := range gpu.Dedup(ts) {
		a := t.Arch
		if sm && t.Backend == "cuda" {
			a = "sm_" + a
		}
		sum.Targets = append(sum.Targets, labelTarget{t.Backend, a, t.WarpSize})
	}
	b, _ := json.Marshal(sum) // strings and ints
	return string(b)
}

// SummaryTargets reads the targets of a summary label's value, in any of
// the forms LabelTarget takes.
func SummaryTargets(label string) ([]gpu.Target, error) {
	var ls labelSummary
	if err := json.Unmarshal([]byte(label), &ls); err != nil {
		return nil, err
	}
	var ts []gpu.Target
	for _, lt := range ls.Targets {
		t, err := LabelTarget(lt.Backend, lt.Arch, lt.WarpSize)
		if err != nil {
			return nil, err
		}
		ts = append(ts, t)
	}
	return ts, nil
}

// LabelTarget reads a target of a summary or metadata label: arch a JSON
// number (CUDA, as Triton writes it) or a string (HIP, and CUDA as the
// original tool writes it, also "sm_75" as MCV writes vLLM summaries);
// backend "rocm" (MCV's vLLM summaries) is "hip".
func LabelTarget(backend string, arch any, warp int) (gpu.Target, error) {
	var a string
	switch v := arch.(type) {
	case string:
		a = v
	case float64:
		a = strconv.FormatFloat(v, 'f', -1, 64)
	default:
		return gpu.Target{}, fmt.Errorf("arch %v is neither a number nor a string", arch)
	}
	if backend == "rocm" {
		backend = "hip"
	}
	if backend == "cuda" {
		a = strings.TrimPrefix(a, "sm_")
	}
	if backend == "" || a == "" {
		return gpu.Target{}, fmt.Errorf("target needs backend and arch")
	}
	if warp == 0 {
		warp = gpu.DefaultWarpSize(backend, a)
	}
	return gpu.Target{Backend: backend, Arch: a, WarpSize: warp}, nil
}
