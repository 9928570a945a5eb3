package replay

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"cargohold/triton"
)

// Outcome is how the replay of one KEY ended.
type Outcome string

const (
	OutcomeHit   Outcome = "hit"   // read from the cache
	OutcomeMiss  Outcome = "miss"  // written as a local compile would, then read back
	OutcomeError Outcome = "error" // see Result.Error
)

// Result is what the replay of one KEY did.
type Result struct {
	Key      string   `json:"key"`
	Outcome  Outcome  `json:"outcome"`
	Name     string   `json:"name,omitempty"` // kernel name, or the launcher's .so
	Kind     string   `json:"kind,omitempty"` // "kernel" or "launcher"
	Files    int      `json:"files"`          // files read in full
	Bytes    int64    `json:"bytes"`          // bytes read
	Error    string   `json:"error,omitempty"`
	Mismatch bool     `json:"mismatch,omitempty"` // the error is a byte mismatch with the expected source
	Seconds  float64  `json:"seconds"`
	Proc     int      `json:"proc"`            // replay process that ran it, 0 in-process
	Trace    []string `json:"trace,omitempty"` // the syscalls made, strace style
}

// Hit replays a Triton cache hit of key under root. The kernel name is
// found by listing the KEY dir. With expect set (a cache dir holding
// expect/KEY), every file read must equal the source's, the group file
// after rewriting its child paths to root. The error wraps ErrNotFound
// when Triton would compile instead.
func Hit(root, key, expect string) (Result, error) {
	return HitNamed(root, key, "", expect)
}

// HitNamed is Hit for a known name, as Triton knows it: a kernel name
// (reads __grp__NAME.json) or a launcher's file name ending in ".so".
func HitNamed(root, key, name, expect string) (Result, error) {
	return newPyos().hit(root, key, name, expect)
}

func (p *pyos) hit(root, key, name, expect string) (Result, error) {
	start := time.Now()
	res := Result{Key: key, Outcome: OutcomeHit, Name: name}
	err := p.doHit(&res, root, name, expect)
	return res, p.finish(&res, "hit", start, err)
}

// finish fills in what every result carries and wraps err with the
// operation.
func (p *pyos) finish(res *Result, op string, start time.Time, err error) error {
	res.Seconds = time.Since(start).Seconds()
	res.Trace = p.trace
	if err == nil {
		return nil
	}
	err = fmt.Errorf("replay: %s %s: %w", op, res.Key, err)
	res.Outcome, res.Error = OutcomeError, err.Error()
	var m *MismatchError
	res.Mismatch = errors.As(err, &m)
	return err
}

// doHit replays the hit of res.Key, filling in res.
func (p *pyos) doHit(res *Result, root, name, expect string) error {
	if !triton.IsKey(res.Key) {
		return fmt.Errorf("%q is not a cache KEY", res.Key)
	}
	root, err := filepath.Abs(root)
	if err != nil {
		return err
	}
	kd := filepath.Join(root, res.Key)
	created, mkdirErr, err := p.makedirs(kd)
	if err != nil {
		return err
	}
	if created {
		return fmt.Errorf("no dir %s (Triton made it and compiles): %w", kd, ErrNotFound)
	}
	if !errors.Is(mkdirErr, unix.EEXIST) {
		return fmt.Errorf("mkdir of existing %s failed %s, want EEXIST", kd, errnoName(mkdirErr))
	}
	if name == "" {
		if name, err = p.discover(kd); err != nil {
			return err
		}
		res.Name = name
	}
	if strings.HasSuffix(name, ".so") {
		res.Kind = "launcher"
		return p.hitLauncher(res, root, name, expect)
	}
	res.Kind = "kernel"
	return p.hitKernel(res, root, name, expect)
}

// discover finds the name Triton would know: the KEY's one group file, or
// else its one launcher .so. This listing is the replay's, not Triton's.
func (p *pyos) discover(kd string) (string, error) {
	des, err := os.ReadDir(kd)
	p.log("getdents(%q) [replay only]", err, kd)
	if err != nil {
		return "", fmt.Errorf("list %s: %w", kd, err)
	}
	var groups, sos []string
	for _, de := range des {
		switch n := de.Name(); {
		case triton.IsGroupFile(n):
			groups = append(groups, strings.TrimSuffix(strings.TrimPrefix(n, triton.GroupPrefix), triton.GroupSuffix))
		case strings.HasSuffix(n, ".so") && de.Type().IsRegular():
			sos = append(sos, n)
		}
	}
	switch {
	case len(groups) == 1:
		return groups[0], nil
	case len(groups) > 1:
		return "", fmt.Errorf("%s holds %d group files %v: give the kernel name", kd, len(groups), groups)
	case len(sos) == 1:
		return sos[0], nil
	case len(sos) > 1:
		return "", fmt.Errorf("%s holds %d launchers %v: give the name", kd, len(sos), sos)
	}
	return "", fmt.Errorf("%s holds no group file: %w", kd, ErrNotFound)
}

