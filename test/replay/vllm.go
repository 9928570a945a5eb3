package replay

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"cargohold/triton"
)

// The files of a vLLM compile cache's rank (or prefix) dir.
const (
	vllmCacheDir   = "torch_compile_cache"
	vllmCacheFile  = "vllm_compile_cache.py"
	vllmFactors    = "cache_key_factors.json"
	vllmGraph      = "computation_graph.py"
	vllmInductor   = "inductor_cache" // legacy format, in the rank dir
	vllmTriton     = "triton_cache"   // legacy format, in the rank dir
	vllmAOTDir     = "torch_aot_compile"
	formatBinary   = "binary" // InductorStandaloneAdaptor, save format "binary"
	formatLegacy   = "legacy" // InductorAdaptor: the "unpacked" tree of inductor_cache and triton_cache
	compilerBinary = "inductor_standalone"
	compilerLegacy = "inductor"
)

var rankRE = regexp.MustCompile(`^rank_\d+_\d+(_dev\d+)?$`)

// VLLMHit replays a vLLM start on a warm compile cache. root is
// $VLLM_CACHE_ROOT (the dir holding torch_compile_cache/), hash the dir
// under torch_compile_cache, name the rank dir and prefix under it
// ("rank_0_0/backbone", or "rank_0_0" for a vLLM without prefixes); an
// empty name is found by listing. With expect set (another root holding
// the same hash), every file read must equal the source's and the
// graphs vllm_compile_cache.py lists must be the source's. The error wraps
// ErrNotFound when vLLM would compile instead.
func VLLMHit(root, hash, name, expect string) (Result, error) {
	return newPyos().vllmHit(root, hash, name, expect)
}

// VLLMMiss replays vLLM compiling the graphs of the source root from into
// root, then reads them back with the hit sequence. atomic saves artifacts
// with write_atomic (tmp + rename) instead of open("wb") in place.
func VLLMMiss(root, hash, name, from string, atomic bool) (Result, error) {
	return newPyos().vllmMiss(root, hash, name, from, atomic)
}

func (p *pyos) vllmHit(root, hash, name, expect string) (Result, error) {
	start := time.Now()
	res := Result{Key: hash, Outcome: OutcomeHit, Name: name}
	err := p.doVLLMHit(&res, root, expect)
	return res, p.finish(&res, "hit", start, err)
}

func (p *pyos) vllmMiss(root, hash, name, from string, atomic bool) (Result, error) {
	start := time.Now()
	res := Result{Key: hash, Outcome: OutcomeMiss, Name: name}
	err := p.doVLLMMiss(&res, root, from, atomic)
	return res, p.finish(&res, "miss", start, err)
}

// vllmEntry is one compiled graph of vllm_compile_cache.py.
type vllmEntry struct {
	Key      string // the dict key as Python writes it: (range, graph index, compiler)
	Compiler string // compilerBinary or compilerLegacy
	Name     string // handle[0]: the artifact's name, or the FX graph key
	Path     string // handle[1]: the artifact's absolute path, or the wrapper module's
}

// parseVLLMCache reads the graphs of a vllm_compile_cache.py: a dict from
// (range, graph index, compiler name) to the handle (name, path), or in
// newer vLLM to a dict holding it as "graph_handle".
func parseVLLMCache(data []byte) ([]vllmEntry, error) {
	v, err := parsePyLiteral(data)
	if err != nil {
		return nil, err
	}
	d, ok := v.(pyDict)
	if !ok {
		return nil, fmt.Errorf("not a dict")
	}
	var out []vllmEntry
	for _, it := range d {
		key, ok := it.K.(pyTuple)
		if !ok || len(key) != 3 {
			return nil, fmt.Errorf("key %s is not (range, graph index, compiler)", pyRepr(it.K))
		}
		e := vllmEntry{Key: pyRepr(key)}
		if e.Compiler, ok = key[2].(string); !ok {
			return nil, fmt.Errorf("key %s: compiler is not a string", e.Key)
		}
		h := it.V
		if hd, ok := h.(pyDict); ok {
			h = nil
			for _, f := range hd {
				if f.K == "graph_handle" {
					h = f.V
				}
			}
		}
		var hs []any
		switch h := h.(type) {
		case pyTuple:
			hs = h
		case pyList:
			hs = h
		}
		if len(hs) != 2 {
			return nil, fmt.Errorf("key %s: handle %s is not (name, path)", e.Key, pyRepr(it.V))
		}
		e.Name, ok = hs[0].(string)
		if !ok || e.Name == "" {
			return nil, fmt.Errorf("key %s: handle name %s is not a string", e.Key, pyRepr(hs[0]))
		}
		if e.Path, ok = hs[1].(string); !ok {
			return nil, fmt.Errorf("key %s: handle path %s is not a string", e.Key, pyRepr(hs[1]))
		}
		out = append(out, e)
	}
	return out, nil
}

