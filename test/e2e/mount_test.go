package e2e

import (
	"bufio"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"cargohold/fs"
	"cargohold/test/proxy"
	"cargohold/test/registry"
	"cargohold/test/replay"
	"cargohold/triton"
	"cargohold/triton/gen"
)

const vectorAddKey = "5W7KJQDTJCL4UGPMKKCS7TEEPZKSWOY4774SZQ6674FWSXG5MNXQ"

// bigCacheDir is bigCache's dir once made; TestMain removes it.
var bigCacheDir string

// bigCache is the vector-add cache plus 500 generated kernels (cuda:80) and a
// launcher, built once per test binary.
var bigCache = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "cargohold-e2e-cache-")
	if err != nil {
		return "", err
	}
	bigCacheDir = dir
	if _, err := gen.Generate(dir, gen.Options{Kernels: 500, Launchers: 1, Seed: 7, Scale: 0.25}); err != nil {
		return "", err
	}
	src := filepath.Join("..", "..", "..", "shared", "testdata", "triton-cache", "vector-add-cache", vectorAddKey)
	if out, err := exec.Command("cp", "-r", src, dir).CombinedOutput(); err != nil {
		return "", errors.New(string(out))
	}
	return dir, os.Chmod(filepath.Join(dir, vectorAddKey), 0o755)
})

