//go:build !cgo

package gpu

import "errors"

// Without cgo there is no NVML binding; such a build sees no NVIDIA GPU
// (use the override on NVIDIA hosts).
type noNVML struct{}

var errNoCgo = errors.New("nvml: binary built without cgo (CGO_ENABLED=0)")

func newNVML() nvmlLib { return noNVML{} }

func (noNVML) Init() error                             { return errNoCgo }
func (noNVML) Shutdown() error                         { return errNoCgo }
func (noNVML) DeviceCount() (int, error)               { return 0, errNoCgo }
func (noNVML) ComputeCapability(int) (int, int, error) { return 0, 0, errNoCgo }
func (noNVML) Name(int) (string, error)                { return "", errNoCgo }
func (noNVML) DriverVersion() (string, error)          { return "", errNoCgo }
func (noNVML) CUDADriverVersion() (int, error)         { return 0, errNoCgo }
