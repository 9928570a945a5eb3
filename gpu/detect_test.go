package gpu

import (
	"os"
	"strings"
	"testing"
)

func TestOverrideTouchesNoHardware(t *testing.T) {
	f := &fakeNVML{caps: [][2]int{{9, 0}}}
	// A sysfs root that would yield a gfx90a target if it were read.
	root := writeKFD(t, cpuNode, kfdNodeFixture{90010, 416, ""})

	t.Setenv(EnvOverride, "")
	r, err := Detect(Options{Override: "cuda:90:32,hip:gfx942", SysfsRoot: root, nvml: f})
	if err != nil {
		t.Fatal(err)
	}
	if got := FormatList(r.Targets); got != "cuda:90:32,hip:gfx942:64" || r.Source != SourceOverride || len(r.Devices) != 0 {
		t.Fatalf("report %+v", r)
	}

	// The env var stands in for an empty flag; the flag wins over it.
	t.Setenv(EnvOverride, "none")
	r, err = Detect(Options{SysfsRoot: root, nvml: f})
	if err != nil || r.Targets == nil || len(r.Targets) != 0 || r.Source != SourceOverride {
		t.Fatalf("env none: %+v %v", r, err)
	}
	r, err = Detect(Options{Override: "cuda:80", SysfsRoot: root, nvml: f})
	if err != nil || FormatList(r.Targets) != "cuda:80:32" {
		t.Fatalf("flag over env: %+v %v", r, err)
	}
	if len(f.calls) != 0 {
		t.Fatalf("NVML called with an override set: %v", f.calls)
	}

	// Malformed overrides are errors, from the flag or the env.
	if _, err := Detect(Options{Override: "cuda:x", nvml: f}); err == nil || !strings.Contains(err.Error(), "--gpu") {
		t.Fatalf("bad flag: %v", err)
	}
	t.Setenv(EnvOverride, "rocm:gfx90a")
	if _, err := Detect(Options{nvml: f}); err == nil || !strings.Contains(err.Error(), EnvOverride) {
		t.Fatalf("bad env: %v", err)
	}
	if len(f.calls) != 0 {
		t.Fatalf("NVML called with a bad override: %v", f.calls)
	}
}

func TestMixedHost(t *testing.T) {
	t.Setenv(EnvOverride, "")
	t.Setenv(EnvHSAOverride, "")
	root := writeKFD(t, cpuNode, kfdNodeFixture{90402, 1216, ""}, kfdNodeFixture{90402, 1216, ""})
	f := &fakeNVML{caps: [][2]int{{9, 0}, {8, 6}}, driver: "550.54.15", cuda: 12040}
	r, err := Detect(Options{SysfsRoot: root, nvml: f})
	if err != nil {
		t.Fatal(err)
	}
	if got := FormatList(r.Targets); got != "cuda:86:32,cuda:90:32,hip:gfx942:64" || len(r.Devices) != 4 {
		t.Fatalf("targets %s, devices %+v", got, r.Devices)
	}
}

// TestDetectThisHost runs the real detection. On a host without NVIDIA
// devices and without KFD (the project's CI machines) it must find
// nothing, without error; on a GPU host it must find that GPU.
func TestDetectThisHost(t *testing.T) {
	t.Setenv(EnvOverride, "")
	t.Setenv(EnvHSAOverride, "")
	r, err := Detect(Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("targets %s; nvidia: %s; amd: %s", FormatList(r.Targets), r.NVIDIA, r.AMD)
	if r.Source != SourceHardware || r.Targets == nil {
		t.Fatalf("report %+v", r)
	}
	_, nvErr := os.Stat("/dev/nvidiactl")
	_, kfdErr := os.Stat("/sys/class/kfd/kfd/topology/nodes")
	if nvErr == nil || kfdErr == nil {
		if len(r.Targets) == 0 {
			t.Fatalf("GPU device nodes present but no targets: %+v", r)
		}
		return
	}
	if len(r.Targets) != 0 || len(r.Devices) != 0 {
		t.Fatalf("no GPU here, yet %+v", r)
	}
	if !strings.HasPrefix(r.NVIDIA, "no NVIDIA GPU") || !strings.HasPrefix(r.AMD, "no AMD GPU") {
		t.Fatalf("lines %q / %q", r.NVIDIA, r.AMD)
	}
}
