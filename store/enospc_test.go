package store

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestFullDisk puts a blob bigger than a real 64 KiB tmpfs: the write must
// fail with ENOSPC, leave no temp file and no entry, and the store must
// keep working.
func TestFullDisk(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=64k"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("mount tmpfs: %v", err)
		}
		t.Skipf("SKIPPED full-disk test: cannot mount a tmpfs (%v); needs root/CAP_SYS_ADMIN", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			t.Errorf("unmount tmpfs: %v", err)
		}
	})

	s := mustOpen(t, dir, 0) // no limit: only the disk says no
	big, dbig := blob(1, 256<<10)
	err := s.Put(dbig, bytes.NewReader(big))
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("got %v, want ENOSPC", err)
	}
	if s.Has(dbig) {
		t.Fatal("partial blob committed")
	}
	checkConsistent(t, s)

	small, dsmall := blob(2, 16<<10) // the space was given back
	mustPut(t, s, small, dsmall)
	readBack(t, s, dsmall, small)
	checkConsistent(t, s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}
