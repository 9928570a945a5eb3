package fs

import (
	"errors"
	iofs "io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"cargohold/triton"
)

// TestLookupErrorIsENOENT: a KEY the images list is a dir at once (from
// the index, no fetch); a fetch that fails makes its files absent, recorded
// once, and the dir takes a local compile.
func TestLookupErrorIsENOENT(t *testing.T) {
	l := newFakeLower(t)
	l.fail(cudaKey, errors.New("registry exploded"))
	s, mp := testMount(t, Options{Lower: l})
	kd := filepath.Join(mp, cudaKey)
	if fi, err := os.Stat(kd); err != nil || !fi.IsDir() {
		t.Fatalf("stat of a listed KEY: %v", err)
	}
	if n := l.totalCalls(); n != 0 {
		t.Fatalf("a lookup of the KEY fetched: %d Entry calls", n)
	}
	for range 3 {
		if _, err := os.Stat(filepath.Join(kd, grpName)); !errors.Is(err, iofs.ErrNotExist) {
			t.Fatalf("stat in a KEY the images fail on: %v, want ENOENT", err)
		}
	}
	st := s.Stats().Snapshot()
	if st.LookupErrors != 1 || !strings.Contains(st.LastError, "registry exploded") || st.LastErrorTime.IsZero() {
		t.Errorf("stats %+v: want the cause recorded once", st)
	}
	if n := l.callsFor(cudaKey); n != 1 {
		t.Errorf("Entry called %d times, want 1 (the failure is kept for a while)", n)
	}
	// Triton compiles: its writes land, and the KEY is not removable.
	writeViaTmp(t, kd, "add_kernel.json", []byte("local"))
	if got, err := os.ReadFile(filepath.Join(kd, "add_kernel.json")); err != nil || string(got) != "local" {
		t.Fatalf("local compile: %q, %v", got, err)
	}
	wantErrno(t, "rmdir KEY", syscall.Rmdir(kd), syscall.ENOTEMPTY)

	// The index unable to answer: the KEY lookup itself is ENOENT, recorded.
	l.mu.Lock()
	l.hasErr = errors.New("index exploded")
	l.mu.Unlock()
	if _, err := os.Stat(filepath.Join(mp, rocmKey)); !errors.Is(err, iofs.ErrNotExist) {
		t.Fatalf("stat of a KEY while the index fails: %v", err)
	}
	if st := s.Stats().Snapshot(); st.LookupErrors != 2 || !strings.Contains(st.LastError, "index exploded") {
		t.Errorf("stats %+v: want the index failure recorded", st)
	}
}

// TestLookupTimeout: a fetch slower than the lookup deadline answers
// ENOENT in time, goes on in the background, and a later lookup finds the
// files.
func TestLookupTimeout(t *testing.T) {
	for _, ignoreCtx := range []bool{false, true} {
		name := "honours ctx"
		if ignoreCtx {
			name = "ignores ctx"
		}
		t.Run(name, func(t *testing.T) {
			l := newFakeLower(t)
			l.ignoreCtx = ignoreCtx
			release := l.hold(t, cudaKey)
			const timeout = 300 * time.Millisecond
			s, mp := testMount(t, Options{Lower: l, LookupTimeout: timeout})
			start := time.Now()
			_, err := os.Stat(filepath.Join(mp, cudaKey, grpName))
			took := time.Since(start)
			if !errors.Is(err, iofs.ErrNotExist) {
				t.Fatalf("stat in a KEY stuck in the images: %v, want ENOENT", err)
			}
			if took < timeout || took > timeout+2*time.Second {
				t.Errorf("ENOENT after %v, want within %v + 2s margin", took, timeout)
			}
			st := s.Stats().Snapshot()
			if st.LookupErrors != 1 || !strings.Contains(st.LastError, "within") {
				t.Errorf("stats %+v: want the timeout recorded", st)
			}
			// Other KEYs still work meanwhile.
			if _, err := os.Stat(filepath.Join(mp, rocmKey, grpName)); err != nil {
				t.Errorf("another KEY: %v", err)
			}
			// The fetch went on: once it is in, the files are there.
			release()
			deadline := time.Now().Add(10 * time.Second)
			for {
				_, err := os.Stat(filepath.Join(mp, cudaKey, grpName))
				if err == nil {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("KEY whose fetch outlived its lookup: %v", err)
				}
				time.Sleep(10 * time.Millisecond)
			}
			checkHit(t, l, mp, mp, cudaKey)
			if n := l.callsFor(cudaKey); n != 1 {
				t.Errorf("Entry called %d times, want 1", n)
			}
		})
	}
}