// vllmFormat tells the format from the compiler names: one vLLM run uses
// one compiler.
func vllmFormat(es []vllmEntry) (string, error) {
	format := ""
	for _, e := range es {
		f := ""
		switch e.Compiler {
		case compilerBinary:
			f = formatBinary
		case compilerLegacy:
			f = formatLegacy
		default:
			return "", fmt.Errorf("graph %s: compiler %q is not modelled", e.Key, e.Compiler)
		}
		if format != "" && f != format {
			return "", fmt.Errorf("graphs of both the %s and the %s format", format, f)
		}
		format = f
	}
	return format, nil
}

// vllmRoot is the $VLLM_CACHE_ROOT an entry's path was written under.
func vllmRoot(path string) (string, bool) {
	i := strings.Index(path, "/"+vllmCacheDir+"/")
	if i < 0 || !filepath.IsAbs(path) {
		return "", false
	}
	return path[:i], true
}

// rewriteVLLMCache writes data (a vllm_compile_cache.py) with the roots
// its paths were written under replaced by root: the file vLLM writes
// after compiling under root. It is a textual replace of quoted prefixes,
// which literal_eval does not mind (pprint's alignment is only spaces).
func rewriteVLLMCache(data []byte, es []vllmEntry, root string) ([]byte, error) {
	if strings.ContainsAny(root, "'\"\\\n") {
		return nil, fmt.Errorf("root %q holds a character repr would escape", root)
	}
	var olds []string
	for _, e := range es {
		old, ok := vllmRoot(e.Path)
		if !ok {
			return nil, fmt.Errorf("graph %s: path %q is not under a %s dir", e.Key, e.Path, vllmCacheDir)
		}
		if !slices.Contains(olds, old) {
			olds = append(olds, old)
		}
	}
	sort.Slice(olds, func(i, j int) bool { return len(olds[i]) > len(olds[j]) })
	s := string(data)
	for _, old := range olds {
		for _, q := range []string{"'", `"`} {
			s = strings.ReplaceAll(s, q+old+"/"+vllmCacheDir+"/", q+root+"/"+vllmCacheDir+"/")
		}
	}
	return []byte(s), nil
}

// checkVLLMNames checks a hash dir name and a rank/prefix name.
func checkVLLMNames(hash, name string) error {
	if hash == "" || strings.ContainsAny(hash, "/\x00") || hash == "." || hash == ".." || hash == vllmAOTDir {
		return fmt.Errorf("%q is not a hash dir name", hash)
	}
	if name == "" {
		return nil
	}
	parts := strings.Split(name, "/")
	if !rankRE.MatchString(parts[0]) || len(parts) > 2 || filepath.Clean(name) != name ||
		(len(parts) == 2 && (parts[1] == "." || parts[1] == ".." || parts[1] == "")) {
		return fmt.Errorf("%q is not rank_<r>_<dp>[/<prefix>]", name)
	}
	return nil
}

