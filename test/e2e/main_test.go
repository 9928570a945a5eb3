// Package e2e runs the built commands against a real registry process, real
// FUSE mounts and skopeo as an independent client.
package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
)

// bin holds the commands built once for the whole test binary.
var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "cargohold-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = dir
	_, self, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(self), "..", "..")
	cmd := exec.Command("go", "build", "-o", dir+"/", "./cmd/...", "./test/replay/cmd/replay")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: build: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	if bigCacheDir != "" {
		os.RemoveAll(bigCacheDir)
	}
	if zerosDir != "" {
		os.RemoveAll(zerosDir)
	}
	os.Exit(code)
}

// cmdResult is what a command printed and how it ended.
type cmdResult struct {
	stdout, stderr string
	err            error
}

// run runs one of the built commands with env added to the environment.
func run(t *testing.T, env []string, name string, args ...string) cmdResult {
	t.Helper()
	cmd := exec.Command(filepath.Join(bin, name), args...)
	cmd.Env = append(os.Environ(), env...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	return cmdResult{o.String(), e.String(), err}
}

// must is run that fails the test when the command fails.
func must(t *testing.T, env []string, name string, args ...string) cmdResult {
	t.Helper()
	r := run(t, env, name, args...)
	if r.err != nil {
		t.Fatalf("%s %v: %v\nstdout:\n%s\nstderr:\n%s", name, args, r.err, r.stdout, r.stderr)
	}
	return r
}
