package fs

import (
	"os"
	"path/filepath"
	"testing"
)

// TestRequestsCounted: the mount counts the kernel's requests by kind.
func TestRequestsCounted(t *testing.T) {
	l := newFakeLower(t)
	s, mp := testMount(t, Options{Lower: l})
	before := s.Stats().Snapshot().Requests
	if _, err := os.ReadFile(filepath.Join(mp, cudaKey, grpName)); err != nil {
		t.Fatal(err)
	}
	got := s.Stats().Snapshot().Requests
	for _, op := range []string{"LOOKUP", "OPEN", "READ"} {
		if got[op] <= before[op] {
			t.Errorf("%s: %d requests after a read, %d before", op, got[op], before[op])
		}
	}
	for op := range got {
		if op == "" {
			t.Errorf("a request kind without a name: %v", got)
		}
	}
}