// hitKernel is FileCacheManager.get_group then CompiledKernel's reads.
func (p *pyos) hitKernel(res *Result, root, name, expect string) error {
	kd := filepath.Join(root, res.Key)
	grpName := triton.GroupPrefix + name + triton.GroupSuffix
	grp := filepath.Join(kd, grpName)
	st, ok := p.exists(grp)
	if !ok {
		return fmt.Errorf("no %s: %w", grp, ErrNotFound)
	}
	data, err := p.readChecked(grp, st.Size)
	if err != nil {
		return err
	}
	res.Files++
	res.Bytes += int64(len(data))
	children, err := triton.ParseGroup(data)
	if err != nil {
		return fmt.Errorf("%s: %w", grp, err)
	}
	sizes := make([]int64, len(children))
	meta := -1
	for i, c := range children {
		want := filepath.Join(root, res.Key, c.Name)
		if filepath.Clean(c.Path) != want || !filepath.IsAbs(c.Path) {
			return &OutsideRootError{Key: res.Key, Child: c.Name, Path: c.Path, Want: want}
		}
		st, ok := p.exists(c.Path)
		if !ok {
			return fmt.Errorf("group child %s is missing", c.Path)
		}
		sizes[i] = st.Size
		if c.Name == name+".json" {
			meta = i
		}
	}
	if expect != "" {
		if err := compareGroup(res.Key, grpName, data, filepath.Join(expect, res.Key, grpName), root); err != nil {
			return err
		}
	}
	if meta < 0 {
		return fmt.Errorf("%s lists no %s.json (Triton would recompile)", grp, name)
	}
	// CompiledKernel reads the metadata first, then the rest in group order.
	order := append([]int{meta}, slices.DeleteFunc(seq(len(children)), func(i int) bool { return i == meta })...)
	for _, i := range order {
		c := children[i]
		data, err := p.readChecked(c.Path, sizes[i])
		if err != nil {
			return err
		}
		res.Files++
		res.Bytes += int64(len(data))
		if expect != "" {
			if err := compareFile(res.Key, c.Name, data, filepath.Join(expect, res.Key, c.Name)); err != nil {
				return err
			}
		}
	}
	return nil
}

func seq(n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = i
	}
	return s
}

// readChecked reads a file in full and checks that the sizes stat and
// fstat gave are what reading gave.
func (p *pyos) readChecked(path string, statSize int64) ([]byte, error) {
	data, fsz, err := p.readFile(path)
	if err != nil {
		return nil, err
	}
	n := int64(len(data))
	if fsz != n {
		return nil, &SizeError{Path: path, Stat: fsz, Read: n, Call: "fstat"}
	}
	if statSize != n {
		return nil, &SizeError{Path: path, Stat: statSize, Read: n, Call: "stat"}
	}
	return data, nil
}

// hitLauncher is Triton's compile_module_from_src on a hit: get_file (a
// stat), then importlib's dlopen of the cached .so.
func (p *pyos) hitLauncher(res *Result, root, name, expect string) error {
	so := filepath.Join(root, res.Key, name)
	if _, ok := p.exists(so); !ok {
		return fmt.Errorf("no %s: %w", so, ErrNotFound)
	}
	data, err := p.dlopen(so)
	if err != nil {
		return err
	}
	res.Files++
	res.Bytes += int64(len(data))
	if expect != "" {
		return compareFile(res.Key, name, data, filepath.Join(expect, res.Key, name))
	}
	return nil
}

// dlopen maps a shared object as the dynamic loader does: open, read the
// ELF header, fstat, map it private and executable (this fails with EPERM
// on a noexec mount). It returns the bytes seen through the mapping.
func (p *pyos) dlopen(path string) (data []byte, err error) {
	var fd int
	err = retry(func() (e error) { fd, e = unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0); return })
	p.logN("openat(%q, O_RDONLY|O_CLOEXEC)", fd, err, path)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	defer func() {
		cerr := unix.Close(fd)
		p.log("close(%d)", cerr, fd)
		if err == nil && cerr != nil {
			err = fmt.Errorf("close %s: %w", path, cerr)
		}
	}()
	hdr := make([]byte, 832)
	var n int
	err = retry(func() (e error) { n, e = unix.Read(fd, hdr); return })
	p.logN("read(%d, 832)", n, err, fd)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if !bytes.HasPrefix(hdr[:n], []byte("\x7fELF")) {
		return nil, fmt.Errorf("%s: invalid ELF header", path)
	}
	var st unix.Stat_t
	if err := p.fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("fstat %s: %w", path, err)
	}
	m, err := unix.Mmap(fd, 0, int(st.Size), unix.PROT_READ|unix.PROT_EXEC, unix.MAP_PRIVATE)
	p.log("mmap(%d, PROT_READ|PROT_EXEC, MAP_PRIVATE, %d)", err, st.Size, fd)
	if err != nil {
		return nil, fmt.Errorf("mmap %s executable: %w", path, err)
	}
	data = bytes.Clone(m)
	err = unix.Munmap(m)
	p.log("munmap(%d)", err, st.Size)
	if !bytes.Equal(data[:min(n, len(data))], hdr[:min(n, len(data))]) {
		return nil, fmt.Errorf("%s: mapping and read disagree on the ELF header", path)
	}
	return data, nil
}

// compareFile checks data against the source file want.
func compareFile(key, name string, data []byte, want string) error {
	w, err := os.ReadFile(want)
	if err != nil {
		return fmt.Errorf("expected source: %w", err)
	}
	return compareBytes(key, name, data, w)
}

// compareGroup checks a group file against the source's, rewritten to the
// root Triton sees.
func compareGroup(key, name string, data []byte, want, root string) error {
	w, err := os.ReadFile(want)
	if err != nil {
		return fmt.Errorf("expected source: %w", err)
	}
	if w, err = triton.RewriteGroup(w, root); err != nil {
		return fmt.Errorf("expected source %s: %w", want, err)
	}
	return compareBytes(key, name, data, w)
}

func compareBytes(key, name string, got, want []byte) error {
	if bytes.Equal(got, want) {
		return nil
	}
	off := 0
	for off < len(got) && off < len(want) && got[off] == want[off] {
		off++
	}
	return &MismatchError{Key: key, File: name, Offset: int64(off), Got: int64(len(got)), Want: int64(len(want))}
}
