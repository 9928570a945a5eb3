package triton

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"cargohold/gpu"
)

// Kind says what a cache entry holds.
type Kind string

const (
	KindKernel   Kind = "kernel"   // kernel metadata JSON and its files
	KindLauncher Kind = "launcher" // a compiled launcher .so, no kernel JSON
	KindOther    Kind = "other"    // anything else Triton keeps by KEY
)

// File is one regular file of an entry.
type File struct {
	Name string
	Size int64
	Mode fs.FileMode
}

// Entry is one KEY dir of a cache.
type Entry struct {
	Key     string
	Kind    Kind
	Files   []File   // sorted by name
	Kernels []Kernel // parsed kernel JSONs, sorted by hash
}

// Targets lists the distinct targets of the entry's kernels.
func (e Entry) Targets() []gpu.Target {
	var ts []gpu.Target
	for _, k := range e.Kernels {
		ts = append(ts, k.Target)
	}
	return gpu.Dedup(ts)
}

// ErrNoEntries is returned by Scan for a dir without any cache entry.
var ErrNoEntries = errors.New("no Triton cache entries")

// Skipped is a path Scan left out, with why.
type Skipped struct {
	Path   string
	Reason string
}

// Scan reads a cache dir. It returns its entries sorted by KEY and what it
// skipped (stray files, leftover tmp dirs of interrupted writes, symlinks).
// A kernel JSON whose hash does not match its dir name is an error: such an
// entry would never be found by Triton, and shipping it hides a bug.
func Scan(dir string) ([]Entry, []Skipped, error) {
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil, fmt.Errorf("triton: scan %s: %w", dir, err)
	}
	var entries []Entry
	var skipped []Skipped
	for _, de := range des {
		p := filepath.Join(dir, de.Name())
		if !de.IsDir() || !IsKey(de.Name()) {
			skipped = append(skipped, Skipped{p, "not a cache entry (want a dir named by a KEY: 52 base32 letters or 64 hex digits)"})
			continue
		}
		e, sk, err := ScanEntry(p)
		if err != nil {
			return nil, nil, err
		}
		skipped = append(skipped, sk...)
		if len(e.Files) == 0 {
			skipped = append(skipped, Skipped{p, "empty entry"})
			continue
		}
		entries = append(entries, e)
	}
	if len(entries) == 0 {
		return nil, skipped, fmt.Errorf("triton: scan %s: %w", dir, ErrNoEntries)
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Key < entries[j].Key })
	return entries, skipped, nil
}

// ScanEntry reads one KEY dir.
func ScanEntry(dir string) (Entry, []Skipped, error) {
	des, err := os.ReadDir(dir)
	if err != nil {
		return Entry{Key: filepath.Base(dir)}, nil, fmt.Errorf("triton: scan %s: %w", dir, err)
	}
	var skipped []Skipped
	var files []File
	for _, de := range des {
		p := filepath.Join(dir, de.Name())
		if !de.Type().IsRegular() {
			skipped = append(skipped, Skipped{p, "not a regular file (tmp dir of an interrupted write, symlink or device)"})
			continue
		}
		info, err := de.Info()
		if err != nil {
			return Entry{Key: filepath.Base(dir)}, nil, fmt.Errorf("triton: scan %s: %w", p, err)
		}
		files = append(files, File{Name: de.Name(), Size: info.Size(), Mode: info.Mode().Perm()})
	}
	e, err := NewEntry(dir, files, func(name string) ([]byte, error) { return os.ReadFile(filepath.Join(dir, name)) })
	return e, skipped, err
}

// NewEntry is the Entry of the KEY dir dir (named in errors; its base name
// is the KEY) holding files, whose kernel JSONs read returns by file name:
// ScanEntry without the directory listing, for a caller that has the files
// in hand.
func NewEntry(dir string, files []File, read func(name string) ([]byte, error)) (Entry, error) {
	e := Entry{Key: filepath.Base(dir), Files: slices.Clone(files)}
	for _, f := range files {
		if !strings.HasSuffix(f.Name, ".json") || IsGroupFile(f.Name) {
			continue
		}
		p := filepath.Join(dir, f.Name)
		data, err := read(f.Name)
		if err != nil {
			return e, fmt.Errorf("triton: scan %s: %w", p, err)
		}
		k, ok, err := ParseKernel(data)
		if err != nil {
			return e, fmt.Errorf("triton: %s: %w", p, err)
		}
		if !ok {
			continue
		}
		if !k.In(e.Key) {
			return e, fmt.Errorf("triton: %s: hash %s belongs in dir %s, not %s", p, k.Hash, k.Key(), e.Key)
		}
		e.Kernels = append(e.Kernels, k)
	}
	sort.Slice(e.Files, func(i, j int) bool { return e.Files[i].Name < e.Files[j].Name })
	sort.Slice(e.Kernels, func(i, j int) bool { return e.Kernels[i].Hash < e.Kernels[j].Hash })
	e.Kind = KindOf(files, e.Kernels)
	return e, nil
}

// KindOf is the Kind of an entry holding files whose parsed kernel JSONs
// are kernels.
func KindOf(files []File, kernels []Kernel) Kind {
	switch {
	case len(kernels) > 0:
		return KindKernel
	case slices.ContainsFunc(files, func(f File) bool { return strings.HasSuffix(f.Name, ".so") }):
		return KindLauncher
	default:
		return KindOther
	}
}
