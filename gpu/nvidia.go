package gpu

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
)

// nvmlLib is the part of NVML that detection uses; the cgo build wraps
// go-nvml, tests use fakes. Calling anything but Init before a successful
// Init is forbidden: with go-nvml the symbols are unresolved until its
// dlopen succeeds, and a call through them kills the process.
type nvmlLib interface {
	Init() error
	Shutdown() error
	DeviceCount() (int, error)
	ComputeCapability(i int) (major, minor int, err error)
	Name(i int) (string, error)
	DriverVersion() (string, error)
	CUDADriverVersion() (int, error)
}

// nvmlMu serialises NVML sessions: go-nvml swaps package-level function
// pointers on every library load and unload.
var nvmlMu sync.Mutex

// detectNVIDIA lists NVIDIA devices and gives the report line. Problems
// are reported in the line, never returned: a host whose NVML is missing or
// broken simply has no NVIDIA targets.
func detectNVIDIA(lib nvmlLib) ([]Device, string) {
	nvmlMu.Lock()
	defer nvmlMu.Unlock()

	if err := lib.Init(); err != nil {
		return nil, "no NVIDIA GPU: " + err.Error()
	}
	defer lib.Shutdown() //nolint:errcheck // nothing to do about a failed shutdown

	var info []string
	if v, err := lib.DriverVersion(); err != nil {
		info = append(info, "driver unknown ("+err.Error()+")")
	} else {
		info = append(info, "driver "+v)
	}
	if v, err := lib.CUDADriverVersion(); err != nil {
		info = append(info, "CUDA unknown ("+err.Error()+")")
	} else {
		info = append(info, "CUDA "+cudaVersion(v))
	}
	versions := strings.Join(info, ", ")

	n, err := lib.DeviceCount()
	if err != nil {
		return nil, fmt.Sprintf("no NVIDIA GPU: device count: %v (%s)", err, versions)
	}
	if n == 0 {
		return nil, "no NVIDIA GPU: NVML sees 0 devices (" + versions + ")"
	}

	var devs []Device
	var problems []string
	for i := 0; i < n; i++ {
		major, minor, err := lib.ComputeCapability(i)
		if err != nil {
			problems = append(problems, fmt.Sprintf("device %d: compute capability: %v", i, err))
			continue
		}
		if major <= 0 || minor < 0 || minor > 9 {
			problems = append(problems, fmt.Sprintf("device %d: compute capability %d.%d out of range", i, major, minor))
			continue
		}
		name, err := lib.Name(i)
		if err != nil {
			// The name is for humans only; the target is known.
			problems = append(problems, fmt.Sprintf("device %d: name: %v", i, err))
			name = ""
		}
		devs = append(devs, Device{
			Index:   i,
			Backend: "cuda",
			Name:    name,
			// Triton's CUDA arch is major*10+minor; NVIDIA warps are 32 wide.
			Target: Target{Backend: "cuda", Arch: strconv.Itoa(major*10 + minor), WarpSize: 32},
		})
	}
	line := versions + fmt.Sprintf(", %d device(s)", n)
	if len(devs) == 0 {
		line = "no NVIDIA GPU: no usable device (" + line + ")"
	}
	if len(problems) > 0 {
		line += "; " + strings.Join(problems, "; ")
	}
	return devs, line
}

// cudaVersion prints NVML's CUDA driver version, 12040, as "12.4".
func cudaVersion(v int) string {
	return fmt.Sprintf("%d.%d", v/1000, v%1000/10)
}