func TestNonKeyNamesDoNotAskImages(t *testing.T) {
	l := newFakeLower(t)
	_, mp := testMount(t, Options{Lower: l})
	for _, name := range []string{"foo", "tmp.pid_1_abc", strings.ToLower(cudaKey), cudaKey[:51], ".wh." + cudaKey} {
		if _, err := os.Stat(filepath.Join(mp, name)); !errors.Is(err, iofs.ErrNotExist) {
			t.Errorf("stat %q: %v, want ENOENT", name, err)
		}
	}
	if n := l.totalCalls(); n != 0 {
		t.Errorf("non-KEY names asked the images %d times", n)
	}
}

func TestSameKeyFromManyGoroutines(t *testing.T) {
	l := newFakeLower(t)
	release := l.hold(t, cudaKey)
	_, mp := testMount(t, Options{Lower: l, LookupTimeout: 30 * time.Second})
	const n = 16
	var wg sync.WaitGroup
	sizes := make([]int64, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			fi, err := os.Stat(filepath.Join(mp, cudaKey, grpName))
			errs[i] = err
			if err == nil {
				sizes[i] = fi.Size()
			}
		})
	}
	l.waitEntered(t, cudaKey)
	release()
	wg.Wait()
	for i := range n {
		if errs[i] != nil || sizes[i] != sizes[0] || sizes[0] == 0 {
			t.Fatalf("goroutine %d: size %d, %v (goroutine 0: %d)", i, sizes[i], errs[i], sizes[0])
		}
	}
	if c := l.callsFor(cudaKey); c < 1 || c > n {
		t.Errorf("Entry called %d times for %d lookups", c, n)
	}
}

func TestBlockedKeyDoesNotBlockOthers(t *testing.T) {
	l := newFakeLower(t)
	release := l.hold(t, cudaKey)
	_, mp := testMount(t, Options{Lower: l, LookupTimeout: 30 * time.Second})
	done := make(chan error, 1)
	go func() {
		_, err := os.Stat(filepath.Join(mp, cudaKey, grpName))
		done <- err
	}()
	l.waitEntered(t, cudaKey)
	// KEY A's fetch is held in Entry. Triton's mkdir(ROOT/KEY), which takes
	// the root's lock, answers EEXIST at once for A and for others: no
	// fetch holds that lock.
	for _, key := range []string{cudaKey, rocmKey, soKey} {
		start := time.Now()
		wantErrno(t, "mkdir "+key, syscall.Mkdir(filepath.Join(mp, key), 0o777), syscall.EEXIST)
		if took := time.Since(start); took > 2*time.Second {
			t.Errorf("mkdir %s while a fetch is held took %v", key, took)
		}
	}
	// KEY B must be served meanwhile.
	for _, key := range []string{rocmKey, soKey} {
		if _, err := os.ReadDir(filepath.Join(mp, key)); err != nil {
			t.Fatalf("KEY %s while another is blocked: %v", key, err)
		}
	}
	select {
	case err := <-done:
		t.Fatalf("the held lookup finished before its release: %v", err)
	default:
	}
	release()
	if err := <-done; err != nil {
		t.Fatalf("held lookup after release: %v", err)
	}
}

// dirsCounter counts the Dirs calls below the root (for cargohold-fs, a
// search of the catalog's units: catalog.Dir).
type dirsCounter struct {
	*fakeLower
	mu    sync.Mutex
	below []string
}

func (c *dirsCounter) Dirs(rel string) []string {
	if rel != "" {
		c.mu.Lock()
		c.below = append(c.below, rel)
		c.mu.Unlock()
	}
	return c.fakeLower.Dirs(rel)
}

// TestTritonKeyDirAsksNoDirsBelow: a Triton KEY dir holds no dirs the
// images could show, so listing it or removing it does not ask the images
// for dirs below it (for cargohold-fs, a search of the catalog's units per
// listing).
func TestTritonKeyDirAsksNoDirsBelow(t *testing.T) {
	c := &dirsCounter{fakeLower: newFakeLower(t)}
	_, mp := testMount(t, Options{Lower: c})
	if got := readDirNames(t, filepath.Join(mp, cudaKey)); len(got) == 0 {
		t.Fatal("the KEY dir lists nothing")
	}
	wantErrno(t, "rmdir of a KEY dir with image files", syscall.Rmdir(filepath.Join(mp, rocmKey)), syscall.ENOTEMPTY)
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.below) != 0 {
		t.Errorf("listing or removing a KEY dir asked the images for the dirs below %v", c.below)
	}
	for _, rel := range c.askedPaths() {
		if !triton.IsKey(rel) {
			t.Errorf("the images were asked for %q, below a KEY dir", rel)
		}
	}
}
