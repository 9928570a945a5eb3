package gpu

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// kfdNodeFixture is one node of a fixture topology.
type kfdNodeFixture struct {
	gfx, simds int
	name       string
}

// writeKFD builds a sysfs tree with the given nodes under a temp root and
// returns the root.
func writeKFD(t *testing.T, nodes ...kfdNodeFixture) string {
	t.Helper()
	root := t.TempDir()
	for i, n := range nodes {
		dir := filepath.Join(root, kfdNodes, fmt.Sprint(i))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		// A real properties file has many more keys; a few are enough to
		// check that only the two that matter are read.
		props := fmt.Sprintf("cpu_cores_count %d\nsimd_count %d\nmem_banks_count 1\ngfx_target_version %d\nvendor_id 4098\nnot a number here\n",
			map[bool]int{true: 32, false: 0}[n.simds == 0], n.simds, n.gfx)
		if err := os.WriteFile(filepath.Join(dir, "properties"), []byte(props), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "name"), []byte(n.name+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

var cpuNode = kfdNodeFixture{gfx: 0, simds: 0}

func TestAMDHosts(t *testing.T) {
	t.Setenv(EnvHSAOverride, "")
	cases := []struct {
		name    string
		nodes   []kfdNodeFixture
		targets string
		devices int
	}{
		{"MI210", []kfdNodeFixture{cpuNode, {90010, 416, "aldebaran"}, {90010, 416, "aldebaran"}}, "hip:gfx90a:64", 2},
		{"MI300", []kfdNodeFixture{cpuNode, cpuNode, {90402, 1216, ""}}, "hip:gfx942:64", 1},
		{"gfx1100", []kfdNodeFixture{cpuNode, {110000, 192, ""}}, "hip:gfx1100:32", 1},
		{"gfx1030", []kfdNodeFixture{cpuNode, {100300, 160, ""}}, "hip:gfx1030:32", 1},
		// A node with a version but no SIMDs is not a GPU either.
		{"CPU only", []kfdNodeFixture{cpuNode, {90010, 0, ""}}, "none", 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r, err := Detect(Options{SysfsRoot: writeKFD(t, c.nodes...), nvml: &fakeNVML{initErr: fmt.Errorf("absent")}})
			if err != nil {
				t.Fatal(err)
			}
			if got := FormatList(r.Targets); got != c.targets {
				t.Fatalf("targets %s, want %s", got, c.targets)
			}
			if len(r.Devices) != c.devices {
				t.Fatalf("devices %+v", r.Devices)
			}
			if c.devices == 0 && !strings.HasPrefix(r.AMD, "no AMD GPU") {
				t.Fatalf("AMD line %q", r.AMD)
			}
			if c.devices > 0 && !strings.HasPrefix(r.AMD, fmt.Sprintf("KFD: %d GPU(s)", c.devices)) {
				t.Fatalf("AMD line %q", r.AMD)
			}
		})
	}
}

func TestAMDDeviceOrderAndNames(t *testing.T) {
	t.Setenv(EnvHSAOverride, "")
	// 12 nodes: numeric order (2 before 10) is ROCm's agent order.
	nodes := []kfdNodeFixture{cpuNode}
	for i := 1; i < 12; i++ {
		nodes = append(nodes, kfdNodeFixture{90402, 1216, fmt.Sprintf("n%d", i)})
	}
	devs, _, err := detectAMD(writeKFD(t, nodes...), "")
	if err != nil {
		t.Fatal(err)
	}
	for i, d := range devs {
		if d.Index != i || d.Name != fmt.Sprintf("n%d", i+1) || d.Backend != "hip" {
			t.Fatalf("device %d: %+v", i, d)
		}
	}
	// No name file content: the arch stands in.
	devs, _, _ = detectAMD(writeKFD(t, kfdNodeFixture{90010, 416, ""}), "")
	if len(devs) != 1 || devs[0].Name != "gfx90a" {
		t.Fatalf("%+v", devs)
	}
}

func TestHSAOverride(t *testing.T) {
	root := writeKFD(t, cpuNode, kfdNodeFixture{110000, 192, ""}, kfdNodeFixture{100300, 160, ""})
	for override, want := range map[string]string{"9.0.10": "hip:gfx90a:64", "11.0.0": "hip:gfx1100:32", " 9.4.2 ": "hip:gfx942:64"} {
		t.Setenv(EnvHSAOverride, override)
		r, err := Detect(Options{SysfsRoot: root, nvml: &fakeNVML{initErr: fmt.Errorf("absent")}})
		if err != nil {
			t.Fatal(err)
		}
		if got := FormatList(r.Targets); got != want || len(r.Devices) != 2 {
			t.Errorf("%s=%q: targets %s (%d devices), want %s", EnvHSAOverride, override, got, len(r.Devices), want)
		}
		if !strings.Contains(r.AMD, "applied") {
			t.Errorf("AMD line %q does not mention the override", r.AMD)
		}
	}
	// The override does not turn a CPU-only host into a GPU host.
	t.Setenv(EnvHSAOverride, "9.0.10")
	if devs, _, err := detectAMD(writeKFD(t, cpuNode), "9.0.10"); err != nil || len(devs) != 0 {
		t.Fatalf("CPU-only with override: %v %v", devs, err)
	}
	for _, bad := range []string{"9.0", "gfx90a", "9.0.x", "9.16.0", "0.0.0", "-1.0.0", "9.0.10.1"} {
		t.Setenv(EnvHSAOverride, bad)
		if _, err := Detect(Options{SysfsRoot: root, nvml: &fakeNVML{initErr: fmt.Errorf("absent")}}); err == nil {
			t.Errorf("%s=%q: want error", EnvHSAOverride, bad)
		}
	}
}

func TestGfxNames(t *testing.T) {
	for n, want := range map[int]string{90010: "gfx90a", 90402: "gfx942", 110000: "gfx1100", 90006: "gfx906", 100300: "gfx1030", 120001: "gfx1201", 90008: "gfx908"} {
		if got := gfxFromTarget(n).arch(); got != want {
			t.Errorf("%d: %s, want %s", n, got, want)
		}
	}
}

func TestAMDNoTopologyAndBrokenNode(t *testing.T) {
	devs, line, err := detectAMD(t.TempDir(), "")
	if err != nil || len(devs) != 0 || !strings.HasPrefix(line, "no AMD GPU: no KFD topology") {
		t.Fatalf("%v %q %v", devs, line, err)
	}
	// A node without a properties file is reported; the others still count.
	root := writeKFD(t, cpuNode, kfdNodeFixture{90010, 416, ""})
	if err := os.MkdirAll(filepath.Join(root, kfdNodes, "2"), 0o755); err != nil {
		t.Fatal(err)
	}
	devs, line, err = detectAMD(root, "")
	if err != nil || len(devs) != 1 || !strings.Contains(line, "node 2:") {
		t.Fatalf("%v %q %v", devs, line, err)
	}
}
