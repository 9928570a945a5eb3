package kind

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"cargohold/gpu"
	"cargohold/triton"
)

// Label names beyond Triton's (triton.Label*): MCV's, per kind, and the
// KServe hints MCV writes for vLLM images.
const (
	labelEntryCount = "entry-count"
	labelCacheSize  = "cache-size-bytes"
	labelSummary    = "summary"
	labelFormat     = "format" // vLLM

	LabelKServeFramework    = "io.kserve.km/framework"
	LabelKServeCacheType    = "io.kserve.km/cache-type"
	LabelKServeCacheHash    = "io.kserve.km/cache-hash"
	LabelKServeMountSubpath = "io.kserve.km/cache-mount-subpath"
	LabelKServeRootEnv      = "io.kserve.km/cache-root-env"
)

// Label is the name of one of k's labels: Label("summary") is
// "cache.<kind>.image/summary".
func (k Kind) Label(name string) string { return k.LabelPrefix() + name }

// ErrNoTargets says a cache whose units no kernel JSON describes was packed
// without GPU targets.
var ErrNoTargets = errors.New("no GPU targets for the image")

// Labels gives the image config labels of a scanned tree, MCV's and
// cargohold's, and the targets its summary names. Targets come from the
// kernel JSONs of its Triton units; where units hold compiled code no
// kernel JSON describes (vLLM's binary and AOT artifacts, an Inductor or
// vLLM tree without Triton units), the GPU targets gpus (detected at create
// time, or --gpu) are added, and none at all is an error wrapping
// ErrNoTargets. A Triton cache without kernels (launchers only) takes gpus
// and may have none, as before.
func Labels(t *Tree, gpus []gpu.Target, title string) (map[string]string, []gpu.Target, error) {
	var kts []gpu.Target
	for _, k := range t.Kernels() {
		kts = append(kts, k.Target)
	}
	kts = gpu.Dedup(kts)
	if t.Kind == Triton {
		labels, err := triton.Labels(t.Entries(), title)
		if err != nil {
			return nil, nil, err
		}
		targets := kts
		if len(kts) == 0 && len(gpus) > 0 {
			targets = gpu.Dedup(gpus)
			labels[triton.LabelSummary] = triton.SummaryLabel(targets, false)
		}
		return labels, targets, nil
	}
	var v *vllmInfo
	needGPU := len(kts) == 0
	if t.Kind == VLLM {
		v = describeVLLM(t)
		needGPU = needGPU || v.compiled
	}
	targets := kts
	if needGPU {
		if len(gpus) == 0 {
			why := "no Triton kernel JSON in it says its targets"
			if len(kts) > 0 {
				why = "its compiled artifacts (binary, AOT) hold code for the GPU they were built on"
			}
			return nil, nil, fmt.Errorf("kind: labels of %s: %w: %s; run on the GPU host that built it, or name the targets with --gpu (e.g. --gpu cuda:90)",
				t.Root, ErrNoTargets, why)
		}
		targets = gpu.Dedup(append(targets, gpus...))
	}
	k := t.Kind
	labels := map[string]string{
		k.Label(labelCacheSize): strconv.FormatInt(t.Size(), 10),
		k.Label(labelSummary):   triton.SummaryLabel(targets, k == VLLM),
		triton.LabelTitle:       title,
	}
	if k == VLLM {
		labels[k.Label(labelEntryCount)] = strconv.Itoa(v.entryCount)
		labels[k.Label(labelFormat)] = v.format()
		if hashes := v.hashes(); len(hashes) > 0 {
			labels[LabelKServeFramework] = "vllm"
			labels[LabelKServeCacheType] = "torch-compile"
			labels[LabelKServeCacheHash] = strings.Join(hashes, ",")
			labels[LabelKServeMountSubpath] = vllmCompileDir
			if v.list[0].aot {
				labels[LabelKServeMountSubpath] = vllmCompileDir + "/" + vllmAOTDir
			}
			// MCV's: where KServe mounts vLLM caches.
			labels[LabelKServeRootEnv] = "VLLM_CACHE_ROOT=/home/kserve/.cache/vllm"
		}
	} else {
		labels[k.Label(labelEntryCount)] = strconv.Itoa(len(t.Units))
	}
	return labels, targets, nil
}

// Summary is what an image's labels say about its cache.
type Summary struct {
	Kind       Kind            // the kind whose labels the image carries
	Targets    []gpu.Target    // from the summary (or Triton's metadata) label
	Kernels    []triton.Kernel // Triton's metadata label (cargohold's own)
	EntryCount int             // as MCV counts: kernels (Triton), hash dirs (vLLM); units (Inductor)
	CacheSize  int64           // the bytes packed
	Format     string          // vLLM: "binary", "triton", "aot_compile" (comma list) or "unpacked"
	Hashes     []string        // vLLM: the hash dirs (KServe's cache-hash hint)
	Title      string
}

// ErrNoLabels says an image carries no cache labels of any kind.
var ErrNoLabels = triton.ErrNoLabels

// KindOfLabels tells an image's kind from its labels: the kind whose
// summary (or, for Triton, metadata) label it carries; "" for none. An
// image with labels of several kinds is taken as the first of vLLM,
// Inductor, Triton (MCV writes one kind's).
func KindOfLabels(labels map[string]string) Kind {
	for _, k := range []Kind{VLLM, Inductor} {
		if _, ok := labels[k.Label(labelSummary)]; ok {
			return k
		}
	}
	_, s := labels[triton.LabelSummary]
	_, m := labels[triton.LabelMetadata]
	if s || m {
		return Triton
	}
	return ""
}

// ParseLabels reads the cache labels of an image config, of whichever kind
// it carries (KindOfLabels). An image without any is ErrNoLabels; a label
// that is present but malformed is an error (the caller then learns the
// targets from the kernel JSONs, where there are any).
func ParseLabels(labels map[string]string) (Summary, error) {
	k := KindOfLabels(labels)
	s := Summary{Kind: k, Title: labels[triton.LabelTitle]}
	switch k {
	case "":
		return s, ErrNoLabels
	case Triton:
		ts, err := triton.ParseLabels(labels)
		s.Targets, s.Kernels, s.EntryCount, s.CacheSize = ts.Targets, ts.Kernels, ts.EntryCount, ts.CacheSize
		return s, err
	}
	ts, err := triton.SummaryTargets(labels[k.Label(labelSummary)])
	if err != nil {
		return s, fmt.Errorf("kind: label %s: %w", k.Label(labelSummary), err)
	}
	s.Targets = gpu.Dedup(ts)
	if v, ok := labels[k.Label(labelEntryCount)]; ok {
		n, err := strconv.Atoi(v)
		if err != nil {
			return s, fmt.Errorf("kind: label %s: %w", k.Label(labelEntryCount), err)
		}
		s.EntryCount = n
	}
	if v, ok := labels[k.Label(labelCacheSize)]; ok {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return s, fmt.Errorf("kind: label %s: %w", k.Label(labelCacheSize), err)
		}
		s.CacheSize = n
	}
	s.Format = labels[k.Label(labelFormat)]
	if h := labels[LabelKServeCacheHash]; h != "" {
		s.Hashes = strings.Split(h, ",")
		sort.Strings(s.Hashes)
	}
	return s, nil
}
