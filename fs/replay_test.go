package fs

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"cargohold/test/replay"
)

func TestMain(m *testing.M) {
	replay.ChildMain() // replay.Run re-executes this test binary for Procs > 1
	os.Exit(m.Run())
}

// TestReplayAgainstMount runs the Triton access replay (test/replay) on a
// mount: hits from the images, a miss into the upper dir, and several
// processes at once (the launcher's executable mmap runs in those, never in
// the process that serves the mount).
func TestReplayAgainstMount(t *testing.T) {
	l := newFakeLower(t)
	expect := t.TempDir() // every KEY's source, as the images hold them
	for _, key := range []string{cudaKey, rocmKey, soKey} {
		copyDir(t, filepath.Join(l.dir, key), filepath.Join(expect, key))
	}
	if err := os.RemoveAll(filepath.Join(l.dir, rocmKey)); err != nil { // the images lack it: Triton compiles
		t.Fatal(err)
	}
	s, mp := testMount(t, Options{Lower: l})

	res, err := replay.Hit(mp, cudaKey, expect)
	if err != nil || res.Outcome != replay.OutcomeHit {
		t.Fatalf("hit %s: %+v, %v", cudaKey, res, err)
	}
	if err := replay.Miss(mp, rocmKey, filepath.Join(testdata, "vector-add-cache-rocm")); err != nil {
		t.Fatalf("miss %s: %v", rocmKey, err)
	}
	sum, err := replay.Run(context.Background(), replay.Options{
		Mode: replay.ModeHit, Root: mp, Keys: []string{cudaKey, soKey, rocmKey}, Expect: expect, Procs: 3,
	}, func(r replay.Result) {
		if r.Outcome != replay.OutcomeHit {
			t.Errorf("replay %s (proc %d): %s %s", r.Key, r.Proc, r.Outcome, r.Error)
		}
	})
	if err != nil || !sum.OK() || sum.Hits != 9 {
		t.Fatalf("replay in 3 processes: %+v, %v", sum, err)
	}
	if st := s.Stats().Snapshot(); st.LookupErrors != 0 || st.IOErrors != 0 {
		t.Errorf("stats %+v", st)
	}
}

// TestReplayConcurrentMisses has three processes compile the same KEYs at
// once: they rename over each other's files, possibly while open.
func TestReplayConcurrentMisses(t *testing.T) {
	l := newFakeLower(t)
	for _, key := range []string{cudaKey, rocmKey} {
		if err := os.RemoveAll(filepath.Join(l.dir, key)); err != nil {
			t.Fatal(err)
		}
	}
	upper := t.TempDir()
	_, mp := testMount(t, Options{Lower: l, Upper: upper})
	from := t.TempDir()
	for _, src := range []string{"vector-add-cache", "vector-add-cache-rocm"} {
		des, err := os.ReadDir(filepath.Join(testdata, src))
		if err != nil {
			t.Fatal(err)
		}
		for _, de := range des {
			copyDir(t, filepath.Join(testdata, src, de.Name()), filepath.Join(from, de.Name()))
		}
	}
	sum, err := replay.Run(context.Background(), replay.Options{
		Mode: replay.ModeAuto, Root: mp, Keys: []string{cudaKey, rocmKey}, From: from, Procs: 3,
	}, func(r replay.Result) {
		if r.Outcome == replay.OutcomeError {
			t.Errorf("replay %s (proc %d): %s", r.Key, r.Proc, r.Error)
		}
	})
	if err != nil || !sum.OK() || sum.Misses < 2 {
		t.Fatalf("auto replay in 3 processes: %+v, %v", sum, err)
	}
	for _, key := range []string{cudaKey, rocmKey} {
		if _, err := os.Stat(filepath.Join(upper, key)); err != nil {
			t.Errorf("compiled KEY %s not in the upper dir: %v", key, err)
		}
	}
}
