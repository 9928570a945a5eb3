package gpu

import (
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestProbeBinaryStartsWithoutNVML builds gpu/internal/probe with cgo, so
// with go-nvml linked in, and checks that libnvidia-ml is not a load-time
// dependency and that the binary runs and reports no NVIDIA GPU on a host
// without the library.
func TestProbeBinaryStartsWithoutNVML(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a binary")
	}
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goBin); err != nil {
		if goBin, err = exec.LookPath("go"); err != nil {
			skipOrFail(t, "no go toolchain")
		}
	}
	if _, err := exec.LookPath("gcc"); err != nil {
		skipOrFail(t, "no C compiler for a cgo build")
	}
	bin := filepath.Join(t.TempDir(), "probe")
	build := exec.Command(goBin, "build", "-o", bin, "cargohold/gpu/internal/probe")
	build.Env = append(os.Environ(), "CGO_ENABLED=1")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build probe: %v\n%s", err, out)
	}

	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	needed, err := f.ImportedLibraries()
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	// A cgo binary needs libc; without it the build was not the cgo one
	// and the check below would prove nothing.
	if !strings.Contains(strings.Join(needed, " "), "libc.so") {
		t.Fatalf("probe is not a dynamically linked cgo binary: NEEDED %v", needed)
	}
	for _, lib := range needed {
		if strings.Contains(lib, "nvidia-ml") {
			t.Fatalf("probe needs %s at load time: NEEDED %v", lib, needed)
		}
	}
	if _, err := exec.LookPath("ldd"); err == nil {
		out, err := exec.Command("ldd", bin).CombinedOutput()
		if err != nil {
			t.Fatalf("ldd: %v\n%s", err, out)
		}
		if strings.Contains(string(out), "nvidia-ml") {
			t.Fatalf("ldd lists libnvidia-ml:\n%s", out)
		}
	} else {
		t.Log("ldd absent; ELF NEEDED list checked only")
	}

	if hasNVML() {
		t.Skip("libnvidia-ml.so.1 is installed here; the no-library run needs a host without it")
	}
	run := exec.Command(bin)
	run.Env = append(os.Environ(), EnvOverride+"=", EnvHSAOverride+"=")
	out, err := run.CombinedOutput()
	if err != nil {
		t.Fatalf("probe: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "nvidia: no NVIDIA GPU: nvml: init: libnvidia-ml.so.1 not loadable") {
		t.Fatalf("probe output:\n%s", out)
	}
}

// TestBuildWithoutCgo checks the stub: the package builds and vets with
// CGO_ENABLED=0.
func TestBuildWithoutCgo(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the go tool")
	}
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goBin); err != nil {
		skipOrFail(t, "no go toolchain")
	}
	bin := filepath.Join(t.TempDir(), "probe")
	build := exec.Command(goBin, "build", "-o", bin, "cargohold/gpu/internal/probe")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("CGO_ENABLED=0 build: %v\n%s", err, out)
	}
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	needed, _ := f.ImportedLibraries()
	f.Close()
	if len(needed) != 0 {
		t.Fatalf("CGO_ENABLED=0 binary needs %v", needed)
	}
	out, err := exec.Command(bin).CombinedOutput()
	if err != nil {
		t.Fatalf("probe: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "nvidia: no NVIDIA GPU: nvml: binary built without cgo") {
		t.Fatalf("probe output:\n%s", out)
	}
}

// hasNVML reports whether the dynamic loader could find libnvidia-ml.so.1
// in the usual places.
func hasNVML() bool {
	for _, dir := range []string{"/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/nvidia/lib64", "/usr/lib/aarch64-linux-gnu"} {
		if _, err := os.Stat(filepath.Join(dir, "libnvidia-ml.so.1")); err == nil {
			return true
		}
	}
	return false
}

func skipOrFail(t *testing.T, why string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatal(why)
	}
	t.Skip(why)
}
