package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"cargohold/test/replay"
	"cargohold/triton"
	"cargohold/triton/gen"
)

// smallDisk mounts a tmpfs of size bytes (a real file system that fills
// up) and unmounts it when t ends.
func smallDisk(t *testing.T, size string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "disk")
	os.Mkdir(dir, 0o700)
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+size+",mode=0700"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("mount tmpfs: %v", err)
		}
		t.Skipf("SKIPPED: cannot mount a tmpfs (%v); needs root", err)
	}
	t.Cleanup(func() {
		for i := 0; i < 50; i++ { // the daemon may still hold files for a moment
			if err := syscall.Unmount(dir, 0); err == nil || errors.Is(err, syscall.EINVAL) {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		syscall.Unmount(dir, syscall.MNT_DETACH)
	})
	return dir
}

func freeBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var s syscall.Statfs_t
	if err := syscall.Statfs(dir, &s); err != nil {
		t.Fatal(err)
	}
	return int64(s.Bavail) * s.Bsize
}

// fill writes a file into dir until only leave bytes are free (0: until
// the file system is full).
func fill(t *testing.T, dir string, leave int64) string {
	t.Helper()
	p := filepath.Join(dir, fmt.Sprintf("filler-%d", time.Now().UnixNano()))
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for {
		free := freeBytes(t, dir)
		n := min(int64(len(buf)), free-leave)
		if n <= 0 {
			return p
		}
		if _, err := f.Write(buf[:n]); err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				return p
			}
			t.Fatal(err)
		}
	}
}

// Medium 12: the content store keeps --min-free free on its file system:
// fetching many KEYs evicts older ones instead of filling the disk, and a
// local compile on the same file system still has room.
func TestMountStoreKeepsFreeSpace(t *testing.T) {
	p, src, ref := servedImage(t)
	disk := smallDisk(t, "16m")
	state, mnt := filepath.Join(disk, "state"), filepath.Join(disk, "cache")
	const reserve = 2560 << 10
	m := startFS(t, mnt, state, "-i", ref, "--plain-http", "--gpu", "cuda:80:32", "--min-free", "2.5M")
	_ = p
	// About 1 MiB above the reserve: 60 KEY dirs (about 2.5 MiB) do not fit.
	fill(t, disk, 3584<<10)
	keys := keysOf(t, src, "cuda:80:32")
	hits := 0
	for _, k := range keys[:60] {
		if _, err := replay.Hit(m.mnt, k, src); err == nil {
			hits++
		}
	}
	free := freeBytes(t, disk)
	t.Logf("60 KEYs looked up: %d hits; %d KiB free (reserve %d KiB)", hits, free>>10, reserve>>10)
	if free < reserve-(256<<10) {
		t.Errorf("the store left %d KiB free, below the reserve of %d KiB", free>>10, reserve>>10)
	}
	if hits < 50 {
		t.Errorf("only %d of 60 lookups hit: the store should evict to make room, not refuse", hits)
	}
	fresh := t.TempDir()
	if _, err := gen.Generate(fresh, gen.Options{Kernels: 1, Seed: 11, Root: m.mnt, Scale: 0.5}); err != nil {
		t.Fatal(err)
	}
	if err := replay.Miss(m.mnt, keysOf(t, fresh, "cuda:80:32")[0], fresh); err != nil {
		t.Fatalf("local compile on the state dir's file system: %v", err)
	}
}

// Medium 12: when the state dir's file system is full, status.json and the
// log stop being written: that is counted and shown (metrics), not silent;
// once there is room again both are written again and say what was lost.
func TestMountFullDiskReported(t *testing.T) {
	store, _ := localImage(t)
	disk := smallDisk(t, "4m")
	state := filepath.Join(disk, "state")
	mnt := filepath.Join(t.TempDir(), "mnt")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	// Detached: the log is <state>/cargohold-fs.log, on the small disk.
	must(t, nil, "cargohold-fs", "-i", "life/cache:v1", "--store", store, "--gpu", "cuda:75:32",
		"--state-dir", state, "--metrics-addr", addr, "--min-free", "0", "-l", "debug", mnt)
	b, _ := os.ReadFile(filepath.Join(state, "status.json"))
	var st struct {
		PID int `json:"pid"`
	}
	json.Unmarshal(b, &st)
	t.Cleanup(func() {
		if st.PID > 0 {
			syscall.Kill(st.PID, syscall.SIGTERM)
		}
		for i := 0; i < 100 && isMounted(mnt); i++ {
			time.Sleep(50 * time.Millisecond)
		}
		if isMounted(mnt) {
			syscall.Unmount(mnt, syscall.MNT_DETACH)
		}
	})
	metric := func(name string) int64 {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, line := range strings.Split(string(body), "\n") {
			if v, ok := strings.CutPrefix(line, name+" "); ok {
				var n int64
				fmt.Sscan(v, &n)
				return n
			}
		}
		t.Fatalf("no metric %s in:\n%s", name, body)
		return 0
	}
	filler := fill(t, disk, 0)
	// Log lines (debug: each lookup of a KEY nobody has) fill what is left
	// of the log file's last page.
	for i := range 300 {
		k, _ := triton.KeyOf(fmt.Sprintf("%064x", i))
		os.Stat(filepath.Join(mnt, k))
	}
	time.Sleep(2500 * time.Millisecond)
	statusErrs, logErrs := metric("cargohold_status_write_errors_total"), metric("cargohold_log_write_errors_total")
	if statusErrs == 0 || logErrs == 0 {
		t.Fatalf("full state disk: status write errors %d, log write errors %d; want both counted", statusErrs, logErrs)
	}
	os.Remove(filler)
	time.Sleep(2500 * time.Millisecond)
	b, err = os.ReadFile(filepath.Join(state, "status.json"))
	if err != nil || !strings.Contains(string(b), `"status_write_errors"`) {
		t.Fatalf("status.json after room came back: %v\n%s", err, b)
	}
	logText, _ := os.ReadFile(filepath.Join(state, "cargohold-fs.log"))
	if !strings.Contains(string(logText), "no space left on device") || !strings.Contains(string(logText), "lines lost") {
		t.Fatalf("the log does not say why it and the status stopped:\n%s", logText)
	}
}