func cacheDir(t *testing.T) string {
	t.Helper()
	d, err := bigCache()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// keysOf lists the kernel KEYs of a cache dir for one target.
func keysOf(t *testing.T, dir, target string) []string {
	t.Helper()
	es, _, err := triton.Scan(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range es {
		for _, tg := range e.Targets() {
			if tg.String() == target {
				out = append(out, e.Key)
			}
		}
	}
	return out
}

// fsMount is one running cargohold-fs.
type fsMount struct {
	mnt, state string
	cmd        *exec.Cmd
	log        *strings.Builder
	done       chan error
}

// startFS runs cargohold-fs in the foreground on a fresh mountpoint (or mnt
// when given) and waits until it is mounted and its index is ready.
func startFS(t *testing.T, mnt, state string, args ...string) *fsMount {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("/dev/fuse missing in CI: %v", err)
		}
		t.Skipf("SKIPPED: no /dev/fuse: %v", err)
	}
	if mnt == "" {
		mnt = filepath.Join(t.TempDir(), "mnt")
	}
	if state == "" {
		state = t.TempDir()
	}
	m := &fsMount{mnt: mnt, state: state, log: &strings.Builder{}, done: make(chan error, 1)}
	all := append([]string{"-f", "--state-dir", state, "-l", "debug"}, args...)
	m.cmd = exec.Command(filepath.Join(bin, "cargohold-fs"), append(all, mnt)...)
	pr, pw, _ := os.Pipe()
	m.cmd.Stdout, m.cmd.Stderr = pw, pw
	if err := m.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	var mu sync.Mutex
	logText := func() string {
		mu.Lock()
		defer mu.Unlock()
		return m.log.String()
	}
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			mu.Lock()
			m.log.WriteString(sc.Text() + "\n")
			mu.Unlock()
		}
	}()
	go func() { m.done <- m.cmd.Wait() }()
	t.Cleanup(func() {
		m.stop(t)
		if t.Failed() {
			t.Logf("cargohold-fs log:\n%s", logText())
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		if s, err := m.status(); err == nil && s.PID == m.cmd.Process.Pid && s.Mounted && s.Ready && isMounted(mnt) {
			return m
		}
		select {
		case err := <-m.done:
			m.done <- err
			t.Fatalf("cargohold-fs exited: %v\n%s", err, logText())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("cargohold-fs not mounted with an index within 20s\n%s", logText())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop sends SIGTERM and checks the mount is gone.
func (m *fsMount) stop(t *testing.T) {
	if m.cmd.ProcessState != nil {
		return
	}
	m.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-m.done:
		m.done <- err
		if err != nil {
			t.Errorf("cargohold-fs exit: %v", err)
		}
	case <-time.After(15 * time.Second):
		m.cmd.Process.Kill()
		t.Errorf("cargohold-fs did not exit on SIGTERM")
	}
	if isMounted(m.mnt) {
		t.Errorf("%s still mounted after SIGTERM", m.mnt)
		syscall.Unmount(m.mnt, syscall.MNT_DETACH)
	}
}

type fsStatus struct {
	PID       int               `json:"pid"`
	Mounted   bool              `json:"mounted"`
	Ready     bool              `json:"index_ready"`
	Keys      int               `json:"indexed_keys"`
	Hits      int64             `json:"hits"`
	Misses    int64             `json:"misses"`
	Fetches   int64             `json:"fetches"`
	Errors    int64             `json:"errors"`
	LastError string            `json:"last_error"`
	Kind      string            `json:"cache"`
	NotServed map[string]string `json:"not_served"`
	Engine    struct {
		PrefetchRanges  int64 `json:"prefetch_ranges"`
		PrefetchDirs    int64 `json:"prefetch_dirs"`
		PrefetchSkipped int64 `json:"prefetch_skipped"`
	} `json:"engine"`
	Store struct {
		Bytes     int64  `json:"bytes"`
		Pinned    int    `json:"pinned"`
		Evictions uint64 `json:"evictions"`
		Limit     int64  `json:"limit"`
	} `json:"store"`
}

func (m *fsMount) status() (fsStatus, error) {
	var s fsStatus
	b, err := os.ReadFile(filepath.Join(m.state, "status.json"))
	if err == nil {
		err = json.Unmarshal(b, &s)
	}
	return s, err
}

// statusAfter waits for the next status write (once a second) and reads it.
func (m *fsMount) statusAfter(t *testing.T) fsStatus {
	t.Helper()
	time.Sleep(1200 * time.Millisecond)
	s, err := m.status()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func isMounted(mnt string) bool {
	_, ok := fs.MountType(mnt)
	return ok
}

// servedImage starts a real registry behind a counting proxy and pushes
// the big test cache to it; it returns the proxy, the cache dir and the
// image reference as seen through the proxy.
func servedImage(t *testing.T) (*proxy.Proxy, string, string) {
	t.Helper()
	reg := registry.Start(t)
	p := proxy.New(reg.URL)
	t.Cleanup(func() { p.Close() })
	src := cacheDir(t)
	env := []string{"CARGOHOLD_STORE=" + t.TempDir()}
	must(t, env, "cargohold", "-c", "-i", reg.Addr+"/ml/cache:v1", "-d", src, "--push", "--plain-http")
	return p, src, p.Addr + "/ml/cache:v1"
}

func blobGets(p *proxy.Proxy) int {
	return p.Count(func(r proxy.Req) bool { return r.IsBlob() && r.Method == "GET" })
}

func TestMountColdHit(t *testing.T) {
	p, src, ref := servedImage(t)

	m := startFS(t, "", "", "-i", ref, "--plain-http", "--gpu", "cuda:75:32", "--prefetch", "none")
	indexReqs := p.Count(nil)
	if blobs := blobGets(p); blobs > 3 {
		t.Errorf("index load took %d blob GETs (config, footer, TOC: want <= 3)", blobs)
	}
	p.Reset()
	res, err := replay.Hit(m.mnt, vectorAddKey, src)
	if err != nil {
		t.Fatalf("replay hit: %v (%+v)", err, res)
	}
	if res.Outcome != replay.OutcomeHit || res.Files != 7 {
		t.Fatalf("result %+v", res)
	}
	reqs := p.Requests()
	if len(reqs) != 1 || !reqs[0].IsBlob() || reqs[0].Range == "" {
		t.Fatalf("after the index (%d requests), the hit made %d requests, want one ranged blob GET: %+v", indexReqs, len(reqs), reqs)
	}
	// Only that KEY dir came down: its files are small, so the range is too.
	if reqs[0].Bytes > 64<<10 {
		t.Errorf("one KEY dir cost %d bytes", reqs[0].Bytes)
	}
	// A second hit is warm: no request at all.
	if _, err := replay.Hit(m.mnt, vectorAddKey, src); err != nil {
		t.Fatal(err)
	}
	if n := p.Count(nil); n != 1 {
		t.Errorf("warm hit made %d more requests", n-1)
	}
	if s := m.statusAfter(t); s.Hits < 1 || s.Fetches != 1 {
		t.Errorf("status %+v: want hits >= 1 and exactly 1 fetch", s)
	}
}

func TestMountNonFittingGPU(t *testing.T) {
	p, src, ref := servedImage(t)
	state := t.TempDir()
	mnt := filepath.Join(t.TempDir(), "mnt")
	m := startFS(t, mnt, state, "-i", ref, "--plain-http", "--gpu", "cuda:90:32")
	if _, err := replay.Hit(m.mnt, vectorAddKey, src); !errors.Is(err, replay.ErrNotFound) {
		t.Fatalf("hit on a GPU the image does not fit: want a miss, got %v", err)
	}
	// An image that fits nothing is never read: no layer index, no KEY dir.
	if n := p.Count(func(r proxy.Req) bool { return r.Range != "" }); n != 0 {
		t.Errorf("%d ranged blob reads from an image that fits no local GPU", n)
	}
	if err := replay.Miss(m.mnt, vectorAddKey, src); err != nil {
		t.Fatalf("miss write: %v", err)
	}
	m.stop(t)
	// The local compile persists across a remount.
	m2 := startFS(t, mnt, state, "-i", ref, "--plain-http", "--gpu", "cuda:90:32")
	if _, err := replay.Hit(m2.mnt, vectorAddKey, src); err != nil {
		t.Fatalf("hit after remount: %v", err)
	}
	m2.stop(t)
	// The upper dir is the dir under the mount: the compile is there.
	if _, err := os.Stat(filepath.Join(mnt, vectorAddKey, "add_kernel.cubin")); err != nil {
		t.Fatalf("local compile not in the cache dir after unmount: %v", err)
	}
}

func TestMountConcurrentReplays(t *testing.T) {
	p, src, ref := servedImage(t)
	m := startFS(t, "", "", "-i", ref, "--plain-http", "--gpu", "cuda:80:32", "--prefetch", "none")
	keys := keysOf(t, src, "cuda:80:32")[:20]
	p.Reset()
	r := run(t, nil, "replay", append([]string{"hit", "--root", m.mnt, "--expect", src, "-p", "8"}, keys...)...)
	if r.err != nil {
		t.Fatalf("8 replay processes: %v\n%s\n%s", r.err, r.stdout, r.stderr)
	}
	if n := strings.Count(r.stdout, "HIT "); n != 160 {
		t.Fatalf("%d hits, want 160:\n%s", n, r.stdout)
	}
	if n := blobGets(p); n != 20 {
		t.Errorf("20 KEY dirs took %d blob GETs: each must be fetched once", n)
	}
}

func TestMountRegistryFailures(t *testing.T) {
	p, src, ref := servedImage(t)
	m := startFS(t, "", "", "-i", ref, "--plain-http", "--gpu", "cuda:80:32", "--fetch-timeout", "2s", "--prefetch", "none")
	keys := keysOf(t, src, "cuda:80:32")
	if _, err := replay.Hit(m.mnt, keys[0], src); err != nil {
		t.Fatal(err)
	}

	// Corrupt bytes are never served: the lookup says ENOENT.
	p.FlipByte("/blobs/", 100)
	if _, err := replay.Hit(m.mnt, keys[1], src); !errors.Is(err, replay.ErrNotFound) {
		t.Fatalf("corrupt KEY dir: want a miss, got %v", err)
	}
	if err := p.ClearFaults(); err != nil {
		t.Fatal(err)
	}

	// A stalled registry: ENOENT within the deadline.
	p.SetStall(true)
	start := time.Now()
	_, err := replay.Hit(m.mnt, keys[2], src)
	took := time.Since(start)
	p.SetStall(false)
	if !errors.Is(err, replay.ErrNotFound) || took > 4*time.Second {
		t.Fatalf("stalled registry: %v after %v, want a miss within 2s + margin", err, took)
	}

	// The registry gone: a new KEY misses in time, fetched ones still hit.
	if err := p.SetDown(true); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	_, err = replay.Hit(m.mnt, keys[3], src)
	if took := time.Since(start); !errors.Is(err, replay.ErrNotFound) || took > 4*time.Second {
		t.Fatalf("registry down: %v after %v", err, took)
	}
	if _, err := replay.Hit(m.mnt, keys[0], src); err != nil {
		t.Fatalf("fetched kernel while the registry is down: %v", err)
	}
	s := m.statusAfter(t)
	if s.Errors == 0 || s.LastError == "" || !s.Mounted {
		t.Errorf("status %+v: want errors counted with a cause", s)
	}
	// Back up: the mount keeps serving, and the KEY that failed is fetched now.
	if err := p.SetDown(false); err != nil {
		t.Fatal(err)
	}
	if _, err := replay.Hit(m.mnt, keys[4], src); err != nil {
		t.Fatalf("after the registry came back: %v", err)
	}
}

// A launcher KEY dir whose .so is a real shared object is dlopened from the
// mount and a function in it called.
// TestMountStatusCountsFailuresOnce: a failed lookup counts once in
// status.json's errors (what cargohold_errors_total exports), however many
// layers of the data path it passed through.
func TestMountStatusCountsFailuresOnce(t *testing.T) {
	p, src, ref := servedImage(t)
	m := startFS(t, "", "", "-i", ref, "--plain-http", "--gpu", "cuda:80:32", "--fetch-timeout", "2s", "--prefetch", "none")
	keys := keysOf(t, src, "cuda:80:32")
	if _, err := replay.Hit(m.mnt, keys[0], src); err != nil {
		t.Fatal(err)
	}
	if s := m.statusAfter(t); s.Errors != 0 {
		t.Fatalf("status %+v: errors before any failure", s)
	}
	if err := p.SetDown(true); err != nil {
		t.Fatal(err)
	}
	// The KEY dirs show (from the catalog); their files cannot be had, and
	// however often Triton looks, each KEY's failure counts once.
	for _, k := range keys[1:4] {
		var st syscall.Stat_t
		if err := syscall.Stat(filepath.Join(m.mnt, k), &st); err != nil {
			t.Fatalf("stat %s with the registry down: %v, want the dir from the catalog", k, err)
		}
		for range 3 {
			if _, err := replay.Hit(m.mnt, k, src); !errors.Is(err, replay.ErrNotFound) {
				t.Fatalf("hit of %s with the registry down: %v, want a miss", k, err)
			}
		}
	}
	s := m.statusAfter(t)
	if s.Errors != 3 || s.LastError == "" {
		t.Fatalf("3 failed lookups: status errors = %d (last error %q), want exactly 3", s.Errors, s.LastError)
	}
}

func TestMountLauncherDlopen(t *testing.T) {
	work := t.TempDir()
	key, err := triton.KeyOf(strings.Repeat("ab", 32))
	if err != nil {
		t.Fatal(err)
	}
	cache := filepath.Join(work, "cache")
	os.MkdirAll(filepath.Join(cache, key), 0o755)
	lib := filepath.Join(cache, key, "cuda_utils.cpython-311-x86_64-linux-gnu.so")
	os.WriteFile(filepath.Join(work, "lib.c"), []byte("int cargohold_answer(void) { return 42; }\n"), 0o644)
	os.WriteFile(filepath.Join(work, "load.c"), []byte(`#include <dlfcn.h>
#include <stdio.h>
int main(int argc, char **argv) {
	void *h = dlopen(argv[1], RTLD_NOW);
	if (!h) { fprintf(stderr, "%s\n", dlerror()); return 1; }
	int (*f)(void) = (int (*)(void))dlsym(h, "cargohold_answer");
	if (!f) { fprintf(stderr, "%s\n", dlerror()); return 1; }
	printf("%d\n", f());
	return 0;
}
`), 0o644)
	for _, c := range [][]string{
		{"gcc", "-shared", "-fPIC", "-o", lib, filepath.Join(work, "lib.c")},
		{"gcc", "-o", filepath.Join(work, "load"), filepath.Join(work, "load.c"), "-ldl"},
	} {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", c, err, out)
		}
	}
	// The launcher rides along with a kernel the host fits.
	src := filepath.Join("..", "..", "..", "shared", "testdata", "triton-cache", "vector-add-cache", vectorAddKey)
	if out, err := exec.Command("cp", "-r", src, cache).CombinedOutput(); err != nil {
		t.Fatalf("%s", out)
	}
	store := t.TempDir()
	env := []string{"CARGOHOLD_STORE=" + store}
	must(t, env, "cargohold", "-c", "-i", "launcher/cache:v1", "-d", cache)
	m := startFS(t, "", "", "-i", "launcher/cache:v1", "--store", store, "--gpu", "cuda:75:32")
	out, err := exec.Command(filepath.Join(work, "load"), filepath.Join(m.mnt, key, filepath.Base(lib))).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "42" {
		t.Fatalf("dlopen from the mount: %v: %s", err, out)
	}
}

// The real resolver tells "the images cannot answer" (registry down) from
// "no image has this KEY": a KEY the user emptied is not removable while
// the images cannot say what they hold, and once removed it stays removed.
func TestMountDeleteWhileRegistryDown(t *testing.T) {
	p, src, ref := servedImage(t)
	keys := keysOf(t, src, "cuda:80:32")
	key := keys[0]
	state := t.TempDir()
	mnt := filepath.Join(t.TempDir(), "mnt")
	args := []string{"-i", ref, "--plain-http", "--gpu", "cuda:80:32", "--fetch-timeout", "2s"}
	m := startFS(t, mnt, state, args...)
	des, err := os.ReadDir(filepath.Join(m.mnt, key))
	if err != nil || len(des) == 0 {
		t.Fatalf("KEY dir: %v %v", des, err)
	}
	for _, de := range des {
		if err := os.Remove(filepath.Join(m.mnt, key, de.Name())); err != nil {
			t.Fatal(err)
		}
	}
	m.stop(t)
	// Registry down and the fetched content gone: the images cannot answer.
	os.RemoveAll(filepath.Join(state, "store"))
	if err := p.SetDown(true); err != nil {
		t.Fatal(err)
	}
	m = startFS(t, mnt, state, args...)
	err = syscall.Rmdir(filepath.Join(m.mnt, key))
	if !errors.Is(err, syscall.EIO) {
		t.Fatalf("rmdir of an emptied image KEY while the registry is down = %v, want EIO", err)
	}
	if err := p.SetDown(false); err != nil {
		t.Fatal(err)
	}
	// With the registry back (a new mount asks at once; a running one retries
	// after a while), the emptied KEY can be removed.
	m.stop(t)
	m = startFS(t, mnt, state, args...)
	if err := syscall.Rmdir(filepath.Join(m.mnt, key)); err != nil {
		t.Fatalf("rmdir once the registry is back: %v", err)
	}
	m.stop(t)
	m = startFS(t, mnt, state, args...)
	if _, err := os.Stat(filepath.Join(m.mnt, key)); !os.IsNotExist(err) {
		t.Fatalf("deleted image KEY is back after a remount: %v", err)
	}
}

// Medium 5: a registry down when the mount starts is asked again within
// seconds, not at the next refresh (5 min): once it is back, its kernels
// are served.
func TestMountSourceDownAtStart(t *testing.T) {
	p, src, ref := servedImage(t)
	if err := p.SetDown(true); err != nil {
		t.Fatal(err)
	}
	m := startFS(t, "", "", "-i", ref, "--plain-http", "--gpu", "cuda:75:32", "--fetch-timeout", "2s")
	if s, _ := m.status(); s.Keys != 0 {
		t.Fatalf("keys indexed with the registry down: %+v", s)
	}
	if err := p.SetDown(false); err != nil {
		t.Fatal(err)
	}
	// Polled with stat: a replayed miss would make the KEY dir for a
	// local compile.
	deadline := time.Now().Add(20 * time.Second)
	for {
		var st syscall.Stat_t
		err := syscall.Stat(filepath.Join(m.mnt, vectorAddKey), &st)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("registry back for 20s, kernel still not there: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if _, err := replay.Hit(m.mnt, vectorAddKey, src); err != nil {
		t.Fatal(err)
	}
}

// Low: a hung registry costs the lookup deadline once; later lookups fail
// fast (the registry is remembered as failing), and once it answers again
// lookups are served again.
func TestMountHungRegistryFailsFast(t *testing.T) {
	p, src, ref := servedImage(t)
	// No prefetch: every KEY looked up below must need the registry.
	m := startFS(t, "", "", "-i", ref, "--plain-http", "--gpu", "cuda:80:32", "--fetch-timeout", "2s", "--prefetch", "none")
	keys := keysOf(t, src, "cuda:80:32")
	if _, err := replay.Hit(m.mnt, keys[0], src); err != nil {
		t.Fatal(err)
	}
	p.SetStall(true)
	took := func(key string) time.Duration {
		start := time.Now()
		if _, err := replay.Hit(m.mnt, key, src); !errors.Is(err, replay.ErrNotFound) {
			t.Fatalf("hit %s on a hung registry: %v, want a miss", key, err)
		}
		return time.Since(start)
	}
	first := took(keys[1])
	second, third := took(keys[2]), took(keys[3])
	t.Logf("lookups on a hung registry: %v, then %v, %v", first, second, third)
	if first < 1500*time.Millisecond {
		t.Fatalf("first lookup took %v: the stall did not hold it", first)
	}
	if third > time.Second {
		t.Fatalf("later lookups took %v, %v: a registry that keeps failing must fail fast", second, third)
	}
	p.SetStall(false)
	deadline := time.Now().Add(45 * time.Second)
	for i := 4; ; i++ {
		_, err := replay.Hit(m.mnt, keys[i], src)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("registry answering again, lookups still fail: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Medium 11: the lookup deadline (--fetch-timeout) is not the request
// deadline: on a slow link a TOC that takes longer than a lookup may wait
// is still indexed (each request is bounded by --request-timeout for its
// answer and for each stall of its body, not by the lookup's deadline).
func TestMountSlowLinkIndexes(t *testing.T) {
	p, src, ref := servedImage(t)
	p.SetRate(64 << 10)
	m := startFS(t, "", "", "-i", ref, "--plain-http", "--gpu", "cuda:75:32", "--fetch-timeout", "1s")
	deadline := time.Now().Add(40 * time.Second)
	for {
		if s, err := m.status(); err == nil && s.Keys > 0 {
			break
		}
		if time.Now().After(deadline) {
			for _, r := range p.Requests() {
				t.Logf("%s %s %s: %d %d bytes in %v", r.Method, r.Path, r.Range, r.Status, r.Bytes, r.Duration)
			}
			t.Fatalf("index not built on a slow link within 40s")
		}
		time.Sleep(200 * time.Millisecond)
	}
	var toc proxy.Req
	for _, r := range p.Requests() {
		if r.IsBlob() && r.Bytes > toc.Bytes {
			toc = r
		}
	}
	t.Logf("largest index read: %d bytes in %v", toc.Bytes, toc.Duration)
	if toc.Duration < 1500*time.Millisecond {
		t.Errorf("the TOC took %v: the link was not slower than the lookup deadline", toc.Duration)
	}
	p.SetRate(0)
	if _, err := replay.Hit(m.mnt, vectorAddKey, src); err != nil {
		t.Fatal(err)
	}
}
