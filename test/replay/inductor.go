package replay

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"cargohold/triton"
)

// The kinds of unit of an Inductor cache dir, each named by its path under
// the root (Result.Kind says which).
const (
	unitFXGraph    = "fxgraph"     // fxgraph/<xx>/<key>: FX graph entries, a dir
	unitAOT        = "aotautograd" // aotautograd/<key>: an AOTAutograd entry, a dir
	unitModule     = "module"      // <xx>/<name>.py: a wrapper or kernel module
	unitBestConfig = "best_config" // <xx>/<name>.best_config: an autotune result
	unitTriton     = "triton"      // triton/<device>/<KEY>: a Triton cache entry
	unitTimings    = "timings"     // cache/<name>: the autotune timings JSON
	unitLock       = "lock"        // locks/<name>.lock: a FileLock, local only
)

// ErrNoUnits says a dir holds no Inductor cache unit.
var ErrNoUnits = errors.New("no Inductor cache units")

// aotEntry is the file an AOTAutograd entry dir holds (torch 2.6–2.8).
const aotEntry = "entry"

// lockTimeout bounds waiting for a FileLock another process holds (torch
// waits up to LOCK_TIMEOUT, 600 s).
const lockTimeout = 60 * time.Second

// InductorHit replays Inductor's lookup of one unit of the cache dir root
// (TORCHINDUCTOR_CACHE_DIR), named by its path under root (see the unit
// kinds in the package doc). With expect set (another Inductor cache
// dir), every file read must equal the source's, Triton group files after
// rewriting to root. The error wraps ErrNotFound when Inductor would
// compile (or write the unit) instead.
func InductorHit(root, unit, expect string) (Result, error) {
	return newPyos().inductorHit(root, unit, expect)
}

// InductorMiss replays Inductor writing the unit of the source cache dir
// from into root, then reads it back with the hit sequence.
func InductorMiss(root, unit, from string) (Result, error) {
	return newPyos().inductorMiss(root, unit, from)
}

func (p *pyos) inductorHit(root, unit, expect string) (Result, error) {
	start := time.Now()
	res := Result{Key: unit, Outcome: OutcomeHit}
	err := p.doInductorHit(&res, root, expect)
	return res, p.finish(&res, "hit", start, err)
}

func (p *pyos) inductorMiss(root, unit, from string) (Result, error) {
	start := time.Now()
	res := Result{Key: unit, Outcome: OutcomeMiss}
	err := p.doInductorMiss(&res, root, from)
	return res, p.finish(&res, "miss", start, err)
}

// inductorUnitKind classifies a unit path.
func inductorUnitKind(unit string) (string, error) {
	parts := strings.Split(unit, "/")
	bad := func() (string, error) { return "", fmt.Errorf("%q is not an Inductor cache unit", unit) }
	if filepath.Clean(unit) != unit || filepath.IsAbs(unit) || slices.Contains(parts, "..") {
		return bad()
	}
	switch {
	case len(parts) == 3 && parts[0] == "fxgraph" && len(parts[2]) > 3 && parts[2][1:3] == parts[1]:
		return unitFXGraph, nil
	case len(parts) == 2 && parts[0] == "aotautograd":
		return unitAOT, nil
	case len(parts) == 3 && parts[0] == "triton" && triton.IsKey(parts[2]):
		return unitTriton, nil
	case len(parts) == 2 && parts[0] == "cache":
		return unitTimings, nil
	case len(parts) == 2 && parts[0] == "locks" && strings.HasSuffix(parts[1], ".lock"):
		return unitLock, nil
	case len(parts) == 2 && len(parts[0]) == 2 && strings.HasSuffix(parts[1], ".py"):
		return unitModule, nil
	case len(parts) == 2 && len(parts[0]) == 2 && strings.HasSuffix(parts[1], ".best_config"):
		return unitBestConfig, nil
	}
	return bad()
}

// fxUnit is the unit of an FX graph key: fxgraph/<key[1:3]>/<key>.
func fxUnit(key string) string {
	if len(key) < 4 {
		return "fxgraph/" + key
	}
	return "fxgraph/" + key[1:3] + "/" + key
}