// discoverRank finds the one rank dir of a hash dir and its one prefix dir
// (or none, where the rank dir holds the cache file). The listing is the
// replay's, not vLLM's: vLLM knows its rank and prefix.
func (p *pyos) discoverRank(hd string, traced bool) (string, error) {
	list := func(dir string) ([]os.DirEntry, error) {
		des, err := os.ReadDir(dir)
		if traced {
			p.log("getdents(%q) [replay only]", err, dir)
		}
		return des, err
	}
	des, err := list(hd)
	if err != nil {
		return "", fmt.Errorf("list %s: %w", hd, err)
	}
	var ranks []string
	for _, de := range des {
		if de.IsDir() && rankRE.MatchString(de.Name()) {
			ranks = append(ranks, de.Name())
		}
	}
	switch {
	case len(ranks) == 0:
		return "", fmt.Errorf("%s holds no rank dir: %w", hd, ErrNotFound)
	case len(ranks) > 1:
		return "", fmt.Errorf("%s holds %d rank dirs %v: give the name", hd, len(ranks), ranks)
	}
	des, err = list(filepath.Join(hd, ranks[0]))
	if err != nil {
		return "", fmt.Errorf("list %s: %w", hd, err)
	}
	var prefixes []string
	for _, de := range des {
		switch n := de.Name(); {
		case n == vllmCacheFile:
			return ranks[0], nil
		case de.IsDir() && n != vllmInductor && n != vllmTriton:
			prefixes = append(prefixes, n)
		}
	}
	switch {
	case len(prefixes) == 0:
		return "", fmt.Errorf("%s/%s holds no %s: %w", hd, ranks[0], vllmCacheFile, ErrNotFound)
	case len(prefixes) > 1:
		return "", fmt.Errorf("%s/%s holds %d prefix dirs %v: give the name", hd, ranks[0], len(prefixes), prefixes)
	}
	return ranks[0] + "/" + prefixes[0], nil
}

// vllmDirs are the dirs of one replay: the hash dir, the rank dir, the
// rank or prefix dir that holds the cache file, for root and for a source.
type vllmDirs struct{ hash, rank, local string }

func newVLLMDirs(root, hash, name string) vllmDirs {
	hd := filepath.Join(root, vllmCacheDir, hash)
	return vllmDirs{hd, filepath.Join(hd, strings.Split(name, "/")[0]), filepath.Join(hd, name)}
}

// makeDir is vLLM's os.makedirs(dir, exist_ok=True) on a hit: the dir
// must be there (mkdir failing EEXIST); where it was made, vLLM compiles.
func (p *pyos) makeDir(dir string) error {
	created, mkdirErr, err := p.makedirs(dir)
	switch {
	case err != nil:
		return err
	case created:
		return fmt.Errorf("no dir %s (vLLM made it and compiles): %w", dir, ErrNotFound)
	case !errors.Is(mkdirErr, unix.EEXIST):
		return fmt.Errorf("mkdir of existing %s failed %s, want EEXIST", dir, errnoName(mkdirErr))
	}
	return nil
}

// doVLLMHit is VllmBackend.__call__ and CompilerManager on a warm cache.
func (p *pyos) doVLLMHit(res *Result, root, expect string) error {
	if err := checkVLLMNames(res.Key, res.Name); err != nil {
		return err
	}
	root, err := filepath.Abs(root)
	if err != nil {
		return err
	}
	hd := filepath.Join(root, vllmCacheDir, res.Key)
	if err := p.makeDir(hd); err != nil {
		return err
	}
	if res.Name == "" {
		if res.Name, err = p.discoverRank(hd, true); err != nil {
			return err
		}
	}
	d := newVLLMDirs(root, res.Key, res.Name)
	if err := p.makeDir(d.local); err != nil {
		return err
	}
	// CompilerManager.initialize_cache: os.path.exists, then read and
	// ast.literal_eval.
	cf := filepath.Join(d.local, vllmCacheFile)
	st, ok := p.exists(cf)
	if !ok {
		return fmt.Errorf("no %s: %w", cf, ErrNotFound)
	}
	data, err := p.readWritten(cf, st.Size)
	if err != nil {
		return err
	}
	res.Files++
	res.Bytes += int64(len(data))
	es, err := parseVLLMCache(data)
	if err != nil {
		return fmt.Errorf("%s: %w", cf, err)
	}
	if len(es) == 0 {
		return fmt.Errorf("%s lists no graph: %w", cf, ErrNotFound)
	}
	if res.Kind, err = vllmFormat(es); err != nil {
		return fmt.Errorf("%s: %w", cf, err)
	}
	var x vllmDirs
	if expect != "" {
		x = newVLLMDirs(expect, res.Key, res.Name)
		if err := sameGraphs(es, filepath.Join(x.local, vllmCacheFile)); err != nil {
			return err
		}
	}
	if res.Kind == formatLegacy {
		// InductorAdaptor.initialize_cache points TORCHINDUCTOR_CACHE_DIR
		// and TRITON_CACHE_DIR into the rank dir and makes both.
		for _, sub := range []string{vllmInductor, vllmTriton} {
			if _, _, err := p.makedirs(filepath.Join(d.rank, sub)); err != nil {
				return err
			}
		}
	}
	// Written only where missing (older vLLM writes no factors file).
	p.exists(filepath.Join(d.local, vllmFactors))
	p.exists(filepath.Join(d.local, vllmGraph))
	if res.Kind == formatLegacy {
		return p.vllmLegacyHit(res, d, x, es)
	}
	for _, e := range es {
		if err := p.vllmArtifactHit(res, d.local, x.local, e); err != nil {
			return err
		}
	}
	return nil
}

