package kind

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"cargohold/gpu"
	"cargohold/triton"
)

// Unit is one dir of a cache tree with files of its own.
type Unit struct {
	Path    string          // slash-separated, relative to the kind's root
	Triton  bool            // a Triton KEY dir (IsTritonUnit)
	Files   []triton.File   // sorted by name
	Kernels []triton.Kernel // Triton units: the parsed kernel JSONs, sorted by hash
}

// Targets lists the distinct targets of the unit's kernels.
func (u Unit) Targets() []gpu.Target {
	var ts []gpu.Target
	for _, k := range u.Kernels {
		ts = append(ts, k.Target)
	}
	return gpu.Dedup(ts)
}

// Size is the bytes of the unit's files.
func (u Unit) Size() int64 {
	var n int64
	for _, f := range u.Files {
		n += f.Size
	}
	return n
}

// Skipped is a path Scan left out, with why.
type Skipped = triton.Skipped

// Tree is a scanned cache.
type Tree struct {
	Kind    Kind
	Root    string    // the dir scanned
	Units   []Unit    // sorted by path
	Skipped []Skipped // what the kind does not take, local-only paths left out
}

// Kernels lists the kernels of the tree's Triton units.
func (t *Tree) Kernels() []triton.Kernel {
	var ks []triton.Kernel
	for _, u := range t.Units {
		ks = append(ks, u.Kernels...)
	}
	return ks
}

// Size is the bytes of every unit's files: what the image packs.
func (t *Tree) Size() int64 {
	var n int64
	for _, u := range t.Units {
		n += u.Size()
	}
	return n
}

// Entries are the Triton units as triton.Entry values (Key the unit path),
// for Triton's labels and manifest.
func (t *Tree) Entries() []triton.Entry {
	var es []triton.Entry
	for _, u := range t.Units {
		if !u.Triton {
			continue
		}
		es = append(es, triton.Entry{Key: u.Path, Files: u.Files, Kernels: u.Kernels, Kind: triton.KindOf(u.Files, u.Kernels)})
	}
	return es
}

// ErrNoUnits is returned by Scan for a dir without any unit; for a Triton
// cache the error also wraps triton.ErrNoEntries.
var ErrNoUnits = errors.New("no cache units")

// Scan reads a cache tree of kind k rooted at dir. Units come sorted by
// path; what the kind does not take is in Tree.Skipped (a dir it does not
// take is named once, not file by file); local-only paths are left out
// silently. A kernel JSON whose hash does not match its KEY dir is an error:
// Triton would never find it there, and shipping it hides a bug.
func Scan(dir string, k Kind) (*Tree, error) {
	if !k.Valid() {
		return nil, fmt.Errorf("kind: scan %s: unknown kind %q", dir, k)
	}
	t := &Tree{Kind: k, Root: dir}
	var walk func(abs, rel string, p pos) error
	walk = func(abs, rel string, p pos) error {
		des, err := os.ReadDir(abs)
		if err != nil {
			return fmt.Errorf("kind: scan %s: %w", abs, err)
		}
		var files []triton.File
		for _, de := range des {
			name := de.Name()
			childAbs := filepath.Join(abs, name)
			childRel := name
			if rel != "" {
				childRel = rel + "/" + name
			}
			if err := CheckName(name); err != nil {
				t.Skipped = append(t.Skipped, Skipped{Path: childAbs, Reason: err.Error()})
				continue
			}
			switch {
			case de.IsDir():
				cp, v, why := dirStep(p, name)
				switch v {
				case skip:
					t.Skipped = append(t.Skipped, Skipped{Path: childAbs, Reason: why})
				case take:
					if err := walk(childAbs, childRel, cp); err != nil {
						return err
					}
				}
			case de.Type().IsRegular():
				v, why := fileStep(p, name)
				switch v {
				case skip:
					t.Skipped = append(t.Skipped, Skipped{Path: childAbs, Reason: why})
				case take:
					info, err := de.Info()
					if err != nil {
						return fmt.Errorf("kind: scan %s: %w", childAbs, err)
					}
					files = append(files, triton.File{Name: name, Size: info.Size(), Mode: info.Mode().Perm()})
				}
			default:
				t.Skipped = append(t.Skipped, Skipped{Path: childAbs, Reason: "not a regular file or dir (symlink, device, socket)"})
			}
		}
		if len(files) == 0 {
			return nil
		}
		u := Unit{Path: rel, Triton: p == posTritonKey}
		if u.Triton {
			e, err := triton.NewEntry(abs, files, func(name string) ([]byte, error) {
				return os.ReadFile(filepath.Join(abs, name))
			})
			if err != nil {
				return err
			}
			u.Files, u.Kernels = e.Files, e.Kernels
		} else {
			slices.SortFunc(files, func(a, b triton.File) int { return strings.Compare(a.Name, b.Name) })
			u.Files = files
		}
		t.Units = append(t.Units, u)
		return nil
	}
	if err := walk(dir, "", start(k)); err != nil {
		return nil, err
	}
	slices.SortFunc(t.Units, func(a, b Unit) int { return strings.Compare(a.Path, b.Path) })
	if len(t.Units) == 0 {
		if k == Triton {
			return t, fmt.Errorf("kind: scan %s as a %s cache: %w: %w", dir, k, ErrNoUnits, triton.ErrNoEntries)
		}
		return t, fmt.Errorf("kind: scan %s as a %s cache: %w", dir, k, ErrNoUnits)
	}
	return t, nil
}

