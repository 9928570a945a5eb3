package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"cargohold/triton"
)

// otherUID is the unprivileged user the tests play an attacker (or a second
// user) with.
const otherUID, otherGID = 65534, 65534

// plantedKey is a launcher KEY dir an attacker plants in a state dir's upper.
func plantedKey(t *testing.T) string {
	t.Helper()
	k, err := triton.KeyOf(strings.Repeat("cd", 32))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// plant makes state/upper/KEY/__triton_launcher.so, owned by otherUID, as
// another user who made the state dir first would.
func plant(t *testing.T, state string) string {
	t.Helper()
	key := plantedKey(t)
	dir := filepath.Join(state, "upper", key)
	if err := os.MkdirAll(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	so := filepath.Join(dir, "__triton_launcher.so")
	if err := os.WriteFile(so, []byte("planted\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{state, filepath.Join(state, "upper"), dir, so} {
		if err := os.Chown(p, otherUID, otherGID); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, 0o777)
	}
	return filepath.Join(key, "__triton_launcher.so")
}

// fsAttempt is one cargohold-fs -f start that may be refused or may mount.
type fsAttempt struct {
	mnt     string
	exited  bool
	err     error
	log     string
	planted bool // the planted file was served through the mount
}

// tryMount runs cargohold-fs -f with exactly env as its environment and
// waits until it exits or mounts; a mount is checked for served (the
// planted file) and then stopped.
func tryMount(t *testing.T, env []string, served string, args ...string) fsAttempt {
	t.Helper()
	return tryMountAt(t, filepath.Join(t.TempDir(), "mnt"), env, served, args...)
}

// tryMountAt is tryMount on mountpoint mnt.
func tryMountAt(t *testing.T, mnt string, env []string, served string, args ...string) fsAttempt {
	t.Helper()
	a := fsAttempt{mnt: mnt}
	cmd := exec.Command(filepath.Join(bin, "cargohold-fs"), append(append([]string{"-f"}, args...), a.mnt)...)
	cmd.Env = env
	var log strings.Builder
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		select {
		case err := <-done:
			a.exited, a.err, a.log = true, err, log.String()
			if isMounted(a.mnt) {
				syscall.Unmount(a.mnt, syscall.MNT_DETACH)
			}
			return a
		default:
		}
		if isMounted(a.mnt) || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if served != "" {
		if b, err := os.ReadFile(filepath.Join(a.mnt, served)); err == nil && strings.Contains(string(b), "planted") {
			a.planted = true
		}
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case a.err = <-done:
	case <-time.After(15 * time.Second):
		cmd.Process.Kill()
		a.err = <-done
	}
	if isMounted(a.mnt) {
		syscall.Unmount(a.mnt, syscall.MNT_DETACH)
	}
	a.log = log.String()
	return a
}

// envWithout is the environment without the named variables, plus add.
func envWithout(drop []string, add ...string) []string {
	var out []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		keep := true
		for _, d := range drop {
			if k == d {
				keep = false
			}
		}
		if keep {
			out = append(out, kv)
		}
	}
	return append(out, add...)
}

// High 1: with $HOME unset, the state dir must not fall back to a shared,
// predictable dir another user can make first: a launcher planted there is
// never served, and a log symlinked to a victim file is never written.
func TestStateDirNoSharedFallback(t *testing.T) {
	store, _ := localImage(t)
	tmp := t.TempDir()
	os.Chmod(tmp, os.ModeSticky|0o777) // a shared temp dir, as /tmp is
	// Another user made TMPDIR/cargohold-fs first.
	state := filepath.Join(tmp, "cargohold-fs")
	served := plant(t, state)
	victim := filepath.Join(t.TempDir(), "victim")
	os.WriteFile(victim, []byte("victim\n"), 0o644)
	os.Symlink(victim, filepath.Join(state, "cargohold-fs.log"))
	os.Symlink(victim, filepath.Join(state, "status.json.tmp"))
	os.Lchown(filepath.Join(state, "cargohold-fs.log"), otherUID, otherGID)
	os.Lchown(filepath.Join(state, "status.json.tmp"), otherUID, otherGID)

	env := envWithout([]string{"HOME", "XDG_CACHE_HOME", "XDG_RUNTIME_DIR", "XDG_DATA_HOME", "TRITON_CACHE_DIR"}, "TMPDIR="+tmp)
	a := tryMount(t, env, served, "-i", "life/cache:v1", "--store", store, "--gpu", "cuda:75:32")
	if a.planted {
		t.Fatalf("a launcher planted by another user in %s was served through the mount\n%s", state, a.log)
	}
	if b, _ := os.ReadFile(victim); string(b) != "victim\n" {
		t.Fatalf("a file linked from the shared dir was written: %q", b)
	}
	if _, err := os.Stat("/run/user/0"); err != nil {
		// No per-user runtime dir: no default at all; the refusal says what to do.
		if !a.exited || a.err == nil || !strings.Contains(a.log, "--state-dir") {
			t.Fatalf("without $HOME or a runtime dir: want a refusal naming --state-dir, got exited=%v err=%v\n%s", a.exited, a.err, a.log)
		}
	}
}

// High 1: with $HOME unset and a per-user runtime dir, the state goes there.
func TestStateDirRuntimeFallback(t *testing.T) {
	store, _ := localImage(t)
	rt := t.TempDir()
	os.Chmod(rt, 0o700) // as a runtime dir is
	env := envWithout([]string{"HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME", "TRITON_CACHE_DIR"}, "XDG_RUNTIME_DIR="+rt, "TMPDIR="+t.TempDir())
	a := tryMount(t, env, "", "-i", "life/cache:v1", "--store", store, "--gpu", "cuda:75:32")
	if a.exited {
		t.Fatalf("with a runtime dir the mount should start: %v\n%s", a.err, a.log)
	}
	if _, err := os.Stat(filepath.Join(rt, "cargohold", "fs", "status.json")); err != nil {
		t.Fatalf("state not in the runtime dir: %v\n%s", err, a.log)
	}
}

// High 1: an explicit state dir that another user owns or may write, or
// whose files are symlinks, is refused before anything is mounted or
// written, naming the problem.
func TestStateDirUnsafeRefused(t *testing.T) {
	store, _ := localImage(t)
	args := []string{"-i", "life/cache:v1", "--store", store, "--gpu", "cuda:75:32"}
	victim := filepath.Join(t.TempDir(), "victim")

	cases := []struct {
		name, want string
		setup      func(state string) string // returns the planted file to look for
	}{
		{"owned by another user", "owned by uid 65534", func(state string) string {
			return plant(t, state)
		}},
		{"group writable", "writable by group or others", func(state string) string {
			os.Chmod(state, 0o770)
			return ""
		}},
		{"status file a symlink", "symlink", func(state string) string {
			os.Symlink(victim, filepath.Join(state, "status.json.tmp"))
			return ""
		}},
		{"log a symlink", "symlink", func(state string) string {
			os.Symlink(victim, filepath.Join(state, "cargohold-fs.log"))
			return ""
		}},
		{"upper owned by another user", "owned by uid 65534", func(state string) string {
			served := plant(t, state)
			os.Chown(state, 0, 0)
			os.Chmod(state, 0o700)
			return served
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			os.WriteFile(victim, []byte("victim\n"), 0o644)
			state := filepath.Join(t.TempDir(), "state")
			os.Mkdir(state, 0o700)
			served := c.setup(state)
			a := tryMount(t, os.Environ(), served, append(args, "--state-dir", state)...)
			if a.planted {
				t.Fatalf("planted launcher served\n%s", a.log)
			}
			if b, _ := os.ReadFile(victim); string(b) != "victim\n" {
				t.Fatalf("symlinked victim file written: %q", b)
			}
			if !a.exited || a.err == nil || !strings.Contains(a.log, c.want) {
				t.Fatalf("want a refusal naming %q, got exited=%v err=%v\n%s", c.want, a.exited, a.err, a.log)
			}
		})
	}
	// The daemon's parent opens the log: a symlinked log is refused there too.
	state := filepath.Join(t.TempDir(), "state")
	os.Mkdir(state, 0o700)
	os.WriteFile(victim, []byte("victim\n"), 0o644)
	os.Symlink(victim, filepath.Join(state, "cargohold-fs.log"))
	mnt := filepath.Join(t.TempDir(), "mnt")
	t.Cleanup(func() {
		if isMounted(mnt) { // the detached daemon exits once its mount is gone
			syscall.Unmount(mnt, syscall.MNT_DETACH)
		}
	})
	r := run(t, nil, "cargohold-fs", append(args, "--state-dir", state, mnt)...)
	if r.err == nil || !strings.Contains(r.stderr, "symlink") {
		t.Fatalf("detach with a symlinked log: want a refusal, got %v\n%s", r.err, r.stderr)
	}
	if b, _ := os.ReadFile(victim); string(b) != "victim\n" {
		t.Fatalf("symlinked victim file written by the detaching parent: %q", b)
	}
}

// High 1, the CLI's defaults: with $HOME unset and no runtime dir,
// `cargohold fetch` and `cargohold -c` never fall back to the current dir
// (or any shared one); they say what to set instead.
func TestCLIDefaultsNoFallback(t *testing.T) {
	if _, err := os.Stat("/run/user/0"); err == nil {
		t.Skip("this host has a runtime dir for root; the fallback would use it")
	}
	store, src := localImage(t)
	cwd := t.TempDir()
	os.Chmod(cwd, os.ModeSticky|0o777) // a shared dir the command happens to run in
	env := envWithout([]string{"HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_RUNTIME_DIR", "CARGOHOLD_STORE"}, "TMPDIR="+t.TempDir())
	runIn := func(args ...string) (string, error) {
		cmd := exec.Command(filepath.Join(bin, "cargohold"), args...)
		cmd.Env, cmd.Dir = env, cwd
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := runIn("fetch", "-i", "oci:"+store+":life/cache:v1", "--gpu", "cuda:75:32", vectorAddKey)
	if err == nil || !strings.Contains(out, "--state-dir") {
		t.Errorf("fetch without $HOME: want a refusal naming --state-dir, got %v\n%s", err, out)
	}
	out, err = runIn("-c", "-i", "life/cache:v2", "-d", src)
	if err == nil || !strings.Contains(out, "CARGOHOLD_STORE") {
		t.Errorf("create without $HOME: want a refusal naming CARGOHOLD_STORE, got %v\n%s", err, out)
	}
	if des, _ := os.ReadDir(cwd); len(des) != 0 {
		t.Errorf("state or images written into the current dir: %v", des)
	}
}
