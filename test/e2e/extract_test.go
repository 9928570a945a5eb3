package e2e

import (
	"bytes"
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Medium 6: `cargohold -e` on a registry whose blob body stops mid-way
// fails within about --timeout, saying the download stalled, and installs
// nothing half-read.
func TestExtractStalledBody(t *testing.T) {
	p, _, ref := servedImage(t)
	t.Run("layer", func(t *testing.T) {
		// The manifest and config (128 KiB) come whole; the 4 MiB layer stops.
		p.SetStallBody(1 << 20)
		extractStalled(t, ref)
	})
	t.Run("config", func(t *testing.T) {
		// The manifest (600 bytes) comes whole; the config stops.
		p.SetStallBody(10 << 10)
		extractStalled(t, ref)
	})
}

func extractStalled(t *testing.T, ref string) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "cargohold"), "-e", "-i", ref, "--plain-http",
		"--timeout", "2s", "-d", dir, "--gpu", "cuda:80:32")
	cmd.Env = append(cmd.Environ(), "CARGOHOLD_STORE="+t.TempDir())
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	took := time.Since(start)
	if ctx.Err() != nil {
		t.Fatalf("cargohold -e still running after %v on a stalled body (--timeout 2s)\n%s", took, out.String())
	}
	if err == nil {
		t.Fatalf("cargohold -e succeeded on a stalled body\n%s", out.String())
	}
	if !strings.Contains(out.String(), "stalled") {
		t.Errorf("the error does not say the download stalled:\n%s", out.String())
	}
	if took > 30*time.Second {
		t.Errorf("took %v with --timeout 2s", took)
	}
	if n, _ := filepath.Glob(filepath.Join(dir, "*")); len(n) != 0 {
		t.Errorf("installed %d entries from a stalled download", len(n))
	}
	t.Logf("failed after %v: %s", took, strings.TrimSpace(out.String()))
}
