package fs

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	iofs "io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"cargohold/kind"
	"cargohold/triton"
)

const testdata = "../../shared/testdata/triton-cache"

// Fixture KEYs: the two real caches, a launcher and a KEY no image has.
var (
	cudaKey  = "5W7KJQDTJCL4UGPMKKCS7TEEPZKSWOY4774SZQ6674FWSXG5MNXQ"
	rocmKey  = "MCELTMXFCSPAMZYLZ3C3WPPYYVTVR4QOYNE52X3X6FIH7Z6N6X5A"
	soKey    = keyOf("launcher")
	missKey  = keyOf("not in any image")
	soName   = "cuda_utils.cpython-311-x86_64-linux-gnu.so"
	grpName  = "__grp__add_kernel.json"
	soSource = bytes.Repeat([]byte("\x7fELF launcher stand-in "), 1000)
)

func keyOf(s string) string {
	sum := sha256.Sum256([]byte(s))
	k, err := triton.KeyOf(hex.EncodeToString(sum[:]))
	if err != nil {
		panic(err)
	}
	return k
}

// fakeLower serves KEY dirs from a local dir, as the images would: group
// files in the image's relative form. It counts Entry calls, can fail a KEY,
// hold it at a gate, and counts open contents.
type fakeLower struct {
	dir     string
	entered chan string // a KEY each time Entry starts (dropped when full)

	mu        sync.Mutex
	calls     map[string]int
	fails     map[string]error
	gates     map[string]chan struct{}
	ignoreCtx bool
	hasErr    error     // Dir fails with it
	asked     []string  // the paths Dir was asked for
	kind      kind.Kind // set: files get kind.RewriteOf, not a rewrite of every group file

	open atomic.Int64 // contents opened and not closed
}

// newFakeLower builds the image side: both real caches and a launcher.
func newFakeLower(t *testing.T) *fakeLower {
	t.Helper()
	dir := t.TempDir()
	for _, src := range []string{"vector-add-cache", "vector-add-cache-rocm"} {
		des, err := os.ReadDir(filepath.Join(testdata, src))
		if err != nil {
			t.Fatalf("test data: %v", err)
		}
		for _, de := range des {
			copyDir(t, filepath.Join(testdata, src, de.Name()), filepath.Join(dir, de.Name()))
		}
	}
	if err := os.MkdirAll(filepath.Join(dir, soKey), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, soKey, soName), soSource, 0o755); err != nil {
		t.Fatal(err)
	}
	return &fakeLower{dir: dir, entered: make(chan string, 64), calls: map[string]int{},
		fails: map[string]error{}, gates: map[string]chan struct{}{}}
}

