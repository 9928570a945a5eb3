package e2e

import (
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"cargohold/test/cachetest"
	"cargohold/test/replay"
)

// localImage packs the vector-add cache into a fresh local store and
// returns the store.
func localImage(t *testing.T) (store, src string) {
	t.Helper()
	src = cachetest.Testdata(t, "vector-add-cache")
	store = t.TempDir()
	must(t, []string{"CARGOHOLD_STORE=" + store}, "cargohold", "-c", "-i", "life/cache:v1", "-d", src)
	return store, src
}

// A mount left by a killed process (its FUSE connection gone) is detected
// and replaced at the next start.
func TestMountStaleReplaced(t *testing.T) {
	store, src := localImage(t)
	mnt := filepath.Join(t.TempDir(), "mnt")
	state := t.TempDir()
	args := []string{"-i", "life/cache:v1", "--store", store, "--gpu", "cuda:75:32"}
	m := startFS(t, mnt, state, args...)
	m.cmd.Process.Kill()
	<-m.done
	m.done <- nil
	// statfs always asks the mount (a stat may be answered from the
	// kernel's cache of the root).
	var st syscall.Statfs_t
	if err := syscall.Statfs(mnt, &st); !errors.Is(err, syscall.ENOTCONN) || !isMounted(mnt) {
		t.Fatalf("after SIGKILL want a stale mount (ENOTCONN), got %v", err)
	}
	m2 := startFS(t, mnt, state, args...)
	if _, err := replay.Hit(m2.mnt, vectorAddKey, src); err != nil {
		t.Fatalf("hit on the replacing mount: %v", err)
	}
}

