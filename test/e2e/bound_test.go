package e2e

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"cargohold/test/proxy"
	"cargohold/test/registry"
)

// zerosSize is the file of zeros in zerosLayout's KEY dir: 1 GiB, about
// 1 MiB in the layer.
const zerosSize = 1 << 30

// zerosDir is zerosLayout's dir once made; TestMain removes it.
var zerosDir string

// zerosLayout packs, once per test binary, the vector-add KEY dir plus a
// 1 GiB file of zeros into an OCI layout (oci:DIR:zeros): a normal image
// whose labels fit cuda:75.
var zerosLayout = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "cargohold-e2e-zeros-")
	if err != nil {
		return "", err
	}
	zerosDir = dir
	src := filepath.Join("..", "..", "..", "shared", "testdata", "triton-cache", "vector-add-cache", vectorAddKey)
	kd := filepath.Join(dir, "cache", vectorAddKey)
	if err := os.CopyFS(kd, os.DirFS(src)); err != nil {
		return "", err
	}
	f, err := os.Create(filepath.Join(kd, "zeros.bin"))
	if err != nil {
		return "", err
	}
	err = f.Truncate(zerosSize)
	f.Close()
	if err != nil {
		return "", err
	}
	out, err := exec.Command(filepath.Join(bin, "cargohold"), "-c", "-i", "oci:"+filepath.Join(dir, "layout")+":zeros",
		"-d", filepath.Join(dir, "cache")).CombinedOutput()
	if err != nil {
		return "", &exec.ExitError{Stderr: out}
	}
	return filepath.Join(dir, "layout"), nil
})

// servedZeros pushes the zeros image to a fresh registry (skopeo, as it
// is) behind a proxy and returns the proxy and the reference through it.
func servedZeros(t *testing.T) (*proxy.Proxy, string) {
	t.Helper()
	layout, err := zerosLayout()
	if err != nil {
		t.Fatalf("zeros image: %v", err)
	}
	reg := registry.Start(t)
	p := proxy.New(reg.URL)
	t.Cleanup(func() { p.Close() })
	registry.Skopeo(t, "copy", "--dest-tls-verify=false", "oci:"+layout+":zeros", "docker://"+reg.Addr+"/ml/zeros:v1")
	return p, p.Addr + "/ml/zeros:v1"
}

// peakRSS is a process's peak resident memory (VmHWM), in bytes.
func peakRSS(t *testing.T, pid int) int64 {
	t.Helper()
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no VmHWM in /proc/%d/status", pid)
	return 0
}

// lsParallel lists dir from n goroutines at once, as n processes looking
// the KEY up would.
func lsParallel(t *testing.T, dir string, n int) [][]os.DirEntry {
	t.Helper()
	out := make([][]os.DirEntry, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { out[i], errs[i] = os.ReadDir(dir) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatalf("ls %s: %v", dir, err)
		}
	}
	return out
}

const maxRSS = 200 << 20

// TestMountLargeFileBoundedMemory: a KEY dir holding a 1 GiB file of zeros
// (a 1 MiB layer) costs the daemon little memory: four parallel lookups
// with --cache-size 100M are refused before anything is read (the dir does
// not fit: a miss, its cause recorded); with room in the store they stream
// the file into it and serve it.
func TestMountLargeFileBoundedMemory(t *testing.T) {
	p, ref := servedZeros(t)
	args := []string{"-i", ref, "--plain-http", "--gpu", "cuda:75:32", "--prefetch", "none", "--fetch-timeout", "60s"}
	m := startFS(t, "", "", append(args, "--cache-size", "100M")...)
	p.Reset()
	for _, des := range lsParallel(t, filepath.Join(m.mnt, vectorAddKey), 4) {
		for _, de := range des {
			if de.Name() == "zeros.bin" {
				t.Errorf("a KEY dir larger than the store shows its files")
			}
		}
	}
	rss := peakRSS(t, m.cmd.Process.Pid)
	t.Logf("--cache-size 100M: peak RSS %d MiB", rss>>20)
	if rss > maxRSS {
		t.Errorf("four lookups of a KEY dir with a 1 GiB file, --cache-size 100M: peak RSS %d MiB", rss>>20)
	}
	if n := p.Count(func(r proxy.Req) bool { return r.IsBlob() }); n != 0 {
		t.Errorf("%d blob reads for a KEY dir that cannot fit the store", n)
	}
	if s := m.statusAfter(t); s.Errors == 0 || !strings.Contains(s.LastError, "full") {
		t.Errorf("status %+v: want the refusal recorded with its cause", s)
	}
	m.stop(t)

	m2 := startFS(t, "", "", append(args, "--cache-size", "2G")...)
	for _, des := range lsParallel(t, filepath.Join(m2.mnt, vectorAddKey), 4) {
		found := false
		for _, de := range des {
			if de.Name() == "zeros.bin" {
				info, err := de.Info()
				if err != nil || info.Size() != zerosSize {
					t.Fatalf("zeros.bin: %v, %v", info, err)
				}
				found = true
			}
		}
		if !found {
			t.Fatalf("zeros.bin not served with room in the store")
		}
	}
	f, err := os.Open(filepath.Join(m2.mnt, vectorAddKey, "zeros.bin"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for _, off := range []int64{0, zerosSize / 2, zerosSize - 1<<20} {
		if _, err := f.ReadAt(buf, off); err != nil {
			t.Fatal(err)
		}
		for _, b := range buf {
			if b != 0 {
				t.Fatalf("zeros.bin at %d: a byte that is not zero", off)
			}
		}
	}
	rss = peakRSS(t, m2.cmd.Process.Pid)
	t.Logf("--cache-size 2G: peak RSS %d MiB", rss>>20)
	if rss > maxRSS {
		t.Errorf("four lookups of a KEY dir with a 1 GiB file: peak RSS %d MiB", rss>>20)
	}
}

// TestExtractLargeFileBoundedMemory: cargohold -e of the same image streams
// the 1 GiB file to disk.
func TestExtractLargeFileBoundedMemory(t *testing.T) {
	_, ref := servedZeros(t)
	out := t.TempDir()
	cmd := exec.Command(filepath.Join(bin, "cargohold"), "-e", "-i", ref, "--plain-http", "--gpu", "cuda:75:32", "-d", out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cargohold -e: %v\n%s", err, b)
	}
	rss := int64(cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss) << 10
	t.Logf("cargohold -e: peak RSS %d MiB", rss>>20)
	if rss > maxRSS {
		t.Errorf("cargohold -e of a KEY dir with a 1 GiB file: peak RSS %d MiB", rss>>20)
	}
	info, err := os.Stat(filepath.Join(out, vectorAddKey, "zeros.bin"))
	if err != nil || info.Size() != zerosSize {
		t.Fatalf("extracted zeros.bin: %v, %v", info, err)
	}
}
