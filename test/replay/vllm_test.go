package replay

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"cargohold/test/cachetest"
	"cargohold/triton"
)

// The shared real vLLM caches (../shared/testdata/vllm, see its README).
const (
	binaryData    = "llama-binary-cache"
	binaryHash    = "edf531ca35"
	binaryName    = "rank_0_0/backbone"
	binaryOldRoot = "/home/ec2-user/.cache/vllm"
	legacyData    = "unpacked-vllm-cache"
	legacyHash    = "d4ec7c2a7d"
	legacyName    = "rank_0_0"
	legacyOldRoot = "/home/vllm/.cache/vllm"
)

// copyTree is a plain, writable copy of a dir: the shared data as copied
// by hand, absolute paths of the machine that built it included.
func copyTree(t *testing.T, src string) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "root")
	if err := os.CopyFS(root, os.DirFS(src)); err != nil {
		t.Fatal(err)
	}
	return root
}

// relocate rewrites the absolute paths that a copied cache root holds from
// the building machine's root old to its own: in vllm_compile_cache.py by
// text (where old is set), in Triton group files as Triton writes them.
func relocate(t *testing.T, root, old string) {
	t.Helper()
	n := 0
	err := filepath.WalkDir(root, func(p string, de os.DirEntry, err error) error {
		if err != nil || de.IsDir() {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		switch {
		case de.Name() == vllmCacheFile && old != "":
			data = bytes.ReplaceAll(data, []byte(old+"/"), []byte(root+"/"))
		case triton.IsGroupFile(de.Name()):
			if data, err = triton.RewriteGroup(data, filepath.Dir(filepath.Dir(p))); err != nil {
				return err
			}
		default:
			return nil
		}
		n++
		return os.WriteFile(p, data, 0o644)
	})
	if err != nil || n == 0 {
		t.Fatalf("relocate %s: %d files, %v", root, n, err)
	}
}

// relocated is a copy of a shared vLLM cache with its paths rewritten.
func relocated(t *testing.T, data, old string) (src, root string) {
	src = cachetest.VLLMTestdata(t, data)
	root = copyTree(t, src)
	relocate(t, root, old)
	return src, root
}

func TestVLLMHitBinary(t *testing.T) {
	src, root := relocated(t, binaryData, binaryOldRoot)
	r, err := VLLMHit(root, binaryHash, "", src)
	if err != nil {
		t.Fatalf("%v\n%s", err, strings.Join(r.Trace, "\n"))
	}
	local := filepath.Join(root, vllmCacheDir, binaryHash, binaryName)
	var total int64
	des, _ := os.ReadDir(local)
	for _, de := range des {
		if strings.HasPrefix(de.Name(), "artifact_compile_range_") || de.Name() == vllmCacheFile {
			info, _ := de.Info()
			total += info.Size()
		}
	}
	if r.Outcome != OutcomeHit || r.Kind != formatBinary || r.Name != binaryName || r.Files != 18 || r.Bytes != total {
		t.Fatalf("%+v, want 18 files of %d bytes", r, total)
	}
	// The sequence: makedirs of the hash and prefix dirs (EEXIST), the
	// cache file, the two files stat'ed, then each artifact stat'ed and
	// read; nothing written.
	var got []string
	for _, l := range normalizeFDs(r.Trace) {
		if strings.HasPrefix(l, "stat(") || strings.HasPrefix(l, "mkdir(") || strings.HasPrefix(l, "openat(") {
			got = append(got, strings.ReplaceAll(l, local+"/", ""))
		}
		if strings.Contains(l, "O_CREAT") || strings.HasPrefix(l, "write(") || strings.HasPrefix(l, "rename(") {
			t.Errorf("a hit writes: %s", l)
		}
	}
	hd := filepath.Join(root, vllmCacheDir, binaryHash)
	want := []string{
		`stat("` + filepath.Join(root, vllmCacheDir) + `") = 0`,
		`mkdir("` + hd + `", 0777) = EEXIST`,
		`stat("` + hd + `") = 0`,
		`stat("` + filepath.Dir(local) + `") = 0`,
		`mkdir("` + local + `", 0777) = EEXIST`,
		`stat("` + local + `") = 0`,
		`stat("vllm_compile_cache.py") = 0`,
		`openat("vllm_compile_cache.py", O_RDONLY|O_CLOEXEC) = FD`,
		`stat("cache_key_factors.json") = 0`,
		`stat("computation_graph.py") = 0`,
	}
	for i := range 17 {
		a := "artifact_compile_range_1_2048_subgraph_" + strconv.Itoa(i)
		want = append(want, `stat("`+a+`") = 0`, `openat("`+a+`", O_RDONLY|O_CLOEXEC) = FD`)
	}
	// Discovery lists the hash and rank dirs: lines the test leaves out.
	got = slices.DeleteFunc(got, func(l string) bool { return strings.Contains(l, "[replay only]") })
	if !slices.Equal(got, want) {
		t.Fatalf("trace:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// Named, as vLLM knows it: no listing.
	r, err = VLLMHit(root, binaryHash, binaryName, "")
	if err != nil || slices.ContainsFunc(r.Trace, func(l string) bool { return strings.Contains(l, "getdents") }) {
		t.Fatalf("named: %v\n%s", err, strings.Join(r.Trace, "\n"))
	}
}

func TestVLLMHitLegacy(t *testing.T) {
	src, root := relocated(t, legacyData, legacyOldRoot)
	r, err := VLLMHit(root, legacyHash, "", src)
	if err != nil {
		t.Fatalf("%v\n%s", err, strings.Join(r.Trace, "\n"))
	}
	if r.Outcome != OutcomeHit || r.Kind != formatLegacy || r.Name != legacyName {
		t.Fatalf("%+v", r)
	}
	// Each of the 25 graphs reads its FX entry and wrapper module; the six
	// Triton KEY dirs of triton_cache are hit, 7 files each.
	trace := strings.Join(r.Trace, "\n")
	ind := filepath.Join(root, vllmCacheDir, legacyHash, legacyName, vllmInductor)
	for file, n := range map[string]int{
		ind + "/fxgraph/ih/fihfzkdily6bpw73zhhfvyx7i7syj2bh2z73lj5bgrbq3ty5mkpv/itgql44to55mb3547npzdwtqyx5dg3mcail4ysvjoxyuwbl5k3p": 23,
		ind + "/df/cdfqwrxmstxseesfef72s74nawkkh3iyiu6k7rg5kdhvmg7736qb.py":                                                          23,
		ind + "/cg/ccgg53vsz46gfbpmfjxfnftiwzdbqyp25362gk22zlpidd7dhbzl.py":                                                          23,
		ind + "/cg/6be63e950590117b7e127099c70145e23ac43697e02312dffe46bfa3178a8861.best_config":                                     23,
		ind + "/sy/csydsib3zoojnddissy5psapld25ic346gbdsibkekh6pid6bevv.py":                                                          1,
	} {
		if c := strings.Count(trace, `openat("`+file+`"`); c != n {
			t.Errorf("%s read %d times, want %d", file, c, n)
		}
	}
	if c := strings.Count(trace, "/__grp__"); c < 6 {
		t.Errorf("%d group file accesses, want the six KEY dirs'", c)
	}
	if strings.Contains(trace, "O_CREAT") || strings.Contains(trace, "rename(") {
		t.Error("a hit writes")
	}
}

// TestVLLMHitOutsideRoot: a cache copied without rewriting its paths
// points at the machine that built it, which the hit must report.
func TestVLLMHitOutsideRoot(t *testing.T) {
	src := cachetest.VLLMTestdata(t, binaryData)
	root := copyTree(t, src)
	var o *OutsideRootError
	_, err := VLLMHit(root, binaryHash, "", src)
	if !errors.As(err, &o) || !strings.HasPrefix(o.Path, binaryOldRoot+"/") || o.Child != "artifact_compile_range_1_2048_subgraph_0" ||
		o.Want != filepath.Join(root, vllmCacheDir, binaryHash, binaryName, o.Child) {
		t.Fatalf("binary: want OutsideRootError for the old root, got %v", err)
	}
	// The legacy format loads by FX key (its paths are only logged), but
	// its Triton group files name the old root.
	src = cachetest.VLLMTestdata(t, legacyData)
	root = copyTree(t, src)
	if _, err := VLLMHit(root, legacyHash, "", src); !errors.As(err, &o) || !strings.HasPrefix(o.Path, legacyOldRoot+"/") {
		t.Fatalf("legacy: want OutsideRootError for the old root, got %v", err)
	}
	// A path under the root, but another prefix's artifact.
	src, root = relocated(t, binaryData, binaryOldRoot)
	cf := filepath.Join(root, vllmCacheDir, binaryHash, binaryName, vllmCacheFile)
	data, _ := os.ReadFile(cf)
	os.WriteFile(cf, bytes.Replace(data, []byte("/backbone/artifact_compile_range_1_2048_subgraph_3'"), []byte("/eagle_head/artifact_compile_range_1_2048_subgraph_3'"), 1), 0o644)
	if _, err := VLLMHit(root, binaryHash, "", ""); !errors.As(err, &o) || o.Child != "artifact_compile_range_1_2048_subgraph_3" {
		t.Fatalf("other prefix: want OutsideRootError, got %v", err)
	}
}

func TestVLLMMissThenHit(t *testing.T) {
	for _, c := range []struct {
		data, hash, old string
		atomic          bool
	}{
		{binaryData, binaryHash, binaryOldRoot, false},
		{binaryData, binaryHash, binaryOldRoot, true},
		{legacyData, legacyHash, legacyOldRoot, false},
	} {
		src := cachetest.VLLMTestdata(t, c.data)
		root := filepath.Join(t.TempDir(), "fresh", "vllm") // makedirs creates the parents
		r, err := VLLMMiss(root, c.hash, "", src, c.atomic)
		if err != nil {
			t.Fatalf("%s atomic=%v: %v\n%s", c.data, c.atomic, err, strings.Join(r.Trace, "\n"))
		}
		if r.Outcome != OutcomeMiss || r.Files == 0 {
			t.Fatalf("%s: %+v", c.data, r)
		}
		// The cache file is written in place, never renamed in; artifacts
		// are renamed in only when saved atomically.
		var cacheWrites, artifactRenames int
		for _, l := range r.Trace {
			if strings.HasPrefix(l, "rename(") && strings.HasSuffix(l, `/`+vllmCacheFile+`") = 0`) {
				t.Errorf("%s: cache file renamed in: %s", c.data, l)
			}
			if strings.HasPrefix(l, `openat("`+filepath.Join(root, vllmCacheDir)) && strings.Contains(l, "/"+vllmCacheFile+`", O_WRONLY|O_CREAT|O_TRUNC`) {
				cacheWrites++
			}
			if strings.HasPrefix(l, "rename(") && strings.Contains(l, `/artifact_compile_range_`) {
				artifactRenames++
			}
		}
		if cacheWrites != 1 || (c.data == binaryData && (artifactRenames == 17) != c.atomic) || (!c.atomic && artifactRenames != 0) {
			t.Errorf("%s atomic=%v: %d cache file writes, %d artifact renames", c.data, c.atomic, cacheWrites, artifactRenames)
		}
		// What it wrote points into root and hits.
		if _, err := VLLMHit(root, c.hash, "", src); err != nil {
			t.Fatalf("%s: hit after miss: %v", c.data, err)
		}
		// A second miss writes over the first.
		if _, err := VLLMMiss(root, c.hash, "", src, c.atomic); err != nil {
			t.Fatalf("%s: miss over existing: %v", c.data, err)
		}
	}
}

// TestVLLMHitNotFound: where vLLM would compile, the hit says so.
func TestVLLMHitNotFound(t *testing.T) {
	src, root := relocated(t, binaryData, binaryOldRoot)
	// An absent hash: vLLM's makedirs creates it, then it compiles.
	if _, err := VLLMHit(root, "0123456789", "", ""); !errors.Is(err, ErrNotFound) {
		t.Fatalf("absent hash: %v", err)
	}
	if st, err := os.Stat(filepath.Join(root, vllmCacheDir, "0123456789")); err != nil || !st.IsDir() {
		t.Fatalf("vLLM's makedirs leaves the hash dir: %v", err)
	}
	// Another prefix of a present hash.
	if _, err := VLLMHit(root, binaryHash, "rank_0_0/eagle_head", ""); !errors.Is(err, ErrNotFound) {
		t.Fatalf("absent prefix: %v", err)
	}
	// No cache file.
	cf := filepath.Join(root, vllmCacheDir, binaryHash, binaryName, vllmCacheFile)
	data, _ := os.ReadFile(cf)
	os.Remove(cf)
	if _, err := VLLMHit(root, binaryHash, binaryName, src); !errors.Is(err, ErrNotFound) {
		t.Fatalf("no cache file: %v", err)
	}
	// An empty dict.
	os.WriteFile(cf, []byte("{}"), 0o644)
	if _, err := VLLMHit(root, binaryHash, binaryName, src); !errors.Is(err, ErrNotFound) {
		t.Fatalf("empty cache file: %v", err)
	}
	os.WriteFile(cf, data, 0o644)
	if _, err := VLLMHit(root, binaryHash, binaryName, src); err != nil {
		t.Fatal(err)
	}
	for _, bad := range [][2]string{{"..", ""}, {binaryHash, "backbone"}, {binaryHash, "rank_0_0/../x"}, {binaryHash, "rank_0_0/a/b"}} {
		if _, err := VLLMHit(root, bad[0], bad[1], ""); err == nil {
			t.Errorf("%q: want error", bad)
		}
	}
}

// TestVLLMHitCatches: each kind of damage a served cache can have fails
// the hit, and not as a miss.
func TestVLLMHitCatches(t *testing.T) {
	local := filepath.Join(vllmCacheDir, binaryHash, binaryName)
	artifact := filepath.Join(local, "artifact_compile_range_1_2048_subgraph_5")
	for name, c := range map[string]struct {
		damage func(root string)
		check  func(err error) bool
	}{
		"corrupt artifact": {func(root string) { flipByte(t, filepath.Join(root, artifact), 123456) }, func(err error) bool {
			var m *MismatchError
			return errors.As(err, &m) && m.Offset == 123456 && strings.HasSuffix(m.File, "subgraph_5")
		}},
		"truncated artifact": {func(root string) { os.Truncate(filepath.Join(root, artifact), 1000) }, func(err error) bool {
			var m *MismatchError
			return errors.As(err, &m) && m.Got == 1000
		}},
		"missing artifact": {func(root string) { os.Remove(filepath.Join(root, artifact)) }, func(err error) bool {
			return err != nil && !errors.Is(err, ErrNotFound) && strings.Contains(err.Error(), "no such file")
		}},
		"artifact a dir": {func(root string) {
			os.Remove(filepath.Join(root, artifact))
			os.Mkdir(filepath.Join(root, artifact), 0o755)
		}, func(err error) bool { return err != nil && strings.Contains(err.Error(), "is a dir") }},
		"cache file cut": {func(root string) {
			cf := filepath.Join(root, local, vllmCacheFile)
			data, _ := os.ReadFile(cf)
			os.WriteFile(cf, data[:len(data)/2], 0o644)
		}, func(err error) bool {
			return err != nil && !errors.Is(err, ErrNotFound) && strings.Contains(err.Error(), "python literal")
		}},
		"graph renamed": {func(root string) {
			cf := filepath.Join(root, local, vllmCacheFile)
			data, _ := os.ReadFile(cf)
			os.WriteFile(cf, bytes.Replace(data, []byte("((1, 2048), 7,"), []byte("((1, 4096), 7,"), 1), 0o644)
		}, func(err error) bool { return err != nil && strings.Contains(err.Error(), "the source's") }},
	} {
		src, root := relocated(t, binaryData, binaryOldRoot)
		c.damage(root)
		r, err := VLLMHit(root, binaryHash, "", src)
		if !c.check(err) || r.Outcome != OutcomeError {
			t.Errorf("%s: got %v", name, err)
		}
	}
	// Without a source to compare with, a corrupt byte goes unseen: the
	// comparison is what catches it.
	_, root := relocated(t, binaryData, binaryOldRoot)
	flipByte(t, filepath.Join(root, artifact), 99)
	if _, err := VLLMHit(root, binaryHash, "", ""); err != nil {
		t.Fatal(err)
	}
}

func TestVLLMLegacyHitCatches(t *testing.T) {
	rank := filepath.Join(vllmCacheDir, legacyHash, legacyName)
	fx := filepath.Join(rank, vllmInductor, "fxgraph/r4/fr4t73hg7nisksrnalktc6oq7w4kf5xjy7couij4xnicybdtk65e/ywqobi6nujcnbfearh4jmpitsaaguvkjp6ja7zny5o6k2hh5czb")
	for name, c := range map[string]struct {
		damage func(root string)
		check  func(err error) bool
	}{
		"corrupt FX entry": {func(root string) { flipByte(t, filepath.Join(root, fx), 77) }, func(err error) bool {
			var m *MismatchError
			return errors.As(err, &m) && m.Offset == 77
		}},
		"missing FX entry": {func(root string) { os.Remove(filepath.Join(root, fx)) }, func(err error) bool { return errors.Is(err, ErrNotFound) }},
		"corrupt kernel module": {func(root string) {
			flipByte(t, filepath.Join(root, rank, vllmInductor, "mk/cmk34tieuty2rpoli3ynf2ihs3dcfx6o5sv2l7rkt5vj44p2tk74.py"), 10)
		}, func(err error) bool {
			var m *MismatchError
			return errors.As(err, &m) && strings.HasPrefix(m.File, "mk/")
		}},
		"corrupt Triton binary": {func(root string) {
			flipByte(t, filepath.Join(root, rank, vllmTriton, "HR47ZPBPY3VLPZ7QAWGK7AZ766NXCDFVNFN3EVNUKCQXKWGINCCA/triton_poi_fused__to_copy_embedding_0.hsaco"), 100)
		}, func(err error) bool {
			var m *MismatchError
			return errors.As(err, &m) && strings.HasSuffix(m.File, ".hsaco")
		}},
		"empty Triton dir": {func(root string) {
			kd := filepath.Join(root, rank, vllmTriton, "HR47ZPBPY3VLPZ7QAWGK7AZ766NXCDFVNFN3EVNUKCQXKWGINCCA")
			os.RemoveAll(kd)
			os.Mkdir(kd, 0o755)
		}, func(err error) bool { return errors.Is(err, ErrNotFound) }},
	} {
		src, root := relocated(t, legacyData, legacyOldRoot)
		c.damage(root)
		if _, err := VLLMHit(root, legacyHash, "", src); !c.check(err) {
			t.Errorf("%s: got %v", name, err)
		}
	}
}

func flipByte(t *testing.T, path string, off int) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	data[off] ^= 0x20
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestVLLMRunConcurrentMisses: three processes compile the same hash into
// an empty root at once, saving artifacts by rename and in place; renames
// over each other and writes over each other must not fail, and the
// result hits from three processes.
func TestVLLMRunConcurrentMisses(t *testing.T) {
	for _, c := range []struct {
		data, hash string
		atomic     bool
	}{
		{binaryData, binaryHash, true},
		{binaryData, binaryHash, false},
		{legacyData, legacyHash, false},
	} {
		src := cachetest.VLLMTestdata(t, c.data)
		root := filepath.Join(t.TempDir(), "vllm")
		o := Options{Mode: ModeMiss, Cache: KindVLLM, Root: root, Keys: []string{c.hash}, From: src, Atomic: c.atomic, Procs: 3}
		sum, err := Run(context.Background(), o, func(r Result) {
			if r.Outcome == OutcomeError {
				t.Errorf("%s atomic=%v (process %d): %s", c.data, c.atomic, r.Proc, r.Error)
			}
		})
		if err != nil || !sum.OK() || sum.Misses != 3 || sum.Procs != 3 || sum.Cache != KindVLLM {
			t.Fatalf("%s atomic=%v: miss -p 3: %+v, %v", c.data, c.atomic, sum, err)
		}
		sum, err = Run(context.Background(), Options{Mode: ModeHit, Cache: KindVLLM, Root: root, Keys: []string{c.hash}, Expect: src, Procs: 3}, nil)
		if err != nil || !sum.OK() || sum.Hits != 3 {
			t.Fatalf("%s: hit -p 3: %+v, %v", c.data, sum, err)
		}
	}
}

func TestParseVLLMCache(t *testing.T) {
	for _, c := range []struct{ data, hash, name, compiler string }{
		{binaryData, binaryHash, binaryName, compilerBinary},
		{legacyData, legacyHash, legacyName, compilerLegacy},
	} {
		data, err := os.ReadFile(filepath.Join(cachetest.VLLMTestdata(t, c.data), vllmCacheDir, c.hash, c.name, vllmCacheFile))
		if err != nil {
			t.Fatal(err)
		}
		es, err := parseVLLMCache(data)
		if err != nil || len(es) != map[string]int{binaryData: 17, legacyData: 25}[c.data] {
			t.Fatalf("%s: %d entries, %v", c.data, len(es), err)
		}
		for _, e := range es {
			if e.Compiler != c.compiler || !strings.HasPrefix(e.Path, "/home/") {
				t.Fatalf("%s: %+v", c.data, e)
			}
		}
	}
	es, err := parseVLLMCache([]byte("{(None, 0, 'inductor'): ('fx', '/r/torch_compile_cache/h/rank_0_0/inductor_cache/ab/cab.py')}"))
	if err != nil || len(es) != 1 || es[0].Key != `(None, 0, "inductor")` || es[0].Name != "fx" {
		t.Fatalf("%+v, %v", es, err)
	}
	// Newer vLLM: a dict per graph; adjacent literals; escapes.
	es, err = parseVLLMCache([]byte(`{((1, 8), 2, "inductor_standalone"): {"graph_handle": ("a_" 'b', '/r/torch_compile_cache/h/\x72ank_0_0/p/a_b'), "cache_key": 'k'},}`))
	if err != nil || len(es) != 1 || es[0].Name != "a_b" || es[0].Path != "/r/torch_compile_cache/h/rank_0_0/p/a_b" {
		t.Fatalf("%+v, %v", es, err)
	}
	for _, bad := range []string{
		"", "{", "[]", "{1: ('a', 'b')}", "{(1, 2, 3): ('a', 'b')}", "{(1, 2, 'x'): ('a',)}", "{(1, 2, 'x'): ('a', 'b')} x",
		"{(1, 2, 'x'): ('a', 'b)}", "{(1, 2, 'x') ('a', 'b')}", "{(1, 2, 'x'): ('a' 'b')}", "{(1, 2, 'x'): (3, 'b')}",
		strings.Repeat("(", 100) + strings.Repeat(")", 100),
	} {
		if _, err := parseVLLMCache([]byte(bad)); err == nil {
			t.Errorf("%q: want error", bad)
		}
	}
}

func TestRewriteVLLMCache(t *testing.T) {
	data := []byte("{   (None, 0, 'x'): (   'a',\n    '/old/root/torch_compile_cache/h/rank_0_0/a'),\n" +
		"    (None, 1, 'x'): ('b', \"/other/torch_compile_cache/h/rank_0_0/b\")}")
	es, err := parseVLLMCache(data)
	if err != nil {
		t.Fatal(err)
	}
	out, err := rewriteVLLMCache(data, es, "/new")
	if err != nil {
		t.Fatal(err)
	}
	es, err = parseVLLMCache(out)
	if err != nil || es[0].Path != "/new/torch_compile_cache/h/rank_0_0/a" || es[1].Path != "/new/torch_compile_cache/h/rank_0_0/b" {
		t.Fatalf("%s: %+v, %v", out, es, err)
	}
	if _, err := rewriteVLLMCache(data, []vllmEntry{{Path: "relative/a"}}, "/new"); err == nil {
		t.Fatal("path without a root: want error")
	}
	if _, err := rewriteVLLMCache(data, es, "/it's"); err == nil {
		t.Fatal("root repr would escape: want error")
	}
}

// TestReadWritten: a file written in place that another writer has just
// truncated is read again until it holds what was written; a file that
// stays different fails.
func TestReadWritten(t *testing.T) {
	defer func(d time.Duration) { settleTime = d }(settleTime)
	settleTime = 2 * time.Second
	path := filepath.Join(t.TempDir(), vllmCacheFile)
	want := []byte("{(None, 0, 'inductor'): ('k', '/r/torch_compile_cache/h/rank_0_0/ab/cab.py')}")
	p := newPyos()
	if err := p.writeInPlace(path, want, true); err != nil {
		t.Fatal(err)
	}
	os.Truncate(path, 0) // another process's open("w"), before its write
	go func() {
		time.Sleep(100 * time.Millisecond)
		os.WriteFile(path, want, 0o644)
	}()
	got, err := p.readWritten(path, int64(len(want)))
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("%q, %v", got, err)
	}
	// A file not written in place is read once.
	other := filepath.Join(filepath.Dir(path), "other")
	os.WriteFile(other, want[:10], 0o644)
	var se *SizeError
	if _, err := p.readWritten(other, int64(len(want))); !errors.As(err, &se) {
		t.Fatalf("not written here: %v", err)
	}
	settleTime = 200 * time.Millisecond
	os.WriteFile(path, want[:10], 0o644)
	if _, err := p.readWritten(path, 10); err == nil {
		t.Fatal("stays torn: want error")
	}
}
