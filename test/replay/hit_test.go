package replay

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"cargohold/triton"
)

func TestHitTestdata(t *testing.T) {
	for name, key := range map[string]string{"vector-add-cache": cudaKey, "vector-add-cache-rocm": rocmKey} {
		src := testdata(t, name)
		root := extracted(t, src)
		r, err := Hit(root, key, src)
		if err != nil {
			t.Fatalf("%s: %v\n%s", name, err, strings.Join(r.Trace, "\n"))
		}
		if r.Outcome != OutcomeHit || r.Kind != "kernel" || r.Name != "add_kernel" || r.Files != 7 {
			t.Fatalf("%s: %+v", name, r)
		}
		var total int64
		for _, f := range []string{"add_kernel.json", "add_kernel.ttir", "add_kernel.ttgir", "add_kernel.llir", "add_kernel.cubin", "add_kernel.ptx",
			"add_kernel.hsaco", "add_kernel.amdgcn", "__grp__add_kernel.json"} {
			if st, err := os.Stat(filepath.Join(root, key, f)); err == nil {
				total += st.Size()
			}
		}
		if r.Bytes != total {
			t.Fatalf("%s: read %d bytes, files hold %d", name, r.Bytes, total)
		}
	}
}

// TestHitSyscalls pins the HIT sequence to what CPython 3.11 running
// Triton 3.x's FileCacheManager does (recorded with strace).
func TestHitSyscalls(t *testing.T) {
	src := testdata(t, "vector-add-cache")
	root := extracted(t, src)
	r, err := HitNamed(root, cudaKey, "add_kernel", src)
	if err != nil {
		t.Fatal(err)
	}
	kd := root + "/" + cudaKey
	size := func(f string) int64 {
		st, err := os.Stat(kd + "/" + f)
		if err != nil {
			t.Fatal(err)
		}
		return st.Size()
	}
	pyRead := func(f string) []string {
		n := size(f)
		return []string{
			fmt.Sprintf("openat(%q, O_RDONLY|O_CLOEXEC) = FD", kd+"/"+f),
			"fstat(FD) = 0", "ioctl(FD, TCGETS) = ENOTTY", "lseek(FD, 0, SEEK_CUR) = 0", "lseek(FD, 0, SEEK_CUR) = 0", "fstat(FD) = 0",
			fmt.Sprintf("read(FD, %d) = %d", n+1, n), "read(FD, 1) = 0", "close(FD) = 0",
		}
	}
	want := []string{
		fmt.Sprintf("stat(%q) = 0", root),
		fmt.Sprintf("mkdir(%q, 0777) = EEXIST", kd),
		fmt.Sprintf("stat(%q) = 0", kd),
		fmt.Sprintf("stat(%q) = 0", kd+"/__grp__add_kernel.json"),
	}
	want = append(want, pyRead("__grp__add_kernel.json")...)
	files := []string{"add_kernel.ttir", "add_kernel.ttgir", "add_kernel.llir", "add_kernel.ptx", "add_kernel.cubin", "add_kernel.json"}
	for _, f := range files {
		want = append(want, fmt.Sprintf("stat(%q) = 0", kd+"/"+f))
	}
	for _, f := range append([]string{"add_kernel.json"}, files[:5]...) {
		want = append(want, pyRead(f)...)
	}
	got := normalizeFDs(r.Trace)
	if !slices.Equal(got, want) {
		t.Fatalf("trace:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

var fdNumRE = regexp.MustCompile(`^(read|write|fstat|ioctl|lseek|close|getdents64|flock|fchmod)\(\d+`)
var openRE = regexp.MustCompile(`^(openat\(.*\)) = \d+$`)

func normalizeFDs(trace []string) []string {
	var out []string
	for _, l := range trace {
		l = fdNumRE.ReplaceAllString(l, "$1(FD")
		l = openRE.ReplaceAllString(l, "$1 = FD")
		out = append(out, l)
	}
	return out
}

func TestHitCorruptByte(t *testing.T) {
	src := testdata(t, "vector-add-cache")
	root := extracted(t, src)
	p := filepath.Join(root, cudaKey, "add_kernel.cubin")
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	data[1234] ^= 0x40
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := Hit(root, cudaKey, src)
	var m *MismatchError
	if !errors.As(err, &m) || m.File != "add_kernel.cubin" || m.Offset != 1234 || !r.Mismatch || r.Outcome != OutcomeError {
		t.Fatalf("want a mismatch at add_kernel.cubin:1234, got %v (%+v)", err, r)
	}
	// Without a source to compare with, the hit itself works.
	if _, err := Hit(root, cudaKey, ""); err != nil {
		t.Fatal(err)
	}
	// A truncated file differs at its end.
	if err := os.WriteFile(p, data[:100], 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Hit(root, cudaKey, src); !errors.As(err, &m) || m.Offset != 100 || m.Got != 100 {
		t.Fatalf("truncated: %v", err)
	}
}

func TestHitOutsideRoot(t *testing.T) {
	src := testdata(t, "vector-add-cache")
	grp := filepath.Join(cudaKey, "__grp__add_kernel.json")
	for name, rewrite := range map[string]func(root string, data []byte) []byte{
		// The copy was not rewritten: paths of the compiling machine.
		"other machine": func(root string, data []byte) []byte {
			out, _ := os.ReadFile(filepath.Join(src, grp))
			return out
		},
		// Relative paths, as stored in an image.
		"image form": func(root string, data []byte) []byte {
			out, _ := triton.RewriteGroup(data, triton.ImageRoot)
			return out
		},
		// Under ROOT, but another KEY's dir.
		"other key": func(root string, data []byte) []byte {
			return []byte(strings.Replace(string(data), "/"+cudaKey+"/add_kernel.ptx", "/"+rocmKey+"/add_kernel.ptx", 1))
		},
		// Escaping ROOT with dot-dot.
		"dot-dot": func(root string, data []byte) []byte {
			return []byte(strings.Replace(string(data), root+"/"+cudaKey+"/add_kernel.ttir", root+"/../x/"+cudaKey+"/add_kernel.ttir", 1))
		},
	} {
		root := extracted(t, src)
		data, _ := os.ReadFile(filepath.Join(root, grp))
		if err := os.WriteFile(filepath.Join(root, grp), rewrite(root, data), 0o644); err != nil {
			t.Fatal(err)
		}
		var o *OutsideRootError
		if _, err := Hit(root, cudaKey, ""); !errors.As(err, &o) {
			t.Errorf("%s: want OutsideRootError, got %v", name, err)
		}
	}
}

func TestHitNotFound(t *testing.T) {
	src := testdata(t, "vector-add-cache")
	root := extracted(t, src)
	// An absent KEY: Triton's makedirs creates the dir, then it compiles.
	r, err := Hit(root, rocmKey, "")
	if !errors.Is(err, ErrNotFound) || r.Outcome != OutcomeError {
		t.Fatalf("absent key: %v", err)
	}
	if st, err := os.Stat(filepath.Join(root, rocmKey)); err != nil || !st.IsDir() {
		t.Fatalf("Triton's makedirs leaves the KEY dir: %v", err)
	}
	// An empty KEY dir, listed or named.
	if _, err := Hit(root, rocmKey, ""); !errors.Is(err, ErrNotFound) {
		t.Fatalf("empty key dir: %v", err)
	}
	if _, err := HitNamed(root, rocmKey, "add_kernel", ""); !errors.Is(err, ErrNotFound) {
		t.Fatalf("empty key dir, named: %v", err)
	}
	// A wrong name for a present kernel.
	if _, err := HitNamed(root, cudaKey, "mul_kernel", ""); !errors.Is(err, ErrNotFound) {
		t.Fatalf("wrong name: %v", err)
	}
	// A missing child is an error, not a miss.
	os.Remove(filepath.Join(root, cudaKey, "add_kernel.ptx"))
	if _, err := Hit(root, cudaKey, ""); err == nil || errors.Is(err, ErrNotFound) {
		t.Fatalf("missing child: %v", err)
	}
	if _, err := Hit(root, "not-a-key", ""); err == nil {
		t.Fatal("bad key: want error")
	}
}

func TestReadCheckedSizes(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	os.WriteFile(p, []byte("hello"), 0o644)
	var se *SizeError
	if _, err := newPyos().readChecked(p, 4); !errors.As(err, &se) || se.Stat != 4 || se.Read != 5 {
		t.Fatalf("want SizeError, got %v", err)
	}
	if d, err := newPyos().readChecked(p, 5); err != nil || string(d) != "hello" {
		t.Fatalf("%q, %v", d, err)
	}
}

func TestPruneResult(t *testing.T) {
	if err := pruneResult("K", nil); !errors.Is(err, ErrRemovedNonEmpty) {
		t.Fatalf("success: %v", err)
	}
	for _, e := range []error{unix.ENOTEMPTY, unix.EEXIST} {
		if err := pruneResult("K", e); err != nil {
			t.Fatalf("%v: %v", e, err)
		}
	}
	if err := pruneResult("K", unix.EBUSY); err == nil || errors.Is(err, ErrRemovedNonEmpty) {
		t.Fatalf("EBUSY: %v", err)
	}
}

func TestPySplit(t *testing.T) {
	for in, want := range map[string][2]string{
		"/a/b": {"/a", "b"}, "/a": {"/", "a"}, "a": {"", "a"}, "/a/b/": {"/a/b", ""}, "//x": {"//", "x"},
	} {
		if h, tl := pySplit(in); h != want[0] || tl != want[1] {
			t.Errorf("pySplit(%q) = %q, %q", in, h, tl)
		}
	}
}
