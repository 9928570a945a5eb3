// Package gpu knows the local GPU targets and the rule that decides whether a
// compiled Triton kernel fits them.
//
// A Target is (backend, arch, warp size), the part of Triton's cache key that
// names the hardware. A kernel fits a host when its target equals one of the
// host's targets exactly (Triton 3.2–3.7 never looks up a kernel compiled for
// another arch). Targets come from an explicit override (flag --gpu, env
// CARGOHOLD_GPU) or from the hardware; with an override set, no hardware is
// touched.
package gpu

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// Target is one GPU compilation target as Triton writes it into a kernel's
// metadata: backend "cuda" or "hip", arch "75" (CUDA compute capability
// major*10+minor) or "gfx90a" (HIP), and the warp size.
type Target struct {
	Backend  string `json:"backend"`
	Arch     string `json:"arch"`
	WarpSize int    `json:"warp_size"`
}

// String gives the override syntax, "cuda:75:32".
func (t Target) String() string {
	return fmt.Sprintf("%s:%s:%d", t.Backend, t.Arch, t.WarpSize)
}

// DefaultWarpSize is the warp size a backend uses when a target names none:
// 32 for CUDA and for RDNA (gfx10 and later), 64 for GCN/CDNA (gfx9 and
// older).
func DefaultWarpSize(backend, arch string) int {
	if backend != "hip" {
		return 32
	}
	a := strings.TrimPrefix(arch, "gfx")
	if len(a) >= 2 {
		if major, err := strconv.Atoi(a[:len(a)-2]); err == nil && major >= 10 {
			return 32
		}
	}
	return 64
}

// ParseTarget reads one target: "cuda:75:32", "cuda:75", "hip:gfx90a:64" or
// "hip:gfx90a". A missing warp size takes DefaultWarpSize.
func ParseTarget(s string) (Target, error) {
	parts := strings.Split(strings.TrimSpace(s), ":")
	if len(parts) < 2 || len(parts) > 3 {
		return Target{}, fmt.Errorf("gpu: target %q: want backend:arch[:warp_size]", s)
	}
	t := Target{Backend: strings.ToLower(parts[0]), Arch: strings.ToLower(parts[1])}
	switch t.Backend {
	case "cuda":
		// Written as Triton writes it: "080" or "+80" would never equal a
		// kernel's "80", and nothing would fit.
		if n, err := strconv.Atoi(t.Arch); err != nil || n <= 0 || strconv.Itoa(n) != t.Arch {
			return Target{}, fmt.Errorf("gpu: target %q: CUDA arch %q must be a number like 80 (no sign, no leading zero)", s, t.Arch)
		}
	case "hip":
		if !strings.HasPrefix(t.Arch, "gfx") || len(t.Arch) < 5 {
			return Target{}, fmt.Errorf("gpu: target %q: HIP arch must look like gfx90a", s)
		}
	default:
		return Target{}, fmt.Errorf("gpu: target %q: unknown backend %q (want cuda or hip)", s, t.Backend)
	}
	t.WarpSize = DefaultWarpSize(t.Backend, t.Arch)
	if len(parts) == 3 {
		w, err := strconv.Atoi(parts[2])
		if err != nil || (w != 32 && w != 64) || strconv.Itoa(w) != parts[2] {
			return Target{}, fmt.Errorf("gpu: target %q: warp size must be 32 or 64", s)
		}
		t.WarpSize = w
	}
	return t, nil
}

// ParseList reads an override: a comma-separated list of targets, or "none"
// for a host with no GPU (an empty, non-nil list).
func ParseList(s string) ([]Target, error) {
	s = strings.TrimSpace(s)
	if s == "none" {
		return []Target{}, nil
	}
	if s == "" {
		return nil, fmt.Errorf("gpu: empty target list (use \"none\" for a host without a GPU)")
	}
	var out []Target
	for _, p := range strings.Split(s, ",") {
		t, err := ParseTarget(p)
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return Dedup(out), nil
}

// Dedup sorts targets and drops repeats: a host with eight equal GPUs has
// one target.
func Dedup(ts []Target) []Target {
	out := append([]Target{}, ts...)
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	n := 0
	for i, t := range out {
		if i == 0 || t != out[n-1] {
			out[n] = t
			n++
		}
	}
	return out[:n]
}

// Fits reports whether a kernel compiled for t runs on a host with the local
// targets: exact equality on backend, arch and warp size.
func Fits(t Target, local []Target) bool {
	for _, l := range local {
		if l == t {
			return true
		}
	}
	return false
}

// AnyFits reports whether some target of ts fits the local targets: an
// image whose targets all fail this holds nothing for the host.
func AnyFits(ts, local []Target) bool {
	for _, t := range ts {
		if Fits(t, local) {
			return true
		}
	}
	return false
}

// FormatList is the inverse of ParseList.
func FormatList(ts []Target) string {
	if len(ts) == 0 {
		return "none"
	}
	s := make([]string, len(ts))
	for i, t := range ts {
		s[i] = t.String()
	}
	return strings.Join(s, ",")
}
