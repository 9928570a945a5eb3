package mcv

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"cargohold/fs"
	"cargohold/kind"
	"cargohold/test/registry"
)

// TestMCVMounted: vLLM images mcv -c builds (gzip layers, the build
// hosts' absolute paths inside), pushed to a real registry, mounted with
// cargohold-fs --cache vllm as $VLLM_CACHE_ROOT: vLLM's hit replays on the
// mount (after the rewrites the mount makes where it serves).
func TestMCVMounted(t *testing.T) {
	needMCV(t)
	requireFUSE(t)
	reg := registry.Start(t)
	for _, c := range kases(t) {
		if c.k != kind.VLLM {
			continue
		}
		t.Run(c.name, func(t *testing.T) {
			ref := reg.Ref("mcv/" + c.name + ":v1")
			registry.Skopeo(t, "copy", "--dest-tls-verify=false", mcvImage(t, c), "docker://"+ref)
			mnt := mountFS(t, "-i", ref, "--cache", "vllm", "--gpu", c.gpu.String(), "--prefetch", "none")
			replayHit(t, c.k, mnt, c.src)
		})
	}
}

// requireFUSE skips where /dev/fuse is absent, and fails under CI=true.
func requireFUSE(t *testing.T) {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("/dev/fuse missing in CI: %v", err)
		}
		t.Skipf("SKIPPED: no /dev/fuse: %v", err)
	}
}

// mountFS runs cargohold-fs in the foreground on a fresh mountpoint until
// the test ends, and returns the mountpoint once it is mounted with its
// index ready.
func mountFS(t *testing.T, args ...string) string {
	t.Helper()
	mnt, state := filepath.Join(t.TempDir(), "mnt"), t.TempDir()
	var log strings.Builder
	cmd := exec.Command(filepath.Join(bin, "cargohold-fs"), append(append([]string{"-f", "--state-dir", state}, args...), mnt)...)
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			t.Errorf("cargohold-fs did not exit on SIGTERM")
		}
		if _, ok := fs.MountType(mnt); ok {
			syscall.Unmount(mnt, syscall.MNT_DETACH)
		}
		if t.Failed() {
			t.Logf("cargohold-fs log:\n%s", log.String())
		}
	})
	for deadline := time.Now().Add(30 * time.Second); ; {
		var s struct {
			PID     int  `json:"pid"`
			Mounted bool `json:"mounted"`
			Ready   bool `json:"index_ready"`
		}
		if b, err := os.ReadFile(filepath.Join(state, "status.json")); err == nil && json.Unmarshal(b, &s) == nil &&
			s.PID == cmd.Process.Pid && s.Mounted && s.Ready {
			if _, ok := fs.MountType(mnt); ok {
				return mnt
			}
		}
		select {
		case err := <-done:
			done <- err
			t.Fatalf("cargohold-fs exited: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("cargohold-fs not mounted with an index within 30s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
