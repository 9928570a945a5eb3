//go:build cgo

package gpu

import (
	"errors"
	"fmt"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// go-nvml v0.13.4-1 links with --unresolved-symbols=ignore-in-object-files
// and dlopens libnvidia-ml.so.1 inside Init, so the binary does not need
// the library to start; Init answers ERROR_LIBRARY_NOT_FOUND without it.

// realNVML wraps one go-nvml library instance. It refuses every call until
// Init succeeded, so a caller's mistake is an error, not a crash.
type realNVML struct {
	lib nvml.Interface
	up  bool
}

var errNVMLDown = errors.New("nvml: not initialised")

func newNVML() nvmlLib { return &realNVML{lib: nvml.New()} }

func (r *realNVML) Init() error {
	ret := r.lib.Init()
	switch ret {
	case nvml.SUCCESS:
		r.up = true
		return nil
	case nvml.ERROR_LIBRARY_NOT_FOUND:
		return fmt.Errorf("nvml: init: libnvidia-ml.so.1 not loadable: %w", ret)
	default:
		return fmt.Errorf("nvml: init: %w", ret)
	}
}

func (r *realNVML) Shutdown() error {
	if !r.up {
		return errNVMLDown
	}
	r.up = false
	return nvmlErr("shutdown", r.lib.Shutdown())
}

func (r *realNVML) DeviceCount() (int, error) {
	if !r.up {
		return 0, errNVMLDown
	}
	n, ret := r.lib.DeviceGetCount()
	return n, nvmlErr("device count", ret)
}

func (r *realNVML) device(i int) (nvml.Device, error) {
	if !r.up {
		return nil, errNVMLDown
	}
	d, ret := r.lib.DeviceGetHandleByIndex(i)
	return d, nvmlErr(fmt.Sprintf("device %d handle", i), ret)
}

func (r *realNVML) ComputeCapability(i int) (int, int, error) {
	d, err := r.device(i)
	if err != nil {
		return 0, 0, err
	}
	major, minor, ret := d.GetCudaComputeCapability()
	return major, minor, nvmlErr("compute capability", ret)
}

func (r *realNVML) Name(i int) (string, error) {
	d, err := r.device(i)
	if err != nil {
		return "", err
	}
	name, ret := d.GetName()
	return name, nvmlErr("name", ret)
}

func (r *realNVML) DriverVersion() (string, error) {
	if !r.up {
		return "", errNVMLDown
	}
	v, ret := r.lib.SystemGetDriverVersion()
	return v, nvmlErr("driver version", ret)
}

func (r *realNVML) CUDADriverVersion() (int, error) {
	if !r.up {
		return 0, errNVMLDown
	}
	v, ret := r.lib.SystemGetCudaDriverVersion()
	return v, nvmlErr("CUDA driver version", ret)
}

func nvmlErr(op string, ret nvml.Return) error {
	if ret == nvml.SUCCESS {
		return nil
	}
	return fmt.Errorf("nvml: %s: %w", op, ret)
}