// ErrUnknown says a dir holds no cache kind Detect knows.
var ErrUnknown = errors.New("no cache cargohold knows")

// Detect tells a cache root's kind from its tree: vLLM when it holds
// torch_compile_cache/; Inductor when it holds fxgraph/, aotautograd/ or
// triton/<device>/; Triton when it holds KEY dirs; else Inductor when it
// holds 2-letter module dirs with files. A dir that matches none is an error
// wrapping ErrUnknown that names what it found.
func Detect(dir string) (Kind, error) {
	des, err := os.ReadDir(dir)
	if err != nil {
		return "", fmt.Errorf("kind: detect %s: %w", dir, err)
	}
	has := func(name string) bool {
		st, err := os.Stat(filepath.Join(dir, name))
		return err == nil && st.IsDir()
	}
	if has(vllmCompileDir) {
		return VLLM, nil
	}
	if has("fxgraph") || has("aotautograd") {
		return Inductor, nil
	}
	if has("triton") {
		sub, _ := os.ReadDir(filepath.Join(dir, "triton"))
		if slices.ContainsFunc(sub, fs.DirEntry.IsDir) {
			return Inductor, nil
		}
	}
	var seen []string
	modules := false
	for _, de := range des {
		if len(seen) < 8 {
			seen = append(seen, de.Name())
		}
		if de.IsDir() && triton.IsKey(de.Name()) {
			return Triton, nil
		}
		if de.IsDir() && len(de.Name()) == 2 {
			sub, _ := os.ReadDir(filepath.Join(dir, de.Name()))
			modules = modules || slices.ContainsFunc(sub, func(e fs.DirEntry) bool { return e.Type().IsRegular() })
		}
	}
	if modules {
		return Inductor, nil
	}
	found := "nothing"
	if len(seen) > 0 {
		found = strings.Join(seen, ", ")
		if len(des) > len(seen) {
			found += fmt.Sprintf(" and %d more", len(des)-len(seen))
		}
	}
	return "", fmt.Errorf("kind: %s: %w: want a Triton cache (KEY dirs), a vLLM cache root (torch_compile_cache/) "+
		"or an Inductor cache (fxgraph/, aotautograd/, triton/<device>/, 2-letter module dirs); found %s (say --cache KIND)",
		dir, ErrUnknown, found)
}
