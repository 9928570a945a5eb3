package registry

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"testing"
)

// ErrNotInstalled reports that a tool the harness runs (docker-registry or
// skopeo) is not installed.
var ErrNotInstalled = errors.New("not installed")

// BinaryEnv names the environment variable that overrides the registry
// binary's path.
const BinaryEnv = "CARGOHOLD_REGISTRY_BIN"

// registryNames are the names the distribution v2 binary goes by: Debian's
// package installs docker-registry, upstream builds install registry.
var registryNames = []string{"docker-registry", "registry"}

// registryHint tells a person how to get the registry binary.
const registryHint = "apt-get install docker-registry (distribution v2), or set " + BinaryEnv

// skopeoHint tells a person how to get skopeo.
const skopeoHint = "apt-get install skopeo"

// findRegistry returns the path of the registry binary.
func findRegistry() (string, error) {
	if p := os.Getenv(BinaryEnv); p != "" {
		path, err := exec.LookPath(p)
		if err != nil {
			return "", fmt.Errorf("registry: %s=%s: %w: %v", BinaryEnv, p, ErrNotInstalled, err)
		}
		return path, nil
	}
	for _, n := range registryNames {
		if path, err := exec.LookPath(n); err == nil {
			return path, nil
		}
	}
	return "", fmt.Errorf("registry: docker-registry: %w (%s)", ErrNotInstalled, registryHint)
}

// findSkopeo returns the path of the skopeo binary.
func findSkopeo() (string, error) {
	path, err := exec.LookPath("skopeo")
	if err != nil {
		return "", fmt.Errorf("registry: skopeo: %w (%s)", ErrNotInstalled, skopeoHint)
	}
	return path, nil
}

// inCI reports whether CI=true (or any value strconv.ParseBool reads as
// true) is set.
func inCI() bool {
	v, err := strconv.ParseBool(os.Getenv("CI"))
	return err == nil && v
}

// missing skips tb because tool is not installed, or fails it under CI.
func missing(tb testing.TB, tool, hint string, err error) {
	tb.Helper()
	if inCI() {
		tb.Fatalf("%s is required with CI=true but not usable: %v; install: %s", tool, err, hint)
	}
	tb.Skipf("SKIPPED — %s NOT INSTALLED (%v). This test did NOT run. Install: %s. Set CI=true to make this a failure.",
		tool, err, hint)
}