// copyDir copies a KEY dir, storing group files in the image's relative form.
func copyDir(t *testing.T, from, to string) {
	t.Helper()
	if err := os.MkdirAll(to, 0o755); err != nil {
		t.Fatal(err)
	}
	des, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, de := range des {
		data, err := os.ReadFile(filepath.Join(from, de.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if triton.IsGroupFile(de.Name()) {
			if data, err = triton.RewriteGroup(data, triton.ImageRoot); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(filepath.Join(to, de.Name()), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// Dirs lists the image dir's dirs below rel: KEYs at the root.
func (l *fakeLower) Dirs(rel string) []string {
	des, _ := os.ReadDir(filepath.Join(l.dir, rel))
	var keys []string
	for _, de := range des {
		if de.IsDir() {
			keys = append(keys, de.Name())
		}
	}
	return keys
}

// Dir answers from the image dir, as an index would: no Entry call, no
// gate. A dir with files is a unit.
func (l *fakeLower) Dir(ctx context.Context, rel string) (LowerDir, error) {
	l.mu.Lock()
	l.asked = append(l.asked, rel)
	err := l.hasErr
	l.mu.Unlock()
	if err != nil {
		return LowerDir{}, err
	}
	des, err := os.ReadDir(filepath.Join(l.dir, rel))
	if err != nil {
		return LowerDir{}, nil
	}
	d := LowerDir{Exists: true}
	for _, de := range des {
		if de.Type().IsRegular() {
			d.Unit = true
		}
	}
	return d, nil
}

func (l *fakeLower) Entry(ctx context.Context, key string) ([]LowerFile, error) {
	l.mu.Lock()
	l.calls[key]++
	gate, fail, ignore := l.gates[key], l.fails[key], l.ignoreCtx
	l.mu.Unlock()
	select {
	case l.entered <- key:
	default:
	}
	if gate != nil {
		if ignore {
			<-gate
		} else {
			select {
			case <-gate:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
	}
	if fail != nil {
		return nil, fail
	}
	dir := filepath.Join(l.dir, key)
	des, err := os.ReadDir(dir)
	if errors.Is(err, iofs.ErrNotExist) {
		return nil, fmt.Errorf("fake lower: KEY %s: %w", key, iofs.ErrNotExist)
	}
	if err != nil {
		return nil, err
	}
	var files []LowerFile
	for _, de := range des {
		if !de.Type().IsRegular() {
			continue
		}
		info, err := de.Info()
		if err != nil {
			return nil, err
		}
		p := filepath.Join(dir, de.Name())
		rewrite := kind.RewriteNone
		if triton.IsGroupFile(de.Name()) {
			rewrite = kind.RewriteGroup
		}
		if l.kind != "" {
			rewrite = kind.RewriteOf(l.kind, key, de.Name())
		}
		files = append(files, LowerFile{
			Name: de.Name(), Size: info.Size(), Mode: info.Mode().Perm(),
			Rewrite: rewrite,
			Open: func(context.Context) (Content, error) {
				f, err := os.Open(p)
				if err != nil {
					return nil, err
				}
				l.open.Add(1)
				return &countedFile{File: f, l: l}, nil
			},
		})
	}
	return files, nil
}

type countedFile struct {
	*os.File
	l *fakeLower
}

func (f *countedFile) Close() error {
	f.l.open.Add(-1)
	return f.File.Close()
}

func (l *fakeLower) callsFor(key string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.calls[key]
}

func (l *fakeLower) totalCalls() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, c := range l.calls {
		n += c
	}
	return n
}

func (l *fakeLower) fail(key string, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.fails[key] = err
}

// hold makes Entry for key wait until the returned func is called (also at
// cleanup, so that no Entry outlives the test).
func (l *fakeLower) hold(t *testing.T, key string) (release func()) {
	gate := make(chan struct{})
	l.mu.Lock()
	l.gates[key] = gate
	l.mu.Unlock()
	var once sync.Once
	release = func() { once.Do(func() { close(gate) }) }
	t.Cleanup(release)
	return release
}

// waitEntered waits until Entry was entered for key.
func (l *fakeLower) waitEntered(t *testing.T, key string) {
	t.Helper()
	for k := range l.entered {
		if k == key {
			return
		}
	}
}

// requireFUSE skips loudly where FUSE is truly absent, and fails in CI.
func requireFUSE(t *testing.T) {
	t.Helper()
	var missing string
	if _, err := os.Stat("/dev/fuse"); err != nil {
		missing = "/dev/fuse"
	} else if !haveFusermount() {
		missing = "fusermount3/fusermount"
	}
	if missing == "" {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("FUSE test: %s is missing, and CI=true", missing)
	}
	t.Skipf("SKIPPING FUSE TEST: %s is missing on this machine", missing)
}

func haveFusermount() bool {
	for _, dir := range filepath.SplitList(os.Getenv("PATH") + ":/bin:/usr/bin") {
		for _, name := range []string{"fusermount3", "fusermount"} {
			if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
				return true
			}
		}
	}
	return false
}

// testMount mounts a view on a fresh dir; cleanup unmounts and fails the
// test if that fails. opts.Upper defaults to a fresh dir.
func testMount(t *testing.T, opts Options) (*Server, string) {
	t.Helper()
	requireFUSE(t)
	if opts.Upper == "" {
		opts.Upper = t.TempDir()
	}
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	mp := t.TempDir()
	s, err := Mount(context.Background(), mp, opts)
	if err != nil {
		t.Fatalf("mount: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Unmount(); err != nil {
			t.Errorf("unmount: %v", err)
		}
	})
	return s, mp
}

// testLogger keeps the view's log and shows it when the test fails (or
// always, with CARGOHOLD_TEST_LOG=1).
func testLogger(t *testing.T) *slog.Logger {
	var mu sync.Mutex
	var buf bytes.Buffer
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		if (t.Failed() || os.Getenv("CARGOHOLD_TEST_LOG") == "1") && buf.Len() > 0 {
			t.Logf("view log:\n%s", buf.String())
		}
	})
	return slog.New(slog.NewTextHandler(lockedWriter{&mu, &buf}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type lockedWriter struct {
	mu  *sync.Mutex
	buf *bytes.Buffer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

// source is a fixture file as Triton wrote it.
func source(t *testing.T, key, name string) []byte {
	t.Helper()
	if key == soKey {
		return soSource
	}
	for _, src := range []string{"vector-add-cache", "vector-add-cache-rocm"} {
		data, err := os.ReadFile(filepath.Join(testdata, src, key, name))
		if err == nil {
			return data
		}
	}
	t.Fatalf("no source for %s/%s", key, name)
	return nil
}

// sourceNames lists a fixture KEY's files.
func sourceNames(t *testing.T, l *fakeLower, key string) []string {
	t.Helper()
	des, err := os.ReadDir(filepath.Join(l.dir, key))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, de := range des {
		names = append(names, de.Name())
	}
	sort.Strings(names)
	return names
}

func readDirNames(t *testing.T, dir string) []string {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("readdir %s: %v", dir, err)
	}
	var names []string
	for _, de := range des {
		names = append(names, de.Name())
	}
	sort.Strings(names)
	return names
}

func wantErrno(t *testing.T, what string, err error, want syscall.Errno) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("%s: got %v, want %v", what, err, want)
	}
}

// readAllOnce reads a file as CPython does: fstat, then read(st_size+1).
func readAllOnce(t *testing.T, p string) (data []byte, statSize int64) {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatalf("open %s: %v", p, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, fi.Size()+1)
	n, err := f.Read(buf)
	if err != nil && fi.Size() > 0 {
		t.Fatalf("read %s: %v", p, err)
	}
	return buf[:n], fi.Size()
}

// writeViaTmp writes a file as Triton's put() does: a tmp dir in KEY, the
// file there, rename onto KEY/name, rmdir of the tmp dir.
func writeViaTmp(t *testing.T, kdir, name string, data []byte) {
	t.Helper()
	tmp := filepath.Join(kdir, fmt.Sprintf("tmp.pid_%d_%x", os.Getpid(), sha256.Sum256([]byte(name))))
	if err := os.Mkdir(tmp, 0o777); err != nil {
		t.Fatalf("mkdir tmp: %v", err)
	}
	if err := os.WriteFile(filepath.Join(tmp, name), data, 0o666); err != nil {
		t.Fatalf("write tmp file: %v", err)
	}
	if err := os.Rename(filepath.Join(tmp, name), filepath.Join(kdir, name)); err != nil {
		t.Fatalf("rename onto %s: %v", name, err)
	}
	if err := syscall.Rmdir(tmp); err != nil {
		t.Fatalf("rmdir tmp: %v", err)
	}
}

// askedPaths returns the paths Dir was asked for.
func (l *fakeLower) askedPaths() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.asked)
}
