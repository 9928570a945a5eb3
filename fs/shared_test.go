package fs

import (
	"os"
	"testing"
)

// SharedRoot shows the root as 01777 whatever the upper dir's mode, which
// stays as it was.
func TestSharedRoot(t *testing.T) {
	upper := t.TempDir()
	os.Chmod(upper, 0o755)
	_, mp := testMount(t, Options{Upper: upper, SharedRoot: true})
	fi, err := os.Stat(mp)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o777 || fi.Mode()&os.ModeSticky == 0 {
		t.Fatalf("root mode %v, want sticky 0777", fi.Mode())
	}
	if fi, _ := os.Stat(upper); fi.Mode().Perm() != 0o755 {
		t.Fatalf("upper dir changed to %v", fi.Mode())
	}
	_, mp = testMount(t, Options{Upper: t.TempDir()})
	if fi, _ := os.Stat(mp); fi.Mode()&os.ModeSticky != 0 {
		t.Fatalf("without SharedRoot the root is %v", fi.Mode())
	}
}
