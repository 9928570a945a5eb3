package fs

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	iofs "io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"cargohold/kind"
)

// Node-level tests: the view's nodes attached to a go-fuse bridge, no mount.

func newTestRoot(t *testing.T, opts Options) (*dirNode, *view) {
	t.Helper()
	return newTestRootLife(t, t.Context(), opts)
}

// newTestRootLife is newTestRoot with the mount's lifetime life: when it
// ends, loads in flight are canceled, as at unmount.
func newTestRootLife(t *testing.T, life context.Context, opts Options) (*dirNode, *view) {
	t.Helper()
	if opts.Upper == "" {
		opts.Upper = t.TempDir()
	}
	if opts.PathPrefix == "" {
		opts.PathPrefix = "/cache"
	}
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	v, err := newView(life, opts)
	if err != nil {
		t.Fatal(err)
	}
	zero := time.Duration(0)
	gofs.NewNodeFS(v.root, &gofs.Options{EntryTimeout: &zero, AttrTimeout: &zero, NegativeTimeout: &zero})
	return v.root, v
}

// funcLower is a Lower made of a function.
type funcLower func(ctx context.Context, key string) ([]LowerFile, error)

func (f funcLower) Entry(ctx context.Context, key string) ([]LowerFile, error) { return f(ctx, key) }
func (f funcLower) Dirs(string) []string                                       { return nil }
func (f funcLower) Dir(context.Context, string) (LowerDir, error) {
	return LowerDir{Exists: true, Unit: true}, nil
}

// memContent is content without a file descriptor.
type memContent struct{ *bytes.Reader }

func (memContent) Fd() uintptr  { return ^uintptr(0) }
func (memContent) Close() error { return nil }

func memFile(name string, data []byte, group bool) LowerFile {
	r := kind.RewriteNone
	if group {
		r = kind.RewriteGroup
	}
	return LowerFile{Name: name, Size: int64(len(data)), Mode: 0o644, Rewrite: r,
		Open: func(context.Context) (Content, error) { return memContent{bytes.NewReader(data)}, nil }}
}

func TestNewRootValidates(t *testing.T) {
	if _, err := NewRoot(Options{PathPrefix: "/x"}); err == nil {
		t.Error("no upper dir: want an error")
	}
	if _, err := NewRoot(Options{Upper: t.TempDir()}); err == nil {
		t.Error("no path prefix: want an error")
	}
	if _, err := NewRoot(Options{Upper: filepath.Join(t.TempDir(), "missing"), PathPrefix: "/x"}); err == nil {
		t.Error("missing upper dir: want an error")
	}
}

func TestErrnoMapping(t *testing.T) {
	_, v := newTestRoot(t, Options{})
	cases := []struct {
		err     error
		keyPath bool
		want    syscall.Errno
	}{
		{fmt.Errorf("x: %w", iofs.ErrNotExist), true, syscall.ENOENT},
		{&os.PathError{Op: "open", Path: "p", Err: syscall.ENOENT}, false, syscall.ENOENT},
		{errors.New("registry said 500"), true, syscall.ENOENT},
		{fmt.Errorf("x: %w", context.DeadlineExceeded), true, syscall.ENOENT},
		{fmt.Errorf("x: %w", context.Canceled), true, syscall.EINTR},
		{fmt.Errorf("x: %w", ErrReadOnly), false, syscall.EROFS},
		{syscall.EROFS, false, syscall.EROFS},
		{fmt.Errorf("x: %w", context.Canceled), false, syscall.EINTR},
		{&os.PathError{Op: "mkdir", Path: "p", Err: syscall.EEXIST}, false, syscall.EEXIST},
		{syscall.ENOTEMPTY, false, syscall.ENOTEMPTY},
		{syscall.EIO, false, syscall.EIO},
		{errors.New("digest mismatch"), false, syscall.EIO},
		{fmt.Errorf("x: %w", context.DeadlineExceeded), false, syscall.EIO},
	}
	for _, c := range cases {
		if got := v.errno("test", c.err, c.keyPath); got != c.want {
			t.Errorf("errno(%v, keyPath=%v) = %v, want %v", c.err, c.keyPath, got, c.want)
		}
	}
	if got := v.errno("test", nil, true); got != 0 {
		t.Errorf("errno(nil) = %v", got)
	}
	st := v.stats.Snapshot()
	if st.LookupErrors != 2 || st.IOErrors != 3 || st.LastError == "" {
		t.Errorf("recorded %+v, want 2 lookup errors, 3 I/O errors and a last error", st)
	}
}