// inductorUnits lists the units of an Inductor cache dir in the order a
// compiled graph is looked up: AOTAutograd entries, FX graphs, modules,
// autotune results, Triton entries, timings. Lock files are local state,
// not units to serve; unknown entries are left out.
func inductorUnits(root string) ([]string, error) {
	des, err := os.ReadDir(root)
	if err != nil {
		return nil, err
	}
	byKind := map[string][]string{}
	sub := func(rel string, dirs bool) []string {
		des, err := os.ReadDir(filepath.Join(root, rel))
		if err != nil {
			return nil
		}
		var out []string
		for _, de := range des {
			if de.IsDir() == dirs && (dirs || de.Type().IsRegular()) {
				out = append(out, rel+"/"+de.Name())
			}
		}
		return out
	}
	add := func(units ...string) {
		for _, u := range units {
			if k, err := inductorUnitKind(u); err == nil {
				byKind[k] = append(byKind[k], u)
			}
		}
	}
	for _, de := range des {
		if !de.IsDir() {
			continue
		}
		switch n := de.Name(); {
		case n == "fxgraph" || n == "triton":
			for _, mid := range sub(n, true) {
				add(sub(mid, true)...)
			}
		case n == "aotautograd":
			add(sub(n, true)...)
		case n == "cache" || len(n) == 2:
			add(sub(n, false)...)
		}
	}
	var units []string
	for _, k := range []string{unitAOT, unitFXGraph, unitModule, unitBestConfig, unitTriton, unitTimings} {
		units = append(units, byKind[k]...)
	}
	if len(units) == 0 {
		return nil, fmt.Errorf("%s: %w", root, ErrNoUnits)
	}
	return units, nil
}

// doInductorHit replays the lookup of res.Key under root.
func (p *pyos) doInductorHit(res *Result, root, expect string) error {
	kind, err := inductorUnitKind(res.Key)
	if err != nil {
		return err
	}
	res.Kind = kind
	if root, err = filepath.Abs(root); err != nil {
		return err
	}
	path := filepath.Join(root, res.Key)
	switch kind {
	case unitFXGraph:
		return p.fxGraphHit(res, root, expect)
	case unitAOT:
		return p.aotHit(res, root, expect)
	case unitModule:
		return p.moduleHit(res, root, res.Key, expect)
	case unitBestConfig:
		return p.bestConfigHit(res, root, res.Key, expect)
	case unitTriton:
		return p.tritonUnitHit(res, filepath.Dir(path), tritonExpect(expect, res.Key))
	case unitTimings:
		return p.timingsHit(res, root, expect)
	case unitLock:
		return p.fileLock(path)
	}
	return fmt.Errorf("unit kind %s is not modelled", kind)
}

// tritonExpect is the Triton cache dir of a source Inductor dir that holds
// the unit triton/<device>/<KEY>.
func tritonExpect(expect, unit string) string {
	if expect == "" {
		return ""
	}
	return filepath.Join(expect, filepath.Dir(unit))
}

// readUnitFile reads root/rel in full (open, read; no stat before), counts
// it and compares it with the source's.
func (p *pyos) readUnitFile(res *Result, root, rel, expect string) ([]byte, error) {
	path := filepath.Join(root, rel)
	data, fsz, err := p.readFile(path)
	if err != nil {
		return nil, err
	}
	if fsz != int64(len(data)) {
		return nil, &SizeError{Path: path, Stat: fsz, Read: int64(len(data)), Call: "fstat"}
	}
	return data, p.counted(res, rel, data, expect)
}

// statReadUnitFile is readUnitFile after a stat that must find the file
// with the size read.
func (p *pyos) statReadUnitFile(res *Result, root, rel, expect string, st unix.Stat_t) ([]byte, error) {
	data, err := p.readChecked(filepath.Join(root, rel), st.Size)
	if err != nil {
		return nil, err
	}
	return data, p.counted(res, rel, data, expect)
}

func (p *pyos) counted(res *Result, rel string, data []byte, expect string) error {
	res.Files++
	res.Bytes += int64(len(data))
	if expect != "" {
		return compareFile(res.Key, rel, data, filepath.Join(expect, rel))
	}
	return nil
}