// vllmArtifactHit is InductorStandaloneAdaptor.load: the path the cache
// file names, os.path.isdir (must be false), open and read it whole. The
// path must be the artifact's in this very dir: a cache served elsewhere
// than it was built must have had its paths rewritten.
func (p *pyos) vllmArtifactHit(res *Result, local, expectLocal string, e vllmEntry) error {
	want := filepath.Join(local, e.Name)
	if filepath.Clean(e.Path) != want || !filepath.IsAbs(e.Path) {
		return &OutsideRootError{Key: res.Key, Child: e.Name, Path: e.Path, Want: want}
	}
	st, err := p.stat(e.Path)
	if err != nil {
		// vLLM's load has no fallback: startup fails.
		return fmt.Errorf("artifact of graph %s: %w", e.Key, err)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return fmt.Errorf("artifact %s is a dir (the standalone \"unpacked\" save format, not modelled)", e.Path)
	}
	data, err := p.readWritten(e.Path, st.Size)
	if err != nil {
		return err
	}
	res.Files++
	res.Bytes += int64(len(data))
	if expectLocal != "" {
		return compareFile(res.Key, filepath.Join(res.Name, e.Name), data, filepath.Join(expectLocal, e.Name))
	}
	return nil
}

// vllmLegacyHit is InductorAdaptor.load for each graph: the FX graph
// cache lookup of handle[0] and the wrapper module it loads, in the rank
// dir's inductor_cache (handle[1] is only logged: the module path is
// recomputed from the cache dir, so only its last two elements count).
// Then the Triton hits of the rank dir's triton_cache. Which kernels a
// graph launches is in its pickle, which the replay does not read: it hits
// every KEY dir once, after the graphs.
func (p *pyos) vllmLegacyHit(res *Result, d, x vllmDirs, es []vllmEntry) error {
	ind, xind := filepath.Join(d.rank, vllmInductor), ""
	tc, xtc := filepath.Join(d.rank, vllmTriton), ""
	if x.rank != "" {
		xind, xtc = filepath.Join(x.rank, vllmInductor), filepath.Join(x.rank, vllmTriton)
	}
	for _, e := range es {
		mod, err := moduleOf(e.Path)
		if err != nil {
			return fmt.Errorf("graph %s: %w", e.Key, err)
		}
		for _, unit := range []string{fxUnit(e.Name), mod} {
			sub := Result{Key: unit}
			err := p.doInductorHit(&sub, ind, xind)
			res.Files += sub.Files
			res.Bytes += sub.Bytes
			if err != nil {
				return fmt.Errorf("graph %s: %s: %w", e.Key, unit, err)
			}
		}
	}
	keys, err := p.keyDirs(tc)
	if err != nil {
		return err
	}
	for _, key := range keys {
		sub := Result{Key: key}
		err := p.tritonUnitHit(&sub, tc, xtc)
		res.Files += sub.Files
		res.Bytes += sub.Bytes
		if err != nil {
			return fmt.Errorf("%s/%s: %w", vllmTriton, key, err)
		}
	}
	return nil
}

