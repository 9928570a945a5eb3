package fs

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestOpenWhileRenamedOver: processes open KEY/x while others rename their
// own copies over it, as several Triton ranks compiling one kernel do. Every
// open succeeds (a real file system opens the inode the path named at
// lookup) and reads a whole copy.
func TestOpenWhileRenamedOver(t *testing.T) {
	l := newFakeLower(t)
	_, mp := testMount(t, Options{Lower: l})
	kdir := filepath.Join(mp, missKey)
	if err := os.Mkdir(kdir, 0o755); err != nil {
		t.Fatal(err)
	}
	const name = "add_kernel.cubin"
	content := bytes.Repeat([]byte("kernel "), 512)
	target := filepath.Join(kdir, name)
	if err := os.WriteFile(target, content, 0o644); err != nil {
		t.Fatal(err)
	}

	var opens, renames, enoent atomic.Int64
	var mu sync.Mutex
	var other []error
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 2 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				tmp := filepath.Join(kdir, fmt.Sprintf("tmp.pid_%d_%d", w, i))
				err := os.Mkdir(tmp, 0o755)
				if err == nil {
					err = os.WriteFile(filepath.Join(tmp, name), content, 0o644)
				}
				if err == nil {
					err = os.Rename(filepath.Join(tmp, name), target)
				}
				if err == nil {
					err = os.Remove(tmp)
				}
				if err != nil {
					mu.Lock()
					other = append(other, fmt.Errorf("writer: %w", err))
					mu.Unlock()
					return
				}
				renames.Add(1)
			}
		})
	}
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				data, err := os.ReadFile(target)
				opens.Add(1)
				switch {
				case errors.Is(err, os.ErrNotExist):
					enoent.Add(1)
				case err != nil:
					mu.Lock()
					other = append(other, err)
					mu.Unlock()
				case !bytes.Equal(data, content):
					mu.Lock()
					other = append(other, fmt.Errorf("read %d bytes, want a whole copy of %d", len(data), len(content)))
					mu.Unlock()
				}
			}
		})
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) && (opens.Load() < 3000 || renames.Load() < 300) {
		time.Sleep(50 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	t.Logf("%d opens during %d renames over the file: %d ENOENT", opens.Load(), renames.Load(), enoent.Load())
	if n := enoent.Load(); n != 0 {
		t.Errorf("%d of %d opens of a file being renamed over failed with ENOENT", n, opens.Load())
	}
	for i, err := range other {
		if i == 5 {
			t.Errorf("... %d more", len(other)-5)
			break
		}
		t.Error(err)
	}
	if renames.Load() < 100 {
		t.Errorf("only %d renames: the race went untested", renames.Load())
	}
	// The fds kept for files renamed over are closed once the kernel
	// forgets their nodes: they do not pile up.
	deadline = time.Now().Add(5 * time.Second)
	for {
		n := keptFds(t, missKey)
		if n <= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("%d fds of replaced files still open after %d renames", n, renames.Load())
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// keptFds counts this process's fds on deleted files under a dir named key.
func keptFds(t *testing.T, key string) int {
	t.Helper()
	des, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, de := range des {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", de.Name()))
		if err == nil && strings.Contains(target, "/"+key+"/") && strings.HasSuffix(target, " (deleted)") {
			n++
		}
	}
	return n
}