// fxGraphHit is FxGraphCache._lookup_graph (GuardedCache): os.path.exists
// of the key's dir, sorted(os.listdir), read and unpickle each entry until
// one's guards pass. The replay cannot evaluate guards: the first passes,
// as under vLLM's AlwaysHitShapeEnv.
func (p *pyos) fxGraphHit(res *Result, root, expect string) error {
	dir := filepath.Join(root, res.Key)
	if _, ok := p.exists(dir); !ok {
		return fmt.Errorf("no %s: %w", dir, ErrNotFound)
	}
	names, err := p.sortedListdir(dir)
	if err != nil {
		return err
	}
	// Another process's write_atomic temp file (".<pid>.<tid>.tmp", sorted
	// first) is a candidate torch fails to load (half written, or renamed
	// away) and passes over with a warning: not an entry.
	names = slices.DeleteFunc(names, isAtomicTemp)
	if len(names) == 0 {
		return fmt.Errorf("%s holds no entry: %w", dir, ErrNotFound)
	}
	_, err = p.readUnitFile(res, root, res.Key+"/"+names[0], expect)
	return err
}

// isAtomicTemp reports whether name is a temp file of torch's
// write_atomic.
func isAtomicTemp(name string) bool {
	return strings.HasPrefix(name, ".") && strings.HasSuffix(name, ".tmp")
}

// aotHit is AOTAutogradCache._lookup (torch 2.6–2.8): os.path.exists of
// the key's dir, then open and pickle.load of its "entry" (modelled as a
// whole read; newer torch lists the dir as the FX cache does, unverified).
// A dir without its entry is an error here, where torch would log and
// compile.
func (p *pyos) aotHit(res *Result, root, expect string) error {
	dir := filepath.Join(root, res.Key)
	if _, ok := p.exists(dir); !ok {
		return fmt.Errorf("no %s: %w", dir, ErrNotFound)
	}
	_, err := p.readUnitFile(res, root, res.Key+"/"+aotEntry, expect)
	return err
}

// moduleHit is CompiledFxGraph.write_to_disk and PyCodeCache's load:
// os.path.exists of the module (written where missing), then open and
// read it. A wrapper module's kernels (its "# kernel path:" lines) are
// then loaded the same way, each with its autotune result.
func (p *pyos) moduleHit(res *Result, root, rel, expect string) error {
	st, ok := p.exists(filepath.Join(root, rel))
	if !ok {
		return fmt.Errorf("no %s (Inductor writes it): %w", filepath.Join(root, rel), ErrNotFound)
	}
	data, err := p.statReadUnitFile(res, root, rel, expect, st)
	if err != nil {
		return err
	}
	kernels, err := kernelModules(data)
	if err != nil {
		return fmt.Errorf("%s: %w", rel, err)
	}
	for _, k := range kernels {
		st, ok := p.exists(filepath.Join(root, k))
		if !ok {
			return fmt.Errorf("no kernel module %s (Inductor writes it): %w", filepath.Join(root, k), ErrNotFound)
		}
		if _, err := p.statReadUnitFile(res, root, k, expect, st); err != nil {
			return err
		}
		bcs, err := p.bestConfigsOf(root, k)
		if err != nil {
			return err
		}
		for _, bc := range bcs {
			if err := p.bestConfigHit(res, root, bc, expect); err != nil {
				return err
			}
		}
	}
	return nil
}

// kernelModules lists the kernel modules a wrapper module names in its
// "# kernel path: /abs/<yy>/<name>.py" comments, as units. Inductor
// recomputes each path from the kernel's source under the current cache
// dir; the comment's last two elements are that.
func kernelModules(data []byte) ([]string, error) {
	const tag = "# kernel path: "
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, tag) {
			continue
		}
		unit, err := moduleOf(strings.TrimSpace(line[len(tag):]))
		if err != nil {
			return nil, fmt.Errorf("kernel path: %w", err)
		}
		if !slices.Contains(out, unit) {
			out = append(out, unit)
		}
	}
	return out, sc.Err()
}