// keyDirs lists the Triton KEY dirs of a cache dir, sorted: the replay's
// listing, standing in for the kernels the graphs' pickles name.
func (p *pyos) keyDirs(dir string) ([]string, error) {
	des, err := os.ReadDir(dir)
	p.log("getdents(%q) [replay only]", err, dir)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", dir, err)
	}
	var keys []string
	for _, de := range des {
		if de.IsDir() && triton.IsKey(de.Name()) {
			keys = append(keys, de.Name())
		}
	}
	return keys, nil
}

// moduleOf is the module unit ("<xx>/<name>.py") of a wrapper's path.
func moduleOf(path string) (string, error) {
	dir, file := filepath.Split(path)
	unit := filepath.Base(dir) + "/" + file
	if k, err := inductorUnitKind(unit); err != nil || k != unitModule {
		return "", fmt.Errorf("%q does not end in <xx>/<module>.py", path)
	}
	return unit, nil
}

// sameGraphs checks that the graphs of a cache file are the source's:
// same keys and names, paths the same below their roots.
func sameGraphs(got []vllmEntry, expectFile string) error {
	data, err := os.ReadFile(expectFile)
	if err != nil {
		return fmt.Errorf("expected source: %w", err)
	}
	want, err := parseVLLMCache(data)
	if err != nil {
		return fmt.Errorf("expected source %s: %w", expectFile, err)
	}
	rel := func(p string) string {
		if r, ok := vllmRoot(p); ok {
			return p[len(r):]
		}
		return p
	}
	for i := range max(len(got), len(want)) {
		switch {
		case i >= len(got):
			return fmt.Errorf("%s: graph %s is missing", vllmCacheFile, want[i].Key)
		case i >= len(want):
			return fmt.Errorf("%s: graph %s is not in the source", vllmCacheFile, got[i].Key)
		case got[i].Key != want[i].Key || got[i].Name != want[i].Name || rel(got[i].Path) != rel(want[i].Path):
			return fmt.Errorf("%s: graph %d is %s → (%q, %q), the source's %s → (%q, %q)", vllmCacheFile, i,
				got[i].Key, got[i].Name, got[i].Path, want[i].Key, want[i].Name, want[i].Path)
		}
	}
	return nil
}

// settleTime bounds the re-reads of a file written in place (readWritten).
var settleTime = 5 * time.Second

// readWritten reads a file of statSize bytes. Where this replay wrote it
// in place (vLLM's open("w") of the cache file, a non-atomic artifact
// save), another process writing the same file may have truncated it a
// moment ago: vLLM's own race, which a process starting meanwhile would
// trip over. The read-back then reads again until it sees what was
// written, for up to settleTime; every other read happens once.
func (p *pyos) readWritten(path string, statSize int64) ([]byte, error) {
	data, err := p.readChecked(path, statSize)
	want, ok := p.inPlace[path]
	if !ok {
		return data, err
	}
	deadline := time.Now().Add(settleTime)
	for (err != nil || string(data) != string(want)) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
		var st unix.Stat_t
		if st, err = p.stat(path); err == nil {
			data, err = p.readChecked(path, st.Size)
		}
	}
	if err == nil && string(data) != string(want) {
		return nil, fmt.Errorf("%s: still not what was written after %v", path, settleTime)
	}
	return data, err
}

