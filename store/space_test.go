package store

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/opencontainers/go-digest"
)

// TestKeepFree fills a real 1 MiB tmpfs through the store with a reserve
// of 512 KiB: older entries are evicted so that the reserve stays free, and
// a blob that cannot fit above the reserve is ErrFull, committed nowhere.
func TestKeepFree(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "mnt")
	os.Mkdir(dir, 0o755)
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=1m"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("mount tmpfs: %v", err)
		}
		t.Skipf("SKIPPED: cannot mount a tmpfs (%v); needs root", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, 0) })

	const reserve = 512 << 10
	s := mustOpen(t, dir, 0) // no size limit: only the disk's reserve
	s.KeepFree(reserve)
	var ds []digestOf
	for i := range 8 {
		b, d := blob(i+1, 100<<10)
		mustPut(t, s, b, d)
		ds = append(ds, digestOf{d, b})
		free, _ := statfs(dir)
		if free < reserve {
			t.Fatalf("after put %d: %d bytes free, below the reserve", i, free)
		}
	}
	if st := s.Stats(); st.Evictions == 0 || st.Entries >= 8 {
		t.Fatalf("8 blobs of 100 KiB above a 512 KiB reserve on 1 MiB: %+v, want evictions", st)
	}
	last := ds[len(ds)-1]
	readBack(t, s, last.d, last.b)
	checkConsistent(t, s)

	// Pinned content cannot be evicted: a blob that needs its room is refused.
	var pins []*File
	for _, e := range ds {
		if s.Has(e.d) {
			f, err := s.Open(e.d)
			if err != nil {
				t.Fatal(err)
			}
			pins = append(pins, f)
		}
	}
	big, dbig := blob(99, 300<<10)
	if err := s.Put(dbig, bytes.NewReader(big)); !errors.Is(err, ErrFull) {
		t.Fatalf("put with everything pinned: %v, want ErrFull", err)
	}
	if s.Has(dbig) {
		t.Fatal("refused blob committed")
	}
	for _, f := range pins {
		f.Close()
	}
	mustPut(t, s, big, dbig) // unpinned now: room is made
	checkConsistent(t, s)
}

type digestOf struct {
	d digest.Digest
	b []byte
}