// bestConfigsOf finds a kernel module's autotune results. Older torch
// names it <module>.best_config; newer torch names it by a hash of the
// autotune key and torch_key(), which a replay cannot compute, so it takes
// every .best_config beside the module. The listing is the replay's.
func (p *pyos) bestConfigsOf(root, module string) ([]string, error) {
	dir := filepath.Dir(module)
	des, err := os.ReadDir(filepath.Join(root, dir))
	p.log("getdents(%q) [replay only]", err, filepath.Join(root, dir))
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", filepath.Join(root, dir), err)
	}
	own := strings.TrimSuffix(filepath.Base(module), ".py") + ".best_config"
	var out []string
	for _, de := range des {
		switch n := de.Name(); {
		case n == own:
			return []string{dir + "/" + n}, nil
		case strings.HasSuffix(n, ".best_config") && de.Type().IsRegular():
			out = append(out, dir+"/"+n)
		}
	}
	sort.Strings(out)
	return out, nil
}

// bestConfigHit is the local autotune cache's get: open(path, "rb") and
// read; a missing file means autotuning again.
func (p *pyos) bestConfigHit(res *Result, root, rel, expect string) error {
	data, err := p.readUnitFile(res, root, rel, expect)
	if errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("no %s (Inductor autotunes): %w", filepath.Join(root, rel), ErrNotFound)
	}
	if err == nil && !json.Valid(data) {
		return fmt.Errorf("%s: not JSON", filepath.Join(root, rel))
	}
	return err
}

// tritonUnitHit is TritonBundler.read_and_emit finding the kernel's dir
// (os.path.exists and a non-empty os.listdir: left alone) and then
// Triton's hit of it under its cache dir dir. An absent or empty dir is
// where Inductor would write the bundled kernel.
func (p *pyos) tritonUnitHit(res *Result, dir, expect string) error {
	key := filepath.Base(res.Key)
	kd := filepath.Join(dir, key)
	if _, ok := p.exists(kd); !ok {
		return fmt.Errorf("no %s (Inductor writes its bundled kernel): %w", kd, ErrNotFound)
	}
	names, err := p.listdir(kd)
	if err != nil {
		return err
	}
	if len(names) == 0 {
		return fmt.Errorf("%s is empty (Inductor writes its bundled kernel): %w", kd, ErrNotFound)
	}
	sub := Result{Key: key}
	err = p.doHit(&sub, dir, "", expect)
	res.Files += sub.Files
	res.Bytes += sub.Bytes
	res.Name = sub.Name
	return err
}

// timingsHit is CacheBase.get_local_cache: Path.is_file, then open and
// json.load.
func (p *pyos) timingsHit(res *Result, root, expect string) error {
	path := filepath.Join(root, res.Key)
	st, ok := p.exists(path)
	if !ok || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("no file %s (Inductor benchmarks): %w", path, ErrNotFound)
	}
	data, err := p.statReadUnitFile(res, root, res.Key, expect, st)
	if err == nil && !json.Valid(data) {
		return fmt.Errorf("%s: not JSON", path)
	}
	return err
}

