package replay

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"cargohold/test/cachetest"
)

const (
	timingsUnit = "cache/2f0e3c2bb5f1b38e5ad5d0b0b1f8c4a4c8a0d2f3b1e6f1f0a9c1b2d3e4f5a6b7"
	fxUnitR4    = "fxgraph/r4/fr4t73hg7nisksrnalktc6oq7w4kf5xjy7couij4xnicybdtk65e"
	wrapperSY   = "sy/csydsib3zoojnddissy5psapld25ic346gbdsibkekh6pid6bevv.py"
	aotUnit     = "aotautograd/a5zyzqiu3r4t5mjl4tueatj4nvrdbxc6luji3nhwdzr6qyody6j3"
)

// inductorSource is a real Inductor cache dir (the legacy vLLM cache's
// inductor_cache) with a Triton kernel under triton/0 (the vector-add
// cache's, its group file naming the building machine) and a timings file.
func inductorSource(t *testing.T) string {
	t.Helper()
	vllm := cachetest.VLLMTestdata(t, legacyData)
	src := copyTree(t, filepath.Join(vllm, vllmCacheDir, legacyHash, legacyName, vllmInductor))
	kd := filepath.Join(src, "triton", "0", cudaKey)
	if err := os.CopyFS(kd, os.DirFS(filepath.Join(cachetest.Testdata(t, "vector-add-cache"), cudaKey))); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(src, "cache"), 0o755)
	timings := `{"system": {"device": "AMD Instinct MI210", "version": {"triton": "3.2.0"}, "hash": "2f0e"}, "cache": {"mm": {"[(8, 8)]": {"float32": {"triton_mm_1": 0.01}}}}}`
	if err := os.WriteFile(filepath.Join(src, timingsUnit), []byte(timings), 0o644); err != nil {
		t.Fatal(err)
	}
	return src
}

// inductorServed is a copy of the source with its Triton group files
// rewritten to where it is: what an extract or the mount serves.
func inductorServed(t *testing.T, src string) string {
	t.Helper()
	root := copyTree(t, src)
	relocate(t, root, "")
	return root
}

func TestInductorUnits(t *testing.T) {
	src := inductorSource(t)
	units, err := keysIn(KindInductor, src)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]int{}
	for _, u := range units {
		k, err := inductorUnitKind(u)
		if err != nil {
			t.Fatal(err)
		}
		kinds[k]++
	}
	want := map[string]int{unitAOT: 25, unitFXGraph: 3, unitModule: 6, unitBestConfig: 3, unitTriton: 1, unitTimings: 1}
	if fmt.Sprint(kinds) != fmt.Sprint(want) || !strings.HasPrefix(units[0], "aotautograd/") || units[len(units)-1] != timingsUnit {
		t.Fatalf("units %v: kinds %v, want %v", units, kinds, want)
	}
	if _, err := keysIn(KindInductor, t.TempDir()); !errors.Is(err, ErrNoUnits) {
		t.Fatalf("empty dir: %v", err)
	}
	for _, bad := range []string{"", "/abs/x.py", "fxgraph/zz/fab", "fxgraph/ab", "ab/../x.py", "abc/x.py", "ab/x.so", "triton/0/notakey", "locks/x", "x"} {
		if _, err := inductorUnitKind(bad); err == nil {
			t.Errorf("%q: want error", bad)
		}
	}
}

func TestInductorHit(t *testing.T) {
	src := inductorSource(t)
	root := inductorServed(t, src)
	units, _ := keysIn(KindInductor, src)
	sum, err := Run(context.Background(), Options{Mode: ModeHit, Cache: KindInductor, Root: root, Keys: units, Expect: src}, func(r Result) {
		if r.Outcome != OutcomeHit || r.Files == 0 {
			t.Errorf("%s: %+v", r.Key, r)
		}
	})
	if err != nil || !sum.OK() || sum.Hits != len(units) {
		t.Fatalf("%+v, %v", sum, err)
	}
	// The wrapper module loads its two kernels, each with its autotune
	// result: five files.
	r, err := InductorHit(root, wrapperSY, src)
	if err != nil || r.Kind != unitModule || r.Files != 5 {
		t.Fatalf("wrapper: %+v, %v", r, err)
	}
	// The Triton unit is Triton's hit under triton/0.
	r, err = InductorHit(root, "triton/0/"+cudaKey, src)
	if err != nil || r.Kind != unitTriton || r.Name != "add_kernel" || r.Files != 7 {
		t.Fatalf("triton: %+v, %v", r, err)
	}
	// A lock is taken and released; release removes the file.
	if _, err := InductorHit(root, "locks/ab.lock", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "locks", "ab.lock")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("lock file after release: %v", err)
	}
}

