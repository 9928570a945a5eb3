package fetch_test

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"cargohold/fetch"
	"cargohold/kind"
	"cargohold/resolver"
	"cargohold/store"
	"cargohold/test/cachetest"
)

// zerosSize is the file of zeros lzZerosImage's KEY holds: 256 MiB that
// compress to a few hundred KiB.
const zerosSize = 256 << 20

var lzZerosPacked lzPackedImage

// lzZerosImage is the eStargz image of the vector-add KEY dir plus a
// zerosSize file of zeros (a normal image: its labels fit cuda:75).
func lzZerosImage(t *testing.T) (v1.Image, string) {
	t.Helper()
	const key = "5W7KJQDTJCL4UGPMKKCS7TEEPZKSWOY4774SZQ6674FWSXG5MNXQ"
	dir := filepath.Join(lzTmp, "zeros")
	if _, err := os.Stat(dir); err != nil {
		if err := os.CopyFS(filepath.Join(dir, key), os.DirFS(filepath.Join(cachetest.Testdata(t, "vector-add-cache"), key))); err != nil {
			t.Fatal(err)
		}
		f, err := os.Create(filepath.Join(dir, key, "zeros.bin"))
		if err == nil {
			err = f.Truncate(zerosSize)
			f.Close()
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	return lzZerosPacked.get(t, dir), key
}

// zerosEnv pushes lzZerosImage to a fresh registry and indexes its layer
// with an engine over st.
func zerosEnv(t *testing.T, st *store.Store) (*lzEnv, resolver.LayerRef, *fetch.Engine, string) {
	t.Helper()
	img, key := lzZerosImage(t)
	e := newLzEnv(t)
	ref := e.push(t, "zeros:v1", img)
	_, l := e.image(t, ref, 0)
	eng := e.engine(t, st, t.TempDir())
	lzIndex(t, eng, l)
	return e, l, eng, key
}

// TestDirTooLargeForStore: a KEY dir whose files (as the index gives their
// uncompressed sizes) do not fit the store is refused with ErrFull before
// a byte of it is read or allocated.
func TestDirTooLargeForStore(t *testing.T) {
	st := lzStore(t, 100<<20)
	e, l, eng, key := zerosEnv(t, st)
	e.px.Reset()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := eng.Dir(context.Background(), l, key)
	runtime.ReadMemStats(&after)
	if !errors.Is(err, store.ErrFull) {
		t.Fatalf("fetch of a %d-byte KEY dir into a 100 MiB store: %v, want ErrFull", zerosSize, err)
	}
	t.Logf("refused: %v", err)
	if n := lzBlobReqs(e.px, l); n != 0 {
		t.Errorf("%d blob requests for a dir that cannot fit", n)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 4<<20 {
		t.Errorf("refusing the dir allocated %d bytes", alloc)
	}
	if n := st.Stats().Entries; n != 0 {
		t.Errorf("%d entries stored", n)
	}
}

// TestDirLargeFileBoundedMemory: a fetch streams a large file through the
// decompressor into the store: memory stays a small fraction of the file.
func TestDirLargeFileBoundedMemory(t *testing.T) {
	st := lzStore(t, 0)
	_, l, eng, key := zerosEnv(t, st)
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	files, _ := lzFetch(t, eng, l, key)
	runtime.ReadMemStats(&after)
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("fetch of a KEY dir with a %d-byte file allocated %d bytes", zerosSize, alloc)
	if alloc > 32<<20 {
		t.Errorf("fetch of a KEY dir with a %d-byte file allocated %d bytes, want under 32 MiB", zerosSize, alloc)
	}
	for _, f := range files {
		if f.Name == "zeros.bin" {
			sf, err := st.Open(f.Digest)
			if err != nil {
				t.Fatal(err)
			}
			if sf.Size() != zerosSize {
				t.Errorf("stored zeros.bin has %d bytes", sf.Size())
			}
			sf.Close()
		}
	}
}

// TestDirCancelStopsDecompression: a caller giving up stops the fetch while
// it decompresses and writes: nothing is committed, no temp file stays.
func TestDirCancelStopsDecompression(t *testing.T) {
	dir := t.TempDir()
	st, err := store.Open(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	_, l, eng, key := zerosEnv(t, st)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := eng.Dir(ctx, l, key)
		done <- err
	}()
	// Cancel once the files are being written.
	deadline := time.Now().Add(20 * time.Second)
	for len(temps(t, dir)) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no file was being written within 20s")
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Dir after cancel: %v", err)
	}
	lzWaitNoEngineGoroutines(t)
	if n := st.Stats().Entries; n != 0 {
		t.Errorf("a canceled fetch committed %d entries", n)
	}
	if left := temps(t, dir); len(left) != 0 {
		t.Errorf("a canceled fetch left %v", left)
	}
}

// temps lists the temp files under a store dir.
func temps(t *testing.T, dir string) []string {
	var out []string
	filepath.WalkDir(dir, func(p string, de fs.DirEntry, err error) error {
		if err == nil && !de.IsDir() && strings.HasPrefix(de.Name(), ".tmp-") {
			out = append(out, p)
		}
		return nil
	})
	return out
}

// TestInstallBoundedByFreeSpace: cargohold fetch -d refuses a KEY dir that
// does not fit the free space of the target before writing any of it.
func TestInstallBoundedByFreeSpace(t *testing.T) {
	st := lzStore(t, 0)
	_, l, eng, key := zerosEnv(t, st)
	files, _ := lzFetch(t, eng, l, key)

	dir := filepath.Join(t.TempDir(), "mnt")
	os.Mkdir(dir, 0o755)
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=16m"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("mount tmpfs: %v", err)
		}
		t.Skipf("SKIPPED: cannot mount a tmpfs (%v); needs root", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, 0) })
	if err := eng.Install(dir, kind.Triton, key, files); !errors.Is(err, store.ErrFull) {
		t.Fatalf("install of %d bytes onto 16 MiB: %v, want ErrFull", zerosSize, err)
	}
	if des, _ := os.ReadDir(dir); len(des) != 0 {
		t.Errorf("left %v", des)
	}
}

// TestPrefetchLargeFileBoundedMemory: a prefetch range holding a dir with
// a large file (small compressed) commits it streaming, as a lookup does.
func TestPrefetchLargeFileBoundedMemory(t *testing.T) {
	st := lzStore(t, 0)
	_, l, eng, key := zerosEnv(t, st)
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	if err := waitPrefetch(t, eng.Prefetch(l, []string{key})); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	if s := eng.Stats(); s.PrefetchDirs != 1 {
		t.Fatalf("stats %+v: want the dir prefetched", s)
	}
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("prefetch of a KEY dir with a %d-byte file allocated %d bytes", zerosSize, alloc)
	if alloc > 32<<20 {
		t.Errorf("prefetch of a KEY dir with a %d-byte file allocated %d bytes, want under 32 MiB", zerosSize, alloc)
	}
}