// fileLock is torch's FileLock around a compile, as py-filelock's
// UnixFileLock does it (tox-dev/filelock main, 2026): make the lock dir,
// open the lock file O_RDWR|O_TRUNC|O_NOFOLLOW|O_CREAT, fchmod, then
// flock(LOCK_EX|LOCK_NB), polled every 50 ms; a lock on a file another
// holder unlinked meanwhile (fstat's st_nlink 0) is dropped and retried.
// Release unlinks the file, then flock(LOCK_UN) and close. (2024's 3.x
// releases pass O_CREAT only where the file is missing and keep it.)
// While holding it the replay checks that a second open of the file
// cannot take the lock: a filesystem whose flock always succeeds would let
// two compiles race.
func (p *pyos) fileLock(path string) error {
	dir := filepath.Dir(path)
	// codecache.get_lock_dir.
	if _, ok := p.exists(dir); !ok {
		if _, _, err := p.makedirs(dir); err != nil {
			return err
		}
	}
	// py-filelock's ensure_directory_exists.
	if err := p.pathMkdir(dir); err != nil {
		return err
	}
	deadline := time.Now().Add(lockTimeout)
	for {
		fd, err := p.openFlags(path, unix.O_RDWR|unix.O_TRUNC|unix.O_NOFOLLOW|unix.O_CREAT, "O_RDWR|O_CREAT|O_TRUNC|O_NOFOLLOW", 0o644)
		if err != nil {
			return err
		}
		err = retry(func() error { return unix.Fchmod(fd, 0o644) })
		p.log("fchmod(%d, 0644)", err, fd)
		if err != nil && !errors.Is(err, unix.EPERM) {
			p.close(fd)
			return fmt.Errorf("fchmod %s: %w", path, err)
		}
		err = p.flock(fd, unix.LOCK_EX|unix.LOCK_NB, "LOCK_EX|LOCK_NB")
		if err == nil {
			var st unix.Stat_t
			if err := p.fstat(fd, &st); err != nil {
				p.close(fd)
				return fmt.Errorf("fstat %s: %w", path, err)
			}
			if st.Nlink > 0 {
				return p.holdLock(path, fd)
			}
			p.close(fd) // unlinked by the holder before us: try again
		} else {
			p.close(fd)
			switch {
			case errors.Is(err, unix.ENOSYS):
				return fmt.Errorf("flock %s: the filesystem does not support flock: %w", path, err)
			case !errors.Is(err, unix.EWOULDBLOCK):
				return fmt.Errorf("flock %s: %w", path, err)
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("flock %s: still held by another process after %v", path, lockTimeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// holdLock checks that the lock held on fd excludes another open file
// description, then releases it.
func (p *pyos) holdLock(path string, fd int) (err error) {
	defer func() {
		rerr := retry(func() error { return unix.Unlink(path) })
		p.log("unlink(%q)", rerr, path) // errors are ignored
		uerr := p.flock(fd, unix.LOCK_UN, "LOCK_UN")
		cerr := p.close(fd)
		if err == nil && uerr != nil {
			err = fmt.Errorf("unlock %s: %w", path, uerr)
		}
		if err == nil && cerr != nil {
			err = fmt.Errorf("close %s: %w", path, cerr)
		}
	}()
	p.replayOnly(func() {
		var fd2 int
		if fd2, err = p.openFlags(path, unix.O_RDONLY, "O_RDONLY", 0); err != nil {
			return
		}
		ferr := p.flock(fd2, unix.LOCK_EX|unix.LOCK_NB, "LOCK_EX|LOCK_NB")
		p.close(fd2)
		if !errors.Is(ferr, unix.EWOULDBLOCK) {
			err = fmt.Errorf("flock %s: a second open took the lock held on the first (%v), want EWOULDBLOCK", path, ferr)
		}
	})
	return err
}

// doInductorMiss writes the unit of the source dir from into root as
// Inductor does, then reads it back with the hit sequence.
func (p *pyos) doInductorMiss(res *Result, root, from string) error {
	kind, err := inductorUnitKind(res.Key)
	if err != nil {
		return err
	}
	if root, err = filepath.Abs(root); err != nil {
		return err
	}
	if err := p.inductorPut(root, res.Key, from); err != nil {
		return err
	}
	if kind == unitLock {
		res.Kind = kind
		return nil // the lock was taken and released: nothing to read back
	}
	if err := p.doInductorHit(res, root, from); err != nil {
		return fmt.Errorf("read back: %w", err)
	}
	return nil
}

// inductorPut writes one unit of the source dir from into root.
func (p *pyos) inductorPut(root, unit, from string) error {
	kind, err := inductorUnitKind(unit)
	if err != nil {
		return err
	}
	path := filepath.Join(root, unit)
	switch kind {
	case unitFXGraph, unitAOT:
		// _write_to_local_cache: makedirs of the key's dir where missing,
		// then write_atomic of each entry (FX: make_dirs=True).
		names, err := sourceFiles(filepath.Join(from, unit))
		if err != nil {
			return err
		}
		if _, ok := p.exists(path); !ok {
			if _, _, err := p.makedirs(path); err != nil {
				return err
			}
		}
		for _, n := range names {
			data, err := os.ReadFile(filepath.Join(from, unit, n))
			if err != nil {
				return fmt.Errorf("source: %w", err)
			}
			if err := p.writeAtomic(filepath.Join(path, n), data, kind == unitFXGraph, false); err != nil {
				return err
			}
		}
		return nil
	case unitModule:
		return p.modulePut(root, unit, from)
	case unitBestConfig, unitTimings:
		// _LocalAutotuneCacheBackend._put (bytes); CacheBase.update_local_cache
		// (a str, after get_local_cache's is_file and read, which a miss
		// skips).
		data, err := os.ReadFile(filepath.Join(from, unit))
		if err != nil {
			return fmt.Errorf("source: %w", err)
		}
		return p.writeAtomic(path, data, true, kind == unitTimings)
	case unitTriton:
		return p.emitBundle(root, unit, from)
	case unitLock:
		return p.fileLock(path)
	}
	return fmt.Errorf("unit kind %s is not modelled", kind)
}

// sourceFiles lists the regular files of a source dir, sorted.
func sourceFiles(dir string) ([]string, error) {
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("source: %w", err)
	}
	var names []string
	for _, de := range des {
		if de.Type().IsRegular() {
			names = append(names, de.Name())
		}
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("source %s holds no file", dir)
	}
	return names, nil
}

// modulePut is PyCodeCache.write: write_atomic(make_dirs=True) where the
// module is missing. A wrapper's kernel modules are written the same way
// when it runs, each with its autotune result.
func (p *pyos) modulePut(root, unit, from string) error {
	data, err := os.ReadFile(filepath.Join(from, unit))
	if err != nil {
		return fmt.Errorf("source: %w", err)
	}
	if _, ok := p.exists(filepath.Join(root, unit)); !ok {
		if err := p.writeAtomic(filepath.Join(root, unit), data, true, true); err != nil {
			return err
		}
	}
	kernels, err := kernelModules(data)
	if err != nil {
		return fmt.Errorf("source %s: %w", unit, err)
	}
	src := &pyos{} // reads of the source are not Inductor's
	for _, k := range kernels {
		if err := p.modulePut(root, k, from); err != nil {
			return err
		}
		bcs, err := src.bestConfigsOf(from, k)
		if err != nil {
			return fmt.Errorf("source: %w", err)
		}
		for _, bc := range bcs {
			if err := p.inductorPut(root, bc, from); err != nil {
				return err
			}
		}
	}
	return nil
}

// emitBundle is TritonBundler.read_and_emit writing a kernel that an FX
// graph entry bundles: where triton/<device>/<KEY> is absent or empty, the
// files go to a fresh tmp.<uuid4> dir beside it (".json" files with the
// kernel dir for "[REPLACE]": here the source's group file rewritten to
// it), which os.replace moves onto the KEY dir. Where another process won
// the race the rename fails and Inductor logs it and leaves its tmp dir;
// the replay does too, and fails on any other rename error.
func (p *pyos) emitBundle(root, unit, from string) error {
	basedir := filepath.Join(root, filepath.Dir(unit))
	kd := filepath.Join(root, unit)
	if _, ok := p.exists(kd); ok {
		names, err := p.listdir(kd)
		if err != nil {
			return err
		}
		if len(names) > 0 {
			return nil
		}
	}
	src := filepath.Join(from, unit)
	names, err := sourceFiles(src)
	if err != nil {
		return err
	}
	if err := p.pathMkdir(basedir); err != nil {
		return err
	}
	tmp := filepath.Join(basedir, "tmp."+uuid4())
	if _, _, err := p.makedirs(tmp); err != nil {
		return err
	}
	for _, n := range names {
		data, err := os.ReadFile(filepath.Join(src, n))
		if err != nil {
			return fmt.Errorf("source: %w", err)
		}
		if triton.IsGroupFile(n) {
			if data, err = triton.RewriteGroup(data, basedir); err != nil {
				return fmt.Errorf("source %s: %w", n, err)
			}
		}
		if err := p.writeFile(filepath.Join(tmp, n), data); err != nil {
			return err
		}
	}
	err = p.replace(tmp, kd)
	if err == nil || !(errors.Is(err, unix.ENOTEMPTY) || errors.Is(err, unix.EEXIST)) {
		return err
	}
	if names, lerr := os.ReadDir(kd); lerr != nil || len(names) == 0 {
		return fmt.Errorf("%w, though %s is not a non-empty dir", err, kd)
	}
	return nil
}