// TestInductorHitSyscalls pins the FX graph lookup and the Triton
// bundle's check: stat, then the dir listed the way os.listdir lists it.
func TestInductorHitSyscalls(t *testing.T) {
	src := inductorSource(t)
	root := inductorServed(t, src)
	r, err := InductorHit(root, fxUnitR4, src)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, fxUnitR4)
	entry := dir + "/ywqobi6nujcnbfearh4jmpitsaaguvkjp6ja7zny5o6k2hh5czb"
	want := []string{
		fmt.Sprintf("stat(%q) = 0", dir),
		fmt.Sprintf("openat(%q, O_RDONLY|O_NONBLOCK|O_CLOEXEC|O_DIRECTORY) = FD", dir),
		"fstat(FD) = 0", "getdents64(FD, 32768) = 120", "getdents64(FD, 32768) = 0", "close(FD) = 0",
		fmt.Sprintf("openat(%q, O_RDONLY|O_CLOEXEC) = FD", entry),
		"fstat(FD) = 0", "ioctl(FD, TCGETS) = ENOTTY", "lseek(FD, 0, SEEK_CUR) = 0", "lseek(FD, 0, SEEK_CUR) = 0", "fstat(FD) = 0",
		"read(FD, 9502) = 9501", "read(FD, 1) = 0", "close(FD) = 0",
	}
	got := normalizeFDs(r.Trace)
	if !slices.Equal(got, want) {
		t.Fatalf("trace:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

var tmpRenameRE = regexp.MustCompile(`rename\(".*/\.\d+\.\d+\.tmp", ".*"\) = 0`)

func TestInductorMissThenHit(t *testing.T) {
	src := inductorSource(t)
	units, _ := keysIn(KindInductor, src)
	units = append(units, "locks/fx.lock")
	root := filepath.Join(t.TempDir(), "fresh", "inductor")
	sum, err := Run(context.Background(), Options{Mode: ModeMiss, Cache: KindInductor, Root: root, Keys: units, From: src, Trace: true}, func(r Result) {
		if r.Outcome != OutcomeMiss {
			t.Errorf("%s: %s\n%s", r.Key, r.Error, strings.Join(r.Trace, "\n"))
			return
		}
		trace := strings.Join(r.Trace, "\n")
		switch r.Kind {
		case unitFXGraph, unitAOT, unitBestConfig, unitTimings:
			// write_atomic: .<pid>.<tid>.tmp beside the target, renamed over it.
			if !tmpRenameRE.MatchString(trace) {
				t.Errorf("%s: no write_atomic in\n%s", r.Key, trace)
			}
		case unitTriton:
			// TritonBundler: a tmp.<uuid> dir renamed onto the KEY dir.
			want := fmt.Sprintf(`", %q) = 0`, filepath.Join(root, r.Key))
			if !strings.Contains(trace, `rename("`+filepath.Join(root, "triton/0/tmp.")) || !strings.Contains(trace, want) {
				t.Errorf("%s: no dir rename in\n%s", r.Key, trace)
			}
		case unitLock:
			if !strings.Contains(trace, "O_RDWR|O_CREAT|O_TRUNC|O_NOFOLLOW|O_CLOEXEC, 0644)") || !strings.Contains(trace, "LOCK_EX|LOCK_NB) = 0") {
				t.Errorf("%s:\n%s", r.Key, trace)
			}
		}
	})
	if err != nil || !sum.OK() || sum.Misses != len(units) {
		t.Fatalf("%+v, %v", sum, err)
	}
	units = units[:len(units)-1]
	sum, err = Run(context.Background(), Options{Mode: ModeHit, Cache: KindInductor, Root: root, Keys: units, Expect: src}, nil)
	if err != nil || !sum.OK() || sum.Hits != len(units) {
		t.Fatalf("hit after miss: %+v, %v", sum, err)
	}
	// No tmp file or dir is left.
	filepath.WalkDir(root, func(p string, de os.DirEntry, err error) error {
		if strings.HasSuffix(p, ".tmp") || strings.HasPrefix(de.Name(), "tmp.") {
			t.Errorf("left behind: %s", p)
		}
		return err
	})
	// A second miss renames over what is there; the bundle finds its
	// kernel's dir and leaves it.
	if _, err := InductorMiss(root, fxUnitR4, src); err != nil {
		t.Fatal(err)
	}
	r, err := InductorMiss(root, "triton/0/"+cudaKey, src)
	if err != nil || strings.Contains(strings.Join(r.Trace, "\n"), "rename(") {
		t.Fatalf("bundle over a present kernel: %v\n%s", err, strings.Join(r.Trace, "\n"))
	}
	// Onto an empty KEY dir (as Triton's makedirs leaves one) the rename
	// succeeds.
	os.RemoveAll(filepath.Join(root, "triton/0", cudaKey))
	os.Mkdir(filepath.Join(root, "triton/0", cudaKey), 0o755)
	if _, err := InductorMiss(root, "triton/0/"+cudaKey, src); err != nil {
		t.Fatal(err)
	}
}

// TestInductorRunConcurrentMisses: three processes write the same units
// into an empty dir at once: write_atomic renames over each other, bundle
// dirs race onto the same KEY dir, the lock is passed around.
func TestInductorRunConcurrentMisses(t *testing.T) {
	src := inductorSource(t)
	units, _ := keysIn(KindInductor, src)
	units = append(units, "locks/fx.lock")
	root := filepath.Join(t.TempDir(), "inductor")
	sum, err := Run(context.Background(), Options{Mode: ModeMiss, Cache: KindInductor, Root: root, Keys: units, From: src, Procs: 3}, func(r Result) {
		if r.Outcome == OutcomeError {
			t.Errorf("%s (process %d): %s", r.Key, r.Proc, r.Error)
		}
	})
	if err != nil || !sum.OK() || sum.Misses != 3*len(units) {
		t.Fatalf("miss -p 3: %+v, %v", sum, err)
	}
	sum, err = Run(context.Background(), Options{Mode: ModeAuto, Cache: KindInductor, Root: root, Keys: units, From: src, Procs: 3}, nil)
	if err != nil || !sum.OK() || sum.Hits != 3*len(units) {
		t.Fatalf("auto -p 3: %+v, %v", sum, err)
	}
}

func TestInductorHitCatches(t *testing.T) {
	fxEntry := fxUnitR4 + "/ywqobi6nujcnbfearh4jmpitsaaguvkjp6ja7zny5o6k2hh5czb"
	kernel := "mk/cmk34tieuty2rpoli3ynf2ihs3dcfx6o5sv2l7rkt5vj44p2tk74.py"
	bestConfig := "mk/daced2c375a5dbfd18acb2d27eb2c6528fd9176a925e4c5b844e24d453cb60bf.best_config"
	tritonUnit := "triton/0/" + cudaKey
	mismatch := func(file string) func(error) bool {
		return func(err error) bool {
			var m *MismatchError
			return errors.As(err, &m) && m.File == file
		}
	}
	notFound := func(err error) bool { return errors.Is(err, ErrNotFound) }
	failed := func(err error) bool { return err != nil && !errors.Is(err, ErrNotFound) }
	for _, c := range []struct {
		name, unit string
		damage     func(root string)
		check      func(error) bool
	}{
		{"corrupt FX entry", fxUnitR4, func(r string) { flipByte(t, filepath.Join(r, fxEntry), 5000) }, mismatch(fxEntry)},
		{"absent FX dir", fxUnitR4, func(r string) { os.RemoveAll(filepath.Join(r, fxUnitR4)) }, notFound},
		{"empty FX dir", fxUnitR4, func(r string) { os.Remove(filepath.Join(r, fxEntry)) }, notFound},
		{"corrupt AOT entry", aotUnit, func(r string) { flipByte(t, filepath.Join(r, aotUnit, aotEntry), 1) }, mismatch(aotUnit + "/" + aotEntry)},
		{"AOT dir without entry", aotUnit, func(r string) { os.Remove(filepath.Join(r, aotUnit, aotEntry)) }, failed},
		{"absent module", wrapperSY, func(r string) { os.Remove(filepath.Join(r, wrapperSY)) }, notFound},
		{"absent kernel module", wrapperSY, func(r string) { os.Remove(filepath.Join(r, kernel)) }, notFound},
		{"corrupt kernel module", wrapperSY, func(r string) { flipByte(t, filepath.Join(r, kernel), 100) }, mismatch(kernel)},
		{"corrupt best config", wrapperSY, func(r string) { flipByte(t, filepath.Join(r, bestConfig), 3) }, mismatch(bestConfig)},
		{"absent best config", bestConfig, func(r string) { os.Remove(filepath.Join(r, bestConfig)) }, notFound},
		{"best config not JSON", bestConfig, func(r string) { os.WriteFile(filepath.Join(r, bestConfig), []byte("{"), 0o644) }, failed},
		{"empty Triton dir", tritonUnit, func(r string) {
			os.RemoveAll(filepath.Join(r, tritonUnit))
			os.Mkdir(filepath.Join(r, tritonUnit), 0o755)
		}, notFound},
		{"Triton group of the building machine", tritonUnit, func(r string) {
			data, _ := os.ReadFile(filepath.Join(cachetest.Testdata(t, "vector-add-cache"), cudaKey, "__grp__add_kernel.json"))
			os.WriteFile(filepath.Join(r, tritonUnit, "__grp__add_kernel.json"), data, 0o644)
		}, func(err error) bool {
			var o *OutsideRootError
			return errors.As(err, &o)
		}},
		{"corrupt Triton binary", tritonUnit, func(r string) { flipByte(t, filepath.Join(r, tritonUnit, "add_kernel.cubin"), 10) }, mismatch("add_kernel.cubin")},
		{"absent timings", timingsUnit, func(r string) { os.Remove(filepath.Join(r, timingsUnit)) }, notFound},
		{"timings not JSON", timingsUnit, func(r string) { os.WriteFile(filepath.Join(r, timingsUnit), []byte("{}{"), 0o644) }, failed},
	} {
		src := inductorSource(t)
		root := inductorServed(t, src)
		if _, err := InductorHit(root, c.unit, src); err != nil {
			t.Fatalf("%s: before the damage: %v", c.name, err)
		}
		c.damage(root)
		if r, err := InductorHit(root, c.unit, src); !c.check(err) || r.Outcome != OutcomeError {
			t.Errorf("%s: got %v", c.name, err)
		}
	}
}

// TestFileLock: the lock waits for another holder, and a filesystem whose
// flock always succeeds is caught.
func TestFileLock(t *testing.T) {
	root := t.TempDir()
	lock := filepath.Join(root, "locks", "k.lock")
	os.MkdirAll(filepath.Dir(lock), 0o755)
	fd, err := unix.Open(lock, unix.O_RDWR|unix.O_CREAT, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Flock(fd, unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := InductorHit(root, "locks/k.lock", "")
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("took a held lock: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	unix.Close(fd)
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	p := newPyos()
	p.flockFn = func(int, int) error { return nil }
	if _, err := p.inductorHit(root, "locks/k.lock", ""); err == nil || !strings.Contains(err.Error(), "second open took the lock") {
		t.Fatalf("no-op flock: %v", err)
	}
	p = newPyos()
	p.flockFn = func(int, int) error { return unix.ENOSYS }
	if _, err := p.inductorHit(root, "locks/k.lock", ""); !errors.Is(err, unix.ENOSYS) {
		t.Fatalf("flock ENOSYS: %v", err)
	}
}
