package gpu

import (
	"fmt"
	"os"
	"strings"
)

// EnvOverride names the environment variable read when Options.Override is
// empty. It takes the same list as the --gpu flag.
const EnvOverride = "CARGOHOLD_GPU"

// Report sources.
const (
	SourceOverride = "override"
	SourceHardware = "hardware"
)

// Device is one GPU found on the host.
type Device struct {
	Index   int    `json:"index"`   // ordinal within its backend (NVML index, KFD GPU order)
	Backend string `json:"backend"` // "cuda" or "hip"
	Name    string `json:"name"`
	Target  Target `json:"target"`
}

// Report is what Detect found. Targets is never nil: a host without a GPU
// has an empty list.
type Report struct {
	Source  string   `json:"source"` // SourceOverride or SourceHardware
	Devices []Device `json:"devices,omitempty"`
	Targets []Target `json:"targets"`
	// NVIDIA and AMD are one line each for humans: versions, or why there is
	// no GPU of that kind ("no NVIDIA GPU: ..."), and per-device problems.
	NVIDIA string `json:"nvidia"`
	AMD    string `json:"amd"`
}

// Options says where targets come from.
type Options struct {
	// Override is a target list as the --gpu flag takes it
	// ("cuda:90:32,hip:gfx942" or "none"). Default "": read env
	// CARGOHOLD_GPU; if that is empty too, probe the hardware. When an
	// override is set no hardware is touched.
	Override string
	// SysfsRoot is the directory that holds sys/class/kfd. Default "": "/".
	SysfsRoot string

	// nvml replaces the real NVML (tests). Default nil: go-nvml, or a stub
	// that finds nothing in CGO_ENABLED=0 builds.
	nvml nvmlLib
}

// Detect returns the local GPU targets. An override that does not parse,
// or a malformed HSA_OVERRIDE_GFX_VERSION, is an error; a host without
// NVIDIA or AMD GPUs (missing driver library, no KFD topology) is not.
func Detect(opts Options) (Report, error) {
	override := strings.TrimSpace(opts.Override)
	from := "--gpu"
	if override == "" {
		override = strings.TrimSpace(os.Getenv(EnvOverride))
		from = EnvOverride
	}
	if override != "" {
		ts, err := ParseList(override)
		if err != nil {
			return Report{}, fmt.Errorf("gpu: override %s=%q: %w", from, override, err)
		}
		note := "not probed: override " + from + " set"
		return Report{Source: SourceOverride, Targets: ts, NVIDIA: note, AMD: note}, nil
	}

	root := opts.SysfsRoot
	if root == "" {
		root = "/"
	}
	amdDevs, amdLine, err := detectAMD(root, os.Getenv(EnvHSAOverride))
	if err != nil {
		return Report{}, err
	}
	lib := opts.nvml
	if lib == nil {
		lib = newNVML()
	}
	nvDevs, nvLine := detectNVIDIA(lib)

	devs := append(nvDevs, amdDevs...)
	ts := make([]Target, 0, len(devs))
	for _, d := range devs {
		ts = append(ts, d.Target)
	}
	return Report{
		Source:  SourceHardware,
		Devices: devs,
		Targets: Dedup(ts),
		NVIDIA:  nvLine,
		AMD:     amdLine,
	}, nil
}