func TestStatsSnapshotJSON(t *testing.T) {
	var s Stats
	s.hit()
	s.miss()
	s.lookupError(errors.New("boom"))
	data, err := json.Marshal(s.Snapshot())
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]any{"hits": 1.0, "misses": 1.0, "lookup_errors": 1.0, "io_errors": 0.0, "last_error": "boom"} {
		if m[k] != want {
			t.Errorf("%s = %v, want %v (%s)", k, m[k], want, data)
		}
	}
	if _, ok := m["last_error_time"]; !ok {
		t.Errorf("no last_error_time in %s", data)
	}
	if _, ok := m["requests"]; ok {
		t.Errorf("requests in %s before any was counted", data)
	}
	if !reflect.DeepEqual((*Stats)(nil).Snapshot(), StatsSnapshot{}) {
		t.Error("nil Stats: want zeros")
	}
}

// TestLookupInterruptedLeavesFetch: an interrupted lookup answers at once;
// the fetch it started goes on for a later lookup.
func TestLookupInterruptedLeavesFetch(t *testing.T) {
	left := make(chan error, 1)
	entered := make(chan struct{})
	var once sync.Once
	release := make(chan struct{})
	l := funcLower(func(ctx context.Context, key string) ([]LowerFile, error) {
		once.Do(func() { close(entered) })
		select {
		case <-release:
			return []LowerFile{memFile("add_kernel.json", []byte("{}"), false)}, nil
		case <-ctx.Done():
			left <- ctx.Err()
			return nil, ctx.Err()
		}
	})
	root, v := newTestRoot(t, Options{Lower: l, LookupTimeout: time.Minute})
	var out fuse.EntryOut
	kin, errno := root.Lookup(context.Background(), cudaKey, &out)
	if errno != 0 {
		t.Fatal(errno)
	}
	kd := kin.Operations().(*dirNode)
	cancel := make(chan struct{})
	go func() {
		<-entered
		close(cancel) // the kernel's INTERRUPT
	}()
	_, errno = kd.Lookup(&fuse.Context{Cancel: cancel}, "add_kernel.json", &out)
	if errno != syscall.EINTR {
		t.Fatalf("interrupted lookup: %v, want EINTR (retried; not an answer about the images)", errno)
	}
	if st := v.stats.Snapshot(); st.LookupErrors != 0 {
		t.Errorf("stats %+v: an interruption is not a lookup error", st)
	}
	select {
	case err := <-left:
		t.Fatalf("the fetch was canceled with its lookup: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	if _, errno := kd.Lookup(context.Background(), "add_kernel.json", &out); errno != 0 {
		t.Fatalf("lookup once the fetch is in: %v", errno)
	}
}

// TestOrphanFetchesBounded: at most maxOrphans fetches go on with nobody
// waiting; the next one is canceled when its lookup gives up.
func TestOrphanFetchesBounded(t *testing.T) {
	var running atomic.Int64
	l := funcLower(func(ctx context.Context, key string) ([]LowerFile, error) {
		running.Add(1)
		<-ctx.Done()
		running.Add(-1)
		return nil, ctx.Err()
	})
	life, unmount := context.WithCancel(context.Background())
	defer unmount()
	root, v := newTestRootLife(t, life, Options{Lower: l, LookupTimeout: 20 * time.Millisecond})
	var out fuse.EntryOut
	for i := range maxOrphans + 3 {
		key := keyOf(fmt.Sprint("orphan ", i))
		kin, errno := root.Lookup(context.Background(), key, &out)
		if errno != 0 {
			t.Fatal(errno)
		}
		if _, errno := kin.Operations().(*dirNode).Lookup(context.Background(), "x", &out); errno != syscall.ENOENT {
			t.Fatalf("lookup past the deadline: %v", errno)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for running.Load() != maxOrphans && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if n := running.Load(); n != maxOrphans {
		t.Fatalf("%d fetches running with nobody waiting, want %d", n, maxOrphans)
	}
	v.mu.Lock()
	n := v.orphans
	v.mu.Unlock()
	if n != maxOrphans {
		t.Errorf("view counts %d orphans, want %d", n, maxOrphans)
	}
	unmount() // the mount goes away: its fetches end
	deadline = time.Now().Add(10 * time.Second)
	for running.Load() != 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if n := running.Load(); n != 0 {
		t.Fatalf("%d fetches still running after unmount", n)
	}
}

func TestBadImageEntriesAreNotShown(t *testing.T) {
	good := memFile("add_kernel.json", []byte("{}"), false)
	grp := []byte(`{"child_paths": {"add_kernel.json": ".triton/cache/` + cudaKey + `/add_kernel.json"}}`)
	short := memFile(grpName, grp, true)
	short.Size++ // the image claims a byte more than it has
	long := memFile(grpName, grp, true)
	long.Size--
	dir := memFile("d", nil, false)
	dir.Mode = os.ModeDir | 0o755
	noOpen := memFile("x", nil, false)
	noOpen.Open = nil
	neg := memFile("x", nil, false)
	neg.Size = -1
	failOpen := memFile(grpName, grp, true)
	failOpen.Open = func(context.Context) (Content, error) { return nil, errors.New("store: gone") }
	cases := map[string][]LowerFile{
		"no files":          nil,
		"slash in name":     {good, memFile("a/b", nil, false)},
		"dot-dot":           {good, memFile("..", nil, false)},
		"whiteout name":     {good, memFile(".wh.add_kernel.json", nil, false)},
		"listed twice":      {good, good},
		"a dir":             {good, dir},
		"no content":        {good, noOpen},
		"negative size":     {good, neg},
		"bad group JSON":    {good, memFile(grpName, []byte("{not json"), true)},
		"group path no KEY": {good, memFile(grpName, []byte(`{"child_paths": {"a": "/x/a"}}`), true)},
		"group too short":   {good, short},
		"group too long":    {good, long},
		"group open fails":  {good, failOpen},
	}
	for name, files := range cases {
		t.Run(name, func(t *testing.T) {
			l := funcLower(func(ctx context.Context, key string) ([]LowerFile, error) { return files, nil })
			root, v := newTestRoot(t, Options{Lower: l})
			var out fuse.EntryOut
			kin, errno := root.Lookup(context.Background(), cudaKey, &out)
			if errno != 0 {
				t.Fatalf("lookup of a listed KEY: %v", errno)
			}
			if _, errno := kin.Operations().(*dirNode).Lookup(context.Background(), "add_kernel.json", &out); errno != syscall.ENOENT {
				t.Fatalf("lookup in the KEY dir: %v, want ENOENT", errno)
			}
			if st := v.stats.Snapshot(); st.LookupErrors != 1 || st.Hits != 0 {
				t.Errorf("stats %+v, want one lookup error", st)
			}
		})
	}
}

func TestNoLowerIsAMiss(t *testing.T) {
	root, v := newTestRoot(t, Options{})
	var out fuse.EntryOut
	if _, errno := root.Lookup(context.Background(), cudaKey, &out); errno != syscall.ENOENT {
		t.Fatalf("lookup without images: %v", errno)
	}
	if st := v.stats.Snapshot(); st.Misses != 1 || st.LookupErrors != 0 {
		t.Errorf("stats %+v, want one miss", st)
	}
}

// lookupFile walks root/key/name at node level.
func lookupFile(t *testing.T, root *dirNode, key, name string) *lowerFile {
	t.Helper()
	var out fuse.EntryOut
	kin, errno := root.Lookup(context.Background(), key, &out)
	if errno != 0 {
		t.Fatalf("lookup %s: %v", key, errno)
	}
	fin, errno := kin.Operations().(*dirNode).Lookup(context.Background(), name, &out)
	if errno != 0 {
		t.Fatalf("lookup %s/%s: %v", key, name, errno)
	}
	return fin.Operations().(*lowerFile)
}

func TestReadWithoutFd(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789"), 1000)
	l := funcLower(func(ctx context.Context, key string) ([]LowerFile, error) {
		return []LowerFile{memFile("add_kernel.cubin", data, false)}, nil
	})
	root, _ := newTestRoot(t, Options{Lower: l})
	n := lookupFile(t, root, cudaKey, "add_kernel.cubin")
	fh, flags, errno := n.Open(context.Background(), syscall.O_RDONLY)
	if errno != 0 || flags&fuse.FOPEN_KEEP_CACHE == 0 {
		t.Fatalf("open: %v, flags %#x (want KEEP_CACHE)", errno, flags)
	}
	h := fh.(*lowerHandle)
	defer h.Release(context.Background())
	for _, c := range []struct{ off, n int }{{0, 4096}, {4096, 4096}, {9000, 4096}, {10000, 10}, {20000, 10}} {
		dest := make([]byte, c.n)
		res, errno := h.Read(context.Background(), dest, int64(c.off))
		if errno != 0 {
			t.Fatalf("read at %d: %v", c.off, errno)
		}
		got, _ := res.Bytes(make([]byte, c.n))
		want := data[min(c.off, len(data)):min(c.off+c.n, len(data))]
		if !bytes.Equal(got, want) {
			t.Errorf("read %d at %d: %d bytes, want %d", c.n, c.off, len(got), len(want))
		}
	}
	for _, fl := range []uint32{syscall.O_WRONLY, syscall.O_RDWR, syscall.O_RDONLY | syscall.O_TRUNC} {
		if _, _, errno := n.Open(context.Background(), fl); errno != syscall.EROFS {
			t.Errorf("open %#x: %v, want EROFS", fl, errno)
		}
	}
	if errno := n.Setattr(context.Background(), nil, &fuse.SetAttrIn{}, &fuse.AttrOut{}); errno != syscall.EROFS {
		t.Errorf("setattr: %v, want EROFS", errno)
	}
}

func TestRmdirKeyWhenImagesFail(t *testing.T) {
	upper := t.TempDir()
	if err := os.Mkdir(filepath.Join(upper, cudaKey), 0o755); err != nil {
		t.Fatal(err)
	}
	calls := 0
	l := funcLower(func(ctx context.Context, key string) ([]LowerFile, error) {
		calls++
		return nil, errors.New("registry down")
	})
	root, v := newTestRoot(t, Options{Lower: l, Upper: upper})
	// An empty upper half says nothing about the image's half: no success.
	if errno := root.Rmdir(context.Background(), cudaKey); errno != syscall.EIO {
		t.Fatalf("rmdir: %v, want EIO", errno)
	}
	if _, err := os.Stat(filepath.Join(upper, cudaKey)); err != nil {
		t.Fatalf("upper KEY dir after a refused rmdir: %v", err)
	}
	if st := v.stats.Snapshot(); !strings.Contains(st.LastError, "registry down") {
		t.Errorf("last error %q, want the cause", st.LastError)
	}
	// The KEY dir node shows its upper half; it does not ask again at once.
	var out fuse.EntryOut
	kin, errno := root.Lookup(context.Background(), cudaKey, &out)
	if errno != 0 {
		t.Fatalf("lookup of the upper KEY: %v", errno)
	}
	kd := kin.Operations().(*dirNode)
	before := calls
	for range 3 {
		if _, errno := kd.Lookup(context.Background(), "add_kernel.json", &out); errno != syscall.ENOENT {
			t.Fatalf("lookup in KEY: %v, want ENOENT", errno)
		}
	}
	if calls-before != 1 {
		t.Errorf("asked the images %d times for 3 lookups, want 1 (then wait %v)", calls-before, lowerRetry)
	}
}

// TestOpsWhileImagesCannotAnswer: in a KEY dir with an upper half whose
// images fail, writes go on as if the images had nothing, removals leave a
// whiteout just in case, and only exact answers fail.
func TestOpsWhileImagesCannotAnswer(t *testing.T) {
	upper := t.TempDir()
	kup := filepath.Join(upper, cudaKey)
	if err := os.Mkdir(kup, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"a", "tmpfile", "tmpfile2"} {
		if err := os.WriteFile(filepath.Join(kup, n), []byte(n), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	l := funcLower(func(ctx context.Context, key string) ([]LowerFile, error) {
		return nil, errors.New("registry down")
	})
	root, v := newTestRoot(t, Options{Lower: l, Upper: upper})
	bg := context.Background()
	var out fuse.EntryOut
	kin, errno := root.Lookup(bg, cudaKey, &out)
	if errno != 0 {
		t.Fatalf("lookup of the upper KEY: %v", errno)
	}
	kd := kin.Operations().(*dirNode)

	if _, errno := kd.Mkdir(bg, "tmp.pid_1_x", 0o755, &out); errno != 0 {
		t.Fatalf("mkdir tmp dir: %v", errno)
	}
	if errno := kd.Rename(bg, "tmpfile", kd, "add_kernel.cubin", 0); errno != 0 {
		t.Fatalf("rename onto a name the images may hold: %v", errno)
	}
	if got, err := os.ReadFile(filepath.Join(kup, "add_kernel.cubin")); err != nil || string(got) != "tmpfile" {
		t.Errorf("renamed file: %q %v", got, err)
	}
	if !hasWhiteout(kup, "tmpfile") {
		t.Error("no whiteout for the renamed source")
	}
	if errno := kd.Rename(bg, "tmpfile2", kd, "add_kernel.json", unix.RENAME_NOREPLACE); errno != syscall.EIO {
		t.Errorf("rename NOREPLACE onto a name the images may hold: %v, want EIO", errno)
	}
	if errno := kd.Rename(bg, "tmpfile2", kd, "a", unix.RENAME_NOREPLACE); errno != syscall.EEXIST {
		t.Errorf("rename NOREPLACE onto an upper file: %v, want EEXIST", errno)
	}
	if errno := kd.Unlink(bg, "a"); errno != 0 {
		t.Fatalf("unlink of an upper file: %v", errno)
	}
	if exists(filepath.Join(kup, "a")) || !hasWhiteout(kup, "a") {
		t.Error("unlink: want the upper file gone and a whiteout in its place")
	}
	if errno := kd.Unlink(bg, "add_kernel.ttir"); errno != syscall.ENOENT {
		t.Errorf("unlink of a name only the images could have: %v, want ENOENT", errno)
	}
	cancel := make(chan struct{})
	close(cancel)
	if _, errno := kd.Mkdir(&fuse.Context{Cancel: cancel}, "tmp.pid_2_x", 0o755, &out); errno != syscall.EINTR {
		t.Errorf("interrupted mkdir: %v, want EINTR", errno)
	}
	if errno := root.Rmdir(bg, cudaKey); errno != syscall.ENOTEMPTY {
		t.Errorf("rmdir KEY: %v, want ENOTEMPTY", errno)
	}
	if st := v.stats.Snapshot(); st.IOErrors != 1 || !strings.Contains(st.LastError, "registry down") {
		t.Errorf("stats %+v: want one I/O error (NOREPLACE), caused by the images", st)
	}
}

// TestOpenPassesRequestContext: a lower file's Open gets the FUSE request's
// interruption and the lookup deadline, for a fetch of evicted content.
func TestOpenPassesRequestContext(t *testing.T) {
	type call struct {
		deadline, at time.Time
		ok           bool
	}
	calls := make(chan call, 2)
	f := memFile("add_kernel.cubin", []byte("cubin"), false)
	f.Open = func(ctx context.Context) (Content, error) {
		d, ok := ctx.Deadline()
		calls <- call{d, time.Now(), ok}
		if !ok {
			return nil, errors.New("open without a deadline")
		}
		<-ctx.Done()
		return nil, fmt.Errorf("fetch: %w", ctx.Err())
	}
	l := funcLower(func(ctx context.Context, key string) ([]LowerFile, error) { return []LowerFile{f}, nil })
	const timeout = 300 * time.Millisecond
	root, _ := newTestRoot(t, Options{Lower: l, LookupTimeout: timeout})
	n := lookupFile(t, root, cudaKey, "add_kernel.cubin")

	start := time.Now()
	if _, _, errno := n.Open(context.Background(), syscall.O_RDONLY); errno != syscall.EIO {
		t.Errorf("open past the deadline: %v, want EIO", errno)
	}
	// The deadline was set between the FUSE open's start and the call.
	if c := <-calls; !c.ok || c.deadline.Before(start.Add(timeout)) || c.deadline.After(c.at.Add(timeout)) {
		t.Errorf("Open's deadline %v (set: %v), want %v after the open", c.deadline, c.ok, timeout)
	}
	cancel := make(chan struct{})
	close(cancel) // the kernel's INTERRUPT
	if _, _, errno := n.Open(&fuse.Context{Cancel: cancel}, syscall.O_RDONLY); errno != syscall.EINTR {
		t.Errorf("interrupted open: %v, want EINTR", errno)
	}
	<-calls
}

// TestLookupKeepsDirMovedToMergedName: a plain dir renamed onto a name
// where the kind merges dirs (Inductor's tmp.<uuid> onto
// triton/<device>/<KEY>) finds its upper half by its place; a later
// lookup of the name (the kernel's entry timed out) answers the node the
// tree holds, not a new merged node that would cut a process inside the
// held one off its dir.
func TestLookupKeepsDirMovedToMergedName(t *testing.T) {
	root, _ := newTestRoot(t, Options{Kind: "inductor"})
	ctx := context.Background()
	var out fuse.EntryOut
	mkdir := func(d *dirNode, name string) *dirNode { // MKDIR, as the bridge adds it to the tree
		t.Helper()
		in, errno := d.Mkdir(ctx, name, 0o755, &out)
		if errno != 0 {
			t.Fatalf("mkdir %s: %v", name, errno)
		}
		d.AddChild(name, in, true)
		return in.Operations().(*dirNode)
	}
	dev := mkdir(mkdir(root, "triton"), "0")
	tmp := mkdir(dev, "tmp.4242")
	if tmp.kind != plainDir {
		t.Fatalf("tmp.4242 is a dir of kind %d, want plain", tmp.kind)
	}
	if errno := dev.Rename(ctx, "tmp.4242", dev, cudaKey, 0); errno != 0 {
		t.Fatalf("rename onto the KEY: %v", errno)
	}
	dev.MvChild("tmp.4242", dev.EmbeddedInode(), cudaKey, true) // as the bridge does
	in, errno := dev.Lookup(ctx, cudaKey, &out)
	if errno != 0 {
		t.Fatalf("lookup of the KEY: %v", errno)
	}
	if in != tmp.EmbeddedInode() {
		t.Errorf("the lookup answered a new node (%T, ino %d), not the one the tree holds", in.Operations(), in.StableAttr().Ino)
	}
	if p, ok := tmp.dirPath(); !ok || !strings.HasSuffix(p, "/triton/0/"+cudaKey) {
		t.Errorf("the moved dir's upper path: %q, %v", p, ok)
	}
}