// doVLLMMiss is vLLM compiling every graph of the source: the dirs, the
// factors and graph files where missing, each artifact saved, the cache
// file written whole in place; then the hit sequence reads it all back.
// The legacy format's compile writes the source's Inductor units and
// Triton KEY dirs into the rank dir. The replay models a cold start: an
// existing cache file is stat'ed, not read (vLLM would read it and keep
// its graphs).
func (p *pyos) doVLLMMiss(res *Result, root, from string, atomic bool) error {
	if err := checkVLLMNames(res.Key, res.Name); err != nil {
		return err
	}
	root, err := filepath.Abs(root)
	if err != nil {
		return err
	}
	if res.Name == "" {
		if res.Name, err = p.discoverRank(filepath.Join(from, vllmCacheDir, res.Key), false); err != nil {
			return fmt.Errorf("source: %w", err)
		}
	}
	src, d := newVLLMDirs(from, res.Key, res.Name), newVLLMDirs(root, res.Key, res.Name)
	srcCache, err := os.ReadFile(filepath.Join(src.local, vllmCacheFile))
	if err != nil {
		return fmt.Errorf("source: %w", err)
	}
	es, err := parseVLLMCache(srcCache)
	if err != nil {
		return fmt.Errorf("source %s: %w", vllmCacheFile, err)
	}
	format, err := vllmFormat(es)
	if err != nil {
		return fmt.Errorf("source %s: %w", vllmCacheFile, err)
	}
	cacheText, err := rewriteVLLMCache(srcCache, es, root)
	if err != nil {
		return fmt.Errorf("source %s: %w", vllmCacheFile, err)
	}
	for _, dir := range []string{d.hash, d.local} {
		if _, _, err := p.makedirs(dir); err != nil {
			return err
		}
	}
	cf := filepath.Join(d.local, vllmCacheFile)
	p.exists(cf)
	if format == formatLegacy {
		for _, sub := range []string{vllmInductor, vllmTriton} {
			if _, _, err := p.makedirs(filepath.Join(d.rank, sub)); err != nil {
				return err
			}
		}
	}
	for _, f := range []string{vllmFactors, vllmGraph} {
		data, err := os.ReadFile(filepath.Join(src.local, f))
		if errors.Is(err, os.ErrNotExist) {
			continue // an older vLLM's cache: it writes no such file
		} else if err != nil {
			return fmt.Errorf("source: %w", err)
		}
		if _, ok := p.exists(filepath.Join(d.local, f)); !ok {
			if err := p.writeInPlace(filepath.Join(d.local, f), data, true); err != nil {
				return err
			}
		}
	}
	if format == formatLegacy {
		if err := p.vllmLegacyPut(src, d); err != nil {
			return err
		}
	} else {
		for _, e := range es {
			data, err := os.ReadFile(filepath.Join(src.local, e.Name))
			if err != nil {
				return fmt.Errorf("source: %w", err)
			}
			// CompiledArtifact.save(path, "binary").
			path := filepath.Join(d.local, e.Name)
			if atomic {
				err = p.writeAtomic(path, data, false, false)
			} else {
				err = p.writeInPlace(path, data, false)
			}
			if err != nil {
				return err
			}
		}
	}
	// CompilerManager.save_to_file: open("w") and write, no tmp, no lock.
	if err := p.writeInPlace(cf, cacheText, true); err != nil {
		return err
	}
	if err := p.doVLLMHit(res, root, from); err != nil {
		return fmt.Errorf("read back: %w", err)
	}
	return nil
}

// writeInPlace writes a file with open("wb") (or "w", text) and
// remembers what it wrote for readWritten.
func (p *pyos) writeInPlace(path string, data []byte, text bool) error {
	if p.inPlace == nil {
		p.inPlace = map[string][]byte{}
	}
	p.inPlace[path] = data
	return p.write(path, data, text)
}

// vllmLegacyPut writes what the legacy InductorAdaptor's compile leaves
// in the rank dir: Inductor's units in inductor_cache, Triton's KEY dirs in
// triton_cache.
func (p *pyos) vllmLegacyPut(src, d vllmDirs) error {
	sind, ind := filepath.Join(src.rank, vllmInductor), filepath.Join(d.rank, vllmInductor)
	units, err := inductorUnits(sind)
	if err != nil && !errors.Is(err, ErrNoUnits) {
		return fmt.Errorf("source: %w", err)
	}
	for _, u := range units {
		if err := p.inductorPut(ind, u, sind); err != nil {
			return fmt.Errorf("%s: %w", u, err)
		}
	}
	stc, tc := filepath.Join(src.rank, vllmTriton), filepath.Join(d.rank, vllmTriton)
	keys, err := keysIn(KindTriton, stc)
	if err != nil && !errors.Is(err, triton.ErrNoEntries) {
		return fmt.Errorf("source: %w", err)
	}
	for _, key := range keys {
		if _, err := p.putKey(tc, key, stc); err != nil {
			return fmt.Errorf("%s/%s: %w", vllmTriton, key, err)
		}
	}
	return nil
}
