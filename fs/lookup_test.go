package fs

import (
	"errors"
	iofs "io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestLookupErrorIsENOENT(t *testing.T) {
	l := newFakeLower(t)
	l.fail(cudaKey, errors.New("registry exploded"))
	s, mp := testMount(t, Options{Lower: l})
	if _, err := os.Stat(filepath.Join(mp, cudaKey)); !errors.Is(err, iofs.ErrNotExist) {
		t.Fatalf("stat of a KEY the images fail on: %v, want ENOENT", err)
	}
	st := s.Stats().Snapshot()
	if st.LookupErrors != 1 || !strings.Contains(st.LastError, "registry exploded") || st.LastErrorTime.IsZero() {
		t.Errorf("stats %+v: want the cause recorded", st)
	}
	// Not cached: the next lookup asks again and may succeed.
	l.fail(cudaKey, nil)
	if _, err := os.Stat(filepath.Join(mp, cudaKey, grpName)); err != nil {
		t.Fatalf("stat after the images recovered: %v", err)
	}
	if n := l.callsFor(cudaKey); n != 2 {
		t.Errorf("Entry called %d times, want 2", n)
	}
}

func TestLookupTimeout(t *testing.T) {
	for _, ignoreCtx := range []bool{false, true} {
		name := "honours ctx"
		if ignoreCtx {
			name = "ignores ctx"
		}
		t.Run(name, func(t *testing.T) {
			l := newFakeLower(t)
			l.ignoreCtx = ignoreCtx
			l.hold(t, cudaKey)
			const timeout = 300 * time.Millisecond
			s, mp := testMount(t, Options{Lower: l, LookupTimeout: timeout})
			start := time.Now()
			_, err := os.Stat(filepath.Join(mp, cudaKey))
			took := time.Since(start)
			if !errors.Is(err, iofs.ErrNotExist) {
				t.Fatalf("stat of a KEY stuck in the images: %v, want ENOENT", err)
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
	// KEY A is held in Entry; KEY B must be served meanwhile.
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
