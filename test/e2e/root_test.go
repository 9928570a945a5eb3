package e2e

import (
	"os/exec"
	"strings"
	"testing"
	"time"

	"cargohold/test/proxy"
)

// TestMountRootListingFetchesNothing: ls -l, find -maxdepth 1 -ls and stat
// of every entry of the mount root answer from the index: every KEY shows,
// and no blob is read.
func TestMountRootListingFetchesNothing(t *testing.T) {
	p, src, ref := servedImage(t)
	keys := keysOf(t, src, "cuda:80:32")
	m := startFS(t, "", "", "-i", ref, "--plain-http", "--gpu", "cuda:80:32")
	p.Settle(t)
	p.Reset()

	out, err := exec.Command("ls", "-l", m.mnt).CombinedOutput()
	if err != nil {
		t.Fatalf("ls -l: %v\n%s", err, out)
	}
	for _, k := range keys {
		if !strings.Contains(string(out), k) {
			t.Fatalf("ls -l of the root does not show KEY %s", k)
		}
	}
	if out, err := exec.Command("find", m.mnt, "-maxdepth", "1", "-ls").CombinedOutput(); err != nil {
		t.Fatalf("find -maxdepth 1 -ls: %v\n%s", err, out)
	}
	args := []string{"-c", "%n %s %F"}
	for _, k := range keys {
		args = append(args, m.mnt+"/"+k)
	}
	if out, err := exec.Command("stat", args...).CombinedOutput(); err != nil {
		t.Fatalf("stat of every KEY: %v\n%s", err, out)
	}
	// A fetch started by any of these would show by now, prefetch included.
	time.Sleep(time.Second)
	p.Settle(t)
	if n := p.Count(func(r proxy.Req) bool { return r.IsBlob() }); n != 0 {
		t.Errorf("listing and stat-ing the root of %d KEYs made %d blob requests, want 0", len(keys), n)
	}
	if s := m.statusAfter(t); s.Fetches != 0 {
		t.Errorf("status after listing the root: %d fetches, want 0", s.Fetches)
	}
}
