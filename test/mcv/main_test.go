// Package mcv checks cargohold's images against MCV (GKM's cache image
// tool) both ways, with MCV's own binary built from its source
// (../shared/tools/mcv, GKM f0e65de4): images cargohold packs and pushes to
// a real registry extract with mcv -e (no size mismatch, the manifest MCV's
// own check reads, replay HITs at the dir the cache was built at), and
// images mcv -c builds (through its buildah library, into a private vfs
// storage, exported with skopeo) extract with cargohold -e (replay HITs
// after cargohold's rewrites).
package mcv

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"
)

var (
	bin    string // cargohold and cargohold-fs, built once
	mcvBin string // mcv and mcvcheck, built once from MCV's source
	mcvErr error  // why MCV could not be built
)

// mcvTags are BUILD.md's: no Debian -dev package needed.
const mcvTags = "containers_image_openpgp exclude_graphdriver_btrfs exclude_graphdriver_devicemapper"

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "cargohold-mcv-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	_, self, _, _ := runtime.Caller(0)
	here := filepath.Dir(self)
	root := filepath.Join(here, "..", "..")
	bin = filepath.Join(dir, "bin")
	cmd := exec.Command("go", "build", "-o", bin+"/", "./cmd/cargohold", "./cmd/cargohold-fs")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "mcv: build cargohold: %v\n%s", err, out)
		os.Exit(1)
	}
	mcvBin = filepath.Join(dir, "mcvbin")
	if mcvErr = buildMCV(filepath.Join(root, "..", "shared", "tools", "mcv"), filepath.Join(here, "testdata", "mcvcheck"), dir, mcvBin); mcvErr != nil {
		fmt.Fprintf(os.Stderr, "mcv: MCV not built, its tests skip (fail with CI=true): %v\n", mcvErr)
	}
	code := m.Run()
	os.RemoveAll(dir)
	if mcvWork != "" {
		os.RemoveAll(mcvWork)
	}
	os.Exit(code)
}

// buildMCV builds mcv and mcvcheck from a copy of MCV's source, with
// -trimpath so that the Go build cache serves every later build (the first
// one takes minutes, then a link).
func buildMCV(src, check, work, out string) error {
	if _, err := os.Stat(filepath.Join(src, "go.mod")); err != nil {
		return fmt.Errorf("MCV source: %w", err)
	}
	cp := filepath.Join(work, "mcv-src")
	if err := copyTree(src, cp); err != nil {
		return err
	}
	if err := copyTree(check, filepath.Join(cp, "cmd", "mcvcheck")); err != nil {
		return err
	}
	cmd := exec.Command("go", "build", "-trimpath", "-tags", mcvTags, "-o", out+"/", "./cmd", "./cmd/mcvcheck")
	cmd.Dir = cp
	cmd.Env = append(os.Environ(), "GOWORK=off")
	if o, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build: %v\n%s", err, o)
	}
	// ./cmd is MCV's main package.
	return os.Rename(filepath.Join(out, "cmd"), filepath.Join(out, "mcv"))
}

// needMCV skips t when MCV could not be built, or fails it under CI=true.
func needMCV(t *testing.T) {
	t.Helper()
	if mcvErr == nil {
		return
	}
	if ci, _ := strconv.ParseBool(os.Getenv("CI")); ci {
		t.Fatalf("MCV not built: %v", mcvErr)
	}
	t.Skipf("MCV not built: %v", mcvErr)
}

// result is what a command printed and how it ended.
type result struct {
	out string // stdout and stderr together
	err error
}

// run runs a command with env added to the environment, in dir ("" for the
// test's temp dir).
func run(t *testing.T, env []string, name string, args ...string) result {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Dir = t.TempDir()
	var b bytes.Buffer
	cmd.Stdout, cmd.Stderr = &b, &b
	err := cmd.Run()
	return result{b.String(), err}
}

// must is run that fails t when the command fails.
func must(t *testing.T, env []string, name string, args ...string) string {
	t.Helper()
	r := run(t, env, name, args...)
	if r.err != nil {
		t.Fatalf("%s %q: %v\n%s", filepath.Base(name), args, r.err, r.out)
	}
	return r.out
}

// copyTree copies the regular files and dirs of src to dst.
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(target, data, 0o644)
	})
}
