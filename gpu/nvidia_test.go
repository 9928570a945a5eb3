package gpu

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// fakeNVML is a scripted NVML that records every call.
type fakeNVML struct {
	initErr  error
	caps     [][2]int // per device: major, minor
	capErr   map[int]error
	countErr error
	driver   string
	cuda     int
	calls    []string
}

func (f *fakeNVML) rec(s string) { f.calls = append(f.calls, s) }

func (f *fakeNVML) Init() error     { f.rec("Init"); return f.initErr }
func (f *fakeNVML) Shutdown() error { f.rec("Shutdown"); return nil }
func (f *fakeNVML) DeviceCount() (int, error) {
	f.rec("DeviceCount")
	return len(f.caps), f.countErr
}
func (f *fakeNVML) ComputeCapability(i int) (int, int, error) {
	f.rec(fmt.Sprintf("ComputeCapability(%d)", i))
	if err := f.capErr[i]; err != nil {
		return 0, 0, err
	}
	return f.caps[i][0], f.caps[i][1], nil
}
func (f *fakeNVML) Name(i int) (string, error) {
	f.rec(fmt.Sprintf("Name(%d)", i))
	return fmt.Sprintf("Fake GPU %d", i), nil
}
func (f *fakeNVML) DriverVersion() (string, error) { f.rec("DriverVersion"); return f.driver, nil }
func (f *fakeNVML) CUDADriverVersion() (int, error) {
	f.rec("CUDADriverVersion")
	return f.cuda, nil
}

func TestNVIDIAInitFailsNoFurtherCalls(t *testing.T) {
	f := &fakeNVML{initErr: errors.New("nvml: init: libnvidia-ml.so.1 not loadable"), caps: [][2]int{{9, 0}}}
	devs, line := detectNVIDIA(f)
	if len(devs) != 0 {
		t.Fatalf("devices after failed init: %v", devs)
	}
	if !strings.HasPrefix(line, "no NVIDIA GPU: ") || !strings.Contains(line, "not loadable") {
		t.Fatalf("line = %q", line)
	}
	if strings.Join(f.calls, ",") != "Init" {
		t.Fatalf("calls after failed Init: %v", f.calls)
	}
}

func TestNVIDIATwoCapabilitiesUnion(t *testing.T) {
	f := &fakeNVML{caps: [][2]int{{9, 0}, {8, 0}, {9, 0}}, driver: "550.54.15", cuda: 12040}
	r, err := Detect(Options{Override: "", SysfsRoot: t.TempDir(), nvml: f})
	if err != nil {
		t.Fatal(err)
	}
	if got := FormatList(r.Targets); got != "cuda:80:32,cuda:90:32" {
		t.Fatalf("targets %s", got)
	}
	if len(r.Devices) != 3 || r.Devices[1].Index != 1 || r.Devices[1].Name != "Fake GPU 1" || r.Devices[1].Target.Arch != "80" {
		t.Fatalf("devices %+v", r.Devices)
	}
	if r.Source != SourceHardware || !strings.HasPrefix(r.NVIDIA, "driver 550.54.15, CUDA 12.4") {
		t.Fatalf("report %+v", r)
	}
	if f.calls[len(f.calls)-1] != "Shutdown" {
		t.Fatalf("no Shutdown at the end: %v", f.calls)
	}
}

func TestNVIDIADeviceErrorReported(t *testing.T) {
	f := &fakeNVML{caps: [][2]int{{7, 5}, {0, 0}}, capErr: map[int]error{1: errors.New("GPU is lost")}, driver: "535.1", cuda: 12020}
	devs, line := detectNVIDIA(f)
	if len(devs) != 1 || devs[0].Target != (Target{"cuda", "75", 32}) {
		t.Fatalf("devices %+v", devs)
	}
	if !strings.Contains(line, "device 1: compute capability: GPU is lost") {
		t.Fatalf("line = %q", line)
	}

	f = &fakeNVML{countErr: errors.New("driver gone"), driver: "535.1", cuda: 12020}
	devs, line = detectNVIDIA(f)
	if len(devs) != 0 || !strings.HasPrefix(line, "no NVIDIA GPU: device count: driver gone") {
		t.Fatalf("devices %v, line %q", devs, line)
	}
	if f.calls[len(f.calls)-1] != "Shutdown" {
		t.Fatalf("no Shutdown after device error: %v", f.calls)
	}

	f = &fakeNVML{driver: "535.1", cuda: 12020}
	if devs, line = detectNVIDIA(f); len(devs) != 0 || !strings.HasPrefix(line, "no NVIDIA GPU: NVML sees 0 devices") {
		t.Fatalf("devices %v, line %q", devs, line)
	}
}
