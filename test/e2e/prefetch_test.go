package e2e

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"

	"cargohold/layer"
	"cargohold/resolver"
	"cargohold/test/replay"
	"cargohold/triton"
)

// waitStatus polls status.json until ok holds (or 60s pass) and returns
// the last status read.
func (m *fsMount) waitStatus(t *testing.T, what string, ok func(fsStatus) bool) fsStatus {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		s, err := m.status()
		if err == nil && ok(s) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 60s; last status %+v (%v)", what, s, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// dirBytes is the content size of src's KEY dirs keys.
func dirBytes(t *testing.T, src string, keys []string) int64 {
	t.Helper()
	var n int64
	for _, k := range keys {
		des, err := os.ReadDir(filepath.Join(src, k))
		if err != nil {
			t.Fatal(err)
		}
		for _, de := range des {
			fi, err := de.Info()
			if err != nil {
				t.Fatal(err)
			}
			n += fi.Size()
		}
	}
	return n
}

// TestMountPrefetch: by default, once a lookup has been served from the
// image, the image's KEYs that fit the GPU come in a few large ranged reads;
// later hits cost no request, and the KEY that does not fit stays out.
func TestMountPrefetch(t *testing.T) {
	p, src, ref := servedImage(t)
	keys := keysOf(t, src, "cuda:80:32")
	m := startFS(t, "", "", "-i", ref, "--plain-http", "--gpu", "cuda:80:32")
	p.Reset()
	if _, err := replay.Hit(m.mnt, keys[0], src); err != nil {
		t.Fatal(err)
	}
	// Every other cuda:80 kernel and the launcher.
	want := int64(len(keys))
	s := m.waitStatus(t, "prefetch", func(s fsStatus) bool { return s.Engine.PrefetchDirs >= want })
	if s.Engine.PrefetchDirs != want || s.Engine.PrefetchSkipped != 0 || s.Engine.PrefetchRanges > 4 {
		t.Fatalf("engine %+v: want %d dirs in at most 4 ranges", s.Engine, want)
	}
	p.Settle(t)
	blobs := blobGets(p)
	if int64(blobs) != 1+s.Engine.PrefetchRanges {
		t.Errorf("%d blob GETs: want the hit's and one per range (%d)", blobs, s.Engine.PrefetchRanges)
	}
	p.Reset()
	for _, k := range keys[1:] {
		if _, err := replay.Hit(m.mnt, k, src); err != nil {
			t.Fatal(err)
		}
	}
	if n := p.Count(nil); n != 0 {
		t.Errorf("%d hits after the prefetch made %d requests", len(keys)-1, n)
	}
	// vector-add is sm_75: it does not fit and was not fetched.
	if _, err := os.Stat(filepath.Join(m.mnt, vectorAddKey)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("KEY of another GPU: %v", err)
	}
}

// TestMountPrefetchBudget: prefetch fills --cache-size and stops; it never
// evicts what a lookup brought in or what is open; a lookup afterwards is
// served, at the cost of prefetched content.
func TestMountPrefetchBudget(t *testing.T) {
	_, src, ref := servedImage(t)
	keys := keysOf(t, src, "cuda:80:32")
	limit := dirBytes(t, src, keys) / 4
	m := startFS(t, "", "", "-i", ref, "--plain-http", "--gpu", "cuda:80:32", "--cache-size", strconv.FormatInt(limit, 10))
	// The last KEY first: the prefetch starts at the front of the layer.
	first := keys[len(keys)-1]
	if _, err := replay.Hit(m.mnt, first, src); err != nil {
		t.Fatal(err)
	}
	// A file of it stays open throughout.
	grp := groupFile(t, src, first)
	f, err := os.Open(filepath.Join(m.mnt, first, grp))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var bin string
	des, _ := os.ReadDir(filepath.Join(src, first))
	for _, de := range des {
		if filepath.Ext(de.Name()) == ".cubin" {
			bin = de.Name()
		}
	}
	fb, err := os.Open(filepath.Join(m.mnt, first, bin))
	if err != nil {
		t.Fatal(err)
	}
	defer fb.Close()

	s := m.waitStatus(t, "prefetch stopped by the budget", func(s fsStatus) bool { return s.Engine.PrefetchSkipped > 0 })
	time.Sleep(500 * time.Millisecond) // ranges in flight end
	s = m.statusAfter(t)
	if s.Store.Evictions != 0 || s.Store.Bytes > limit || s.Engine.PrefetchDirs == 0 {
		t.Fatalf("status %+v (limit %d): want a partial prefetch within the limit, nothing evicted", s, limit)
	}
	if s.Store.Bytes < limit/2 {
		t.Errorf("prefetch stopped at %d of %d bytes", s.Store.Bytes, limit)
	}
	// Hits of KEYs it did not get still work, evicting prefetched content,
	// never the KEY in use.
	for _, k := range keys[len(keys)-40 : len(keys)-1] {
		if _, err := replay.Hit(m.mnt, k, src); err != nil {
			t.Fatalf("hit after the budget was used: %v", err)
		}
	}
	s = m.statusAfter(t)
	if s.Store.Bytes > limit {
		t.Errorf("store %d bytes over the limit %d", s.Store.Bytes, limit)
	}
	if _, err := replay.Hit(m.mnt, first, src); err != nil {
		t.Fatalf("the KEY in use: %v", err)
	}
	buf := make([]byte, 16)
	if _, err := fb.ReadAt(buf, 0); err != nil {
		t.Fatalf("read of the open file: %v", err)
	}
}

// groupFile is the name of KEY's group file in src.
func groupFile(t *testing.T, src, key string) string {
	t.Helper()
	des, err := os.ReadDir(filepath.Join(src, key))
	if err != nil {
		t.Fatal(err)
	}
	for _, de := range des {
		if triton.IsGroupFile(de.Name()) {
			return de.Name()
		}
	}
	t.Fatalf("no group file in %s", key)
	return ""
}

// TestMountLookupJumpsQueue: while the prefetch's ranges are stuck in the
// registry, hits of KEYs not local are served one request each, at once.
func TestMountLookupJumpsQueue(t *testing.T) {
	p, src, ref := servedImage(t)
	keys := keysOf(t, src, "cuda:80:32")
	m := startFS(t, "", "", "-i", ref, "--plain-http", "--gpu", "cuda:80:32")
	p.SetStallRanges(256 << 10) // single KEY dirs are far smaller; prefetch ranges wait
	if _, err := replay.Hit(m.mnt, keys[0], src); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for p.Pending() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no prefetch range reached the registry")
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, k := range []string{keys[1], keys[len(keys)/2], keys[len(keys)-1]} {
		start := time.Now()
		if _, err := replay.Hit(m.mnt, k, src); err != nil {
			t.Fatalf("hit while the prefetch is stuck: %v", err)
		}
		if took := time.Since(start); took > 3*time.Second {
			t.Errorf("hit of %s while the prefetch is stuck took %v", k, took)
		}
	}
	if s := m.statusAfter(t); s.Engine.PrefetchDirs != 0 {
		t.Fatalf("prefetch committed %d dirs while its ranges were stalled", s.Engine.PrefetchDirs)
	}
	p.SetStallRanges(0)
	m.waitStatus(t, "prefetch after the stall", func(s fsStatus) bool { return s.Engine.PrefetchDirs > 0 })
}

// TestMountFetchOutlivesLookup: a KEY whose fetch takes longer than
// --fetch-timeout is a miss for the lookup that started it, and a hit for
// a later one, with no second fetch.
func TestMountFetchOutlivesLookup(t *testing.T) {
	p, src, ref := servedImage(t)
	keys := keysOf(t, src, "cuda:80:32")
	m := startFS(t, "", "", "-i", ref, "--plain-http", "--gpu", "cuda:80:32", "--fetch-timeout", "1s", "--prefetch", "none")
	p.SetLatency(2500 * time.Millisecond)
	p.Reset()
	start := time.Now()
	_, err := replay.Hit(m.mnt, keys[0], src)
	if took := time.Since(start); !errors.Is(err, replay.ErrNotFound) || took > 2500*time.Millisecond {
		t.Fatalf("hit slower than --fetch-timeout: %v after %v, want a miss within the timeout", err, took)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		_, err := replay.Hit(m.mnt, keys[0], src)
		if err == nil {
			break
		}
		if !errors.Is(err, replay.ErrNotFound) || time.Now().After(deadline) {
			t.Fatalf("later hit: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if n := blobGets(p); n != 1 {
		t.Errorf("%d blob GETs, want the one fetch that outlived its lookup", n)
	}
}

// TestMountFailedFetchCompilesLocally: a KEY the catalog lists but whose
// fetch fails is a miss; Triton's local compile into it lands (mkdir gets
// EEXIST, the writes go to the upper dir, rmdir of the KEY fails
// ENOTEMPTY) and is read back, also after a remount.
func TestMountFailedFetchCompilesLocally(t *testing.T) {
	p, src, ref := servedImage(t)
	keys := keysOf(t, src, "cuda:80:32")
	state := t.TempDir()
	mnt := filepath.Join(t.TempDir(), "mnt")
	args := []string{"-i", ref, "--plain-http", "--gpu", "cuda:80:32", "--prefetch", "none"}
	m := startFS(t, mnt, state, args...)
	p.FlipByte("/blobs/", 10)
	if _, err := replay.Hit(m.mnt, keys[0], src); !errors.Is(err, replay.ErrNotFound) {
		t.Fatalf("hit of a corrupt KEY: %v, want a miss", err)
	}
	if err := replay.Miss(m.mnt, keys[0], src); err != nil {
		t.Fatalf("local compile into a KEY whose fetch failed: %v", err)
	}
	if err := syscall.Rmdir(filepath.Join(m.mnt, keys[0])); !errors.Is(err, syscall.ENOTEMPTY) {
		t.Fatalf("rmdir of the compiled KEY: %v, want ENOTEMPTY", err)
	}
	if err := p.ClearFaults(); err != nil {
		t.Fatal(err)
	}
	m.stop(t)
	// The upper dir is the dir under the mount.
	if _, err := os.Stat(filepath.Join(mnt, keys[0], groupFile(t, src, keys[0]))); err != nil {
		t.Fatalf("local compile not in the upper dir: %v", err)
	}
	m = startFS(t, mnt, state, args...)
	if _, err := replay.Hit(m.mnt, keys[0], src); err != nil {
		t.Fatalf("hit of the local compile after a remount: %v", err)
	}
}

// TestMountColdLookupsParallel: a cold KEY whose fetch hangs does not hold
// the cache root's lock: Triton's mkdir(ROOT/KEY) of other KEYs (and of
// that one) answers EEXIST at once.
func TestMountColdLookupsParallel(t *testing.T) {
	p, src, ref := servedImage(t)
	keys := keysOf(t, src, "cuda:80:32")
	m := startFS(t, "", "", "-i", ref, "--plain-http", "--gpu", "cuda:80:32", "--fetch-timeout", "20s", "--prefetch", "none")
	p.SetStall(true)
	done := make(chan error, 1)
	go func() {
		_, err := replay.Hit(m.mnt, keys[0], src)
		done <- err
	}()
	deadline := time.Now().Add(10 * time.Second)
	for p.Pending() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the first KEY's fetch did not reach the registry")
		}
		time.Sleep(5 * time.Millisecond)
	}
	for _, k := range []string{keys[1], keys[2], keys[0]} {
		start := time.Now()
		err := syscall.Mkdir(filepath.Join(m.mnt, k), 0o777)
		if took := time.Since(start); !errors.Is(err, syscall.EEXIST) || took > 2*time.Second {
			t.Fatalf("mkdir(ROOT/%s) while a fetch hangs: %v after %v, want EEXIST at once", k, err, took)
		}
	}
	select {
	case err := <-done:
		t.Fatalf("the stalled hit ended: %v", err)
	default:
	}
	p.SetStall(false)
	if err := <-done; err != nil {
		t.Fatalf("the hit once the registry answers: %v", err)
	}
}

// TestMountAccessOrderPacking: the mount records the order of first
// lookups (status --trace), and cargohold -c --order packs those KEY dirs
// first in the layer, in that order.
func TestMountAccessOrderPacking(t *testing.T) {
	_, src, ref := servedImage(t)
	keys := keysOf(t, src, "cuda:80:32")
	m := startFS(t, "", "", "-i", ref, "--plain-http", "--gpu", "cuda:80:32", "--prefetch", "none")
	order := []string{keys[300], keys[7], vectorAddKey, keys[123]}
	for _, k := range order {
		if k == vectorAddKey {
			// Not in the image for this GPU: compiled locally, recorded too.
			if err := replay.Miss(m.mnt, k, src); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if _, err := replay.Hit(m.mnt, k, src); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := replay.Hit(m.mnt, keys[7], src); err != nil { // a repeat adds nothing
		t.Fatal(err)
	}
	trace := must(t, nil, "cargohold-fs", "status", "--state-dir", m.state, "--trace").stdout
	if got := strings.Fields(trace); !slices.Equal(got, order) {
		t.Fatalf("status --trace:\n%v\nwant\n%v", got, order)
	}
	orderFile := filepath.Join(t.TempDir(), "order")
	if err := os.WriteFile(orderFile, []byte(trace), 0o644); err != nil {
		t.Fatal(err)
	}
	layout := filepath.Join(t.TempDir(), "oci")
	r := must(t, nil, "cargohold", "-c", "-i", "oci:"+layout+":ordered", "-d", src, "--order", orderFile)
	if !strings.Contains(r.stderr, "KEY dirs in access order first") {
		t.Errorf("create log does not mention the order:\n%s", r.stderr)
	}
	res := resolver.New(resolver.Options{Store: t.TempDir(), Keychain: authn.NewMultiKeychain()})
	ctx := context.Background()
	im, err := res.Fetch(ctx, "oci:"+layout+":ordered")
	if err != nil {
		t.Fatal(err)
	}
	l := im.LayerRef(0)
	b, err := res.Blob(ctx, l)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	idx, err := layer.Open(b, b.Size(), l.TOCDigest)
	if err != nil {
		t.Fatal(err)
	}
	var last int64 = -1
	for _, k := range order { // vector-add is in the cache dir, so packed too
		d := idx.Dirs[k]
		if d == nil || d.Offset <= last {
			t.Fatalf("KEY %s not in access order in the layer (offset after %d): %+v", k, last, d)
		}
		last = d.Offset
	}
	for k, d := range idx.Dirs {
		if !slices.Contains(order, k) && d.Offset < last {
			t.Fatalf("KEY %s (not in the order) at %d, before the ordered ones end at %d", k, d.Offset, last)
		}
	}
}