// Without -f the command returns once the mount is up, leaving the mount
// to a detached process; --metrics-addr serves Prometheus text.
func TestMountDaemonAndMetrics(t *testing.T) {
	store, src := localImage(t)
	mnt := filepath.Join(t.TempDir(), "mnt")
	state := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	r := must(t, nil, "cargohold-fs", "-i", "life/cache:v1", "--store", store, "--gpu", "cuda:75:32",
		"--state-dir", state, "--metrics-addr", addr, mnt)
	if !strings.Contains(r.stderr, "mounted (pid") || !isMounted(mnt) {
		t.Fatalf("detach: mounted=%v\n%s", isMounted(mnt), r.stderr)
	}
	var pid int
	t.Cleanup(func() {
		if pid > 0 {
			syscall.Kill(pid, syscall.SIGTERM)
		}
		for i := 0; i < 100 && isMounted(mnt); i++ {
			time.Sleep(50 * time.Millisecond)
		}
		if isMounted(mnt) {
			syscall.Unmount(mnt, syscall.MNT_DETACH)
			t.Errorf("daemon did not unmount on SIGTERM")
		}
	})
	b, err := os.ReadFile(filepath.Join(state, "status.json"))
	if err != nil {
		t.Fatal(err)
	}
	var s struct {
		PID int `json:"pid"`
	}
	json.Unmarshal(b, &s)
	pid = s.PID
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := replay.Hit(mnt, vectorAddKey, src); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("hit through the daemon's mount: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "cargohold_fs_hits_total 1") || !strings.Contains(string(body), "cargohold_fetches_total 1") ||
		!strings.Contains(string(body), `cargohold_fuse_requests_total{op="OPEN"} `) {
		t.Fatalf("metrics:\n%s", body)
	}
	time.Sleep(1200 * time.Millisecond) // status.json is rewritten once a second
	st := must(t, nil, "cargohold-fs", "status", "--state-dir", state)
	if !strings.Contains(st.stdout, `"hits": 1`) {
		t.Fatalf("status:\n%s", st.stdout)
	}
}

// userMountSetup skips (or fails in CI) where unprivileged mounts cannot
// work, and returns a local image store, its source cache and a work dir
// holding mnt/ and state/ owned by uid 65534, everything readable by it.
func userMountSetup(t *testing.T) (store, src, work string) {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("needs root to switch to an unprivileged user")
	}
	if _, err := exec.LookPath("fusermount3"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("fusermount3 missing in CI: %v", err)
		}
		t.Skipf("SKIPPED: fusermount3 missing: %v", err)
	}
	if fi, err := os.Stat("/dev/fuse"); err != nil || fi.Mode().Perm()&0o006 != 0o006 {
		msg := "SKIPPED: /dev/fuse is not open to other users (distributions make it 0666; make test does): unprivileged mounts cannot work here"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	store, src = localImage(t)
	work, err := os.MkdirTemp("", "cargohold-user-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(work) })
	const uid, gid = 65534, 65534
	for _, d := range []string{work, filepath.Join(work, "mnt"), filepath.Join(work, "state")} {
		os.MkdirAll(d, 0o755)
		os.Chown(d, uid, gid)
	}
	// The store and binaries must be readable by that user.
	os.Chmod(work, 0o755)
	exec.Command("chmod", "-R", "a+rX", store, bin).Run()
	// t.TempDir makes its dirs 0700; open them, but never touch the
	// system temp dir itself (sticky 1777).
	for p := filepath.Dir(store); strings.HasPrefix(p, os.TempDir()+"/"); p = filepath.Dir(p) {
		os.Chmod(p, 0o755)
	}
	return store, src, work
}

// A normal user mounts through the setuid fusermount3.
func TestMountAsUser(t *testing.T) {
	store, src, work := userMountSetup(t)
	const uid, gid = 65534, 65534
	mnt := filepath.Join(work, "mnt")
	cmd := exec.Command(filepath.Join(bin, "cargohold-fs"), "-f", "-i", "life/cache:v1", "--store", store,
		"--gpu", "cuda:75:32", "--state-dir", filepath.Join(work, "state"), mnt)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid}}
	cmd.Env = append(os.Environ(), "HOME="+work)
	var log strings.Builder
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
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			t.Error("user mount did not exit on SIGTERM")
		}
		if isMounted(mnt) {
			syscall.Unmount(mnt, syscall.MNT_DETACH)
			t.Error("user mount left behind")
		}
	})
	deadline := time.Now().Add(15 * time.Second)
	for !isMounted(mnt) {
		select {
		case err := <-done:
			t.Fatalf("cargohold-fs as uid %d exited: %v\n%s", uid, err, log.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("not mounted as uid %d\n%s", uid, log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Root reads through it too: default_permissions, and the files are
	// world-readable. (Without allow_other only the mounting user may; root
	// is let through by the kernel only with allow_other, so read as the user.)
	hit := exec.Command(filepath.Join(bin, "replay"), "hit", "--root", mnt, "--expect", src, vectorAddKey)
	hit.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid}}
	if out, err := hit.CombinedOutput(); err != nil {
		t.Fatalf("hit as uid %d: %v\n%s\nmount log:\n%s", uid, err, out, log.String())
	}
}

// A busy --metrics-addr fails the mount instead of leaving it without the
// metrics asked for.
func TestMountMetricsAddrBusy(t *testing.T) {
	store, _ := localImage(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	mnt := filepath.Join(t.TempDir(), "mnt")
	r := run(t, nil, "cargohold-fs", "-f", "-i", "life/cache:v1", "--store", store, "--gpu", "cuda:75:32",
		"--state-dir", t.TempDir(), "--metrics-addr", ln.Addr().String(), mnt)
	if r.err == nil || !strings.Contains(r.stderr, "--metrics-addr") {
		t.Fatalf("want a refusal naming --metrics-addr, got %v\n%s", r.err, r.stderr)
	}
	if isMounted(mnt) {
		syscall.Unmount(mnt, syscall.MNT_DETACH)
		t.Fatal("mounted despite the busy metrics address")
	}
}

// Low: when fusermount3 refuses a mount, the error says why (its own
// message), not only "fusermount exited with code 256": also from the
// detaching parent, whose stderr is all a user sees.
func TestMountFusermountCause(t *testing.T) {
	if b, _ := os.ReadFile("/etc/fuse.conf"); strings.Contains("\n"+string(b), "\nuser_allow_other") {
		t.Skip("user_allow_other is set in /etc/fuse.conf: fusermount3 would allow the mount this test needs refused")
	}
	store, _, work := userMountSetup(t)
	mnt := filepath.Join(work, "mnt")
	cmd := exec.Command(filepath.Join(bin, "cargohold-fs"), "-i", "life/cache:v1", "--store", store,
		"--gpu", "cuda:75:32", "--state-dir", filepath.Join(work, "state"), "--allow-other", mnt)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	cmd.Env = append(os.Environ(), "HOME="+work)
	out, err := cmd.CombinedOutput()
	if isMounted(mnt) {
		syscall.Unmount(mnt, syscall.MNT_DETACH)
		t.Fatalf("mounted with allow_other although /etc/fuse.conf does not allow it:\n%s", out)
	}
	if err == nil || !strings.Contains(string(out), "user_allow_other") {
		t.Fatalf("want the refusal to name fusermount3's cause (user_allow_other), got %v:\n%s", err, out)
	}
}
