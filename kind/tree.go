package kind

import (
	"fmt"
	"path"
	"strings"

	"cargohold/triton"
)

// pos is what a dir of a cache tree is: it decides what the entries in it
// are.
type pos uint8

const (
	posVLLMRoot       pos = iota // $VLLM_CACHE_ROOT: torch_compile_cache/, modelinfos/
	posPlain                     // a dir whose files make a unit (vLLM, Inductor)
	posTritonRoot                // a Triton cache: its dirs are KEY dirs
	posTritonKey                 // a KEY dir: its files make a Triton unit
	posInductorRoot              // an Inductor cache: the root, or a vLLM rank's inductor_cache/
	posInductorTriton            // Inductor's triton/: its dirs are device dirs, each a Triton cache
	posArtifact                  // a vLLM "unpacked" artifact dir: a small Inductor cache
)

// start is the pos of a kind's root.
func start(k Kind) pos {
	switch k {
	case VLLM:
		return posVLLMRoot
	case Inductor:
		return posInductorRoot
	}
	return posTritonRoot
}

// verdict says what becomes of an entry.
type verdict uint8

const (
	take  verdict = iota // a dir to descend into, a file of a unit
	local                // local-only: never packed or served, not worth a warning
	skip                 // not taken: named in a warning
)

// Names the frameworks use for their trees.
const (
	vllmCompileDir  = "torch_compile_cache"
	vllmModelInfos  = "modelinfos"
	vllmCacheFile   = "vllm_compile_cache.py"
	vllmTritonDir   = "triton_cache"
	vllmInductorDir = "inductor_cache"
	vllmArtifact    = "artifact_compile_range_"
	vllmAOTDir      = "torch_aot_compile"
	tritonLock      = "lock"
)

// isTmpDir: a dir of an interrupted or ongoing write: Triton's
// tmp.pid_<pid>_<uuid> (in a KEY dir), Inductor's TritonBundler
// tmp.<uuid> (in triton/<device>).
func isTmpDir(name string) bool { return strings.HasPrefix(name, "tmp.") }

// isTmpFile: Inductor's write_atomic temp file, .<pid>.<tid>.tmp.
func isTmpFile(name string) bool {
	mid, ok := strings.CutPrefix(name, ".")
	if !ok {
		return false
	}
	if mid, ok = strings.CutSuffix(mid, ".tmp"); !ok {
		return false
	}
	pid, tid, ok := strings.Cut(mid, ".")
	return ok && digits(pid) && digits(tid)
}

func digits(s string) bool {
	for i := range len(s) {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// dirStep says what the dir name inside a dir at p is.
func dirStep(p pos, name string) (pos, verdict, string) {
	if isTmpDir(name) {
		return p, local, ""
	}
	switch p {
	case posVLLMRoot:
		if name == vllmCompileDir || name == vllmModelInfos {
			return posPlain, take, ""
		}
		return p, skip, "not part of a vLLM cache (torch_compile_cache/, modelinfos/)"
	case posPlain:
		switch {
		case name == vllmTritonDir:
			return posTritonRoot, take, ""
		case name == vllmInductorDir:
			return posInductorRoot, take, ""
		case strings.HasPrefix(name, vllmArtifact):
			return posArtifact, take, ""
		}
		return posPlain, take, ""
	case posInductorRoot:
		switch {
		case name == "locks" || name == "cache":
			// FileLock files and the autotune timings JSON, rewritten by
			// every process: local state.
			return p, local, ""
		case name == "triton":
			return posInductorTriton, take, ""
		case name == "fxgraph" || name == "aotautograd" || len(name) == 2:
			return posPlain, take, ""
		}
		return p, skip, "not part of an Inductor cache (fxgraph/, aotautograd/, triton/, 2-letter module dirs)"
	case posArtifact:
		if name == "triton" {
			return posInductorTriton, take, ""
		}
		return posPlain, take, ""
	case posInductorTriton:
		return posTritonRoot, take, ""
	case posTritonRoot:
		if triton.IsKey(name) {
			return posTritonKey, take, ""
		}
		return p, skip, "not a Triton KEY dir (52 base32 letters or 64 hex digits)"
	}
	return p, skip, "a dir inside a KEY dir"
}

// fileStep says whether a regular file name in a dir at p is a unit's file.
func fileStep(p pos, name string) (verdict, string) {
	if isTmpFile(name) {
		return local, ""
	}
	switch p {
	case posPlain, posArtifact, posTritonKey:
		return take, ""
	case posTritonRoot:
		if name == tritonLock {
			return local, ""
		}
		return skip, "a file outside the KEY dirs of a Triton cache"
	case posInductorTriton:
		return skip, "a file outside the device dirs of Inductor's triton/"
	}
	return skip, "a file at the cache root"
}

// Place is where a cache file belongs.
type Place struct {
	Unit   string // the unit: the file's dir, relative to the kind's root
	File   string // the file's name
	Triton bool   // the unit is a Triton KEY dir
}

// Classify says where the regular file at rel (slash-separated, relative to
// a kind's root, clean) belongs. ok is false for a file the kind does not
// take; why is then "" for a local-only file (never packed or served,
// expected) and says why otherwise.
func Classify(k Kind, rel string) (pl Place, ok bool, why string) {
	els := strings.Split(rel, "/")
	p := start(k)
	for _, el := range els[:len(els)-1] {
		var v verdict
		p, v, why = dirStep(p, el)
		if v != take {
			return Place{}, false, why
		}
	}
	file := els[len(els)-1]
	if v, why := fileStep(p, file); v != take {
		return Place{}, false, why
	}
	unit := strings.Join(els[:len(els)-1], "/")
	return Place{Unit: unit, File: file, Triton: p == posTritonKey}, true, ""
}

// ClassifyDir says whether the dir at rel (slash-separated, relative to a
// kind's root, clean) may hold units: ok false with why "" for a
// local-only dir, with a reason for one the kind does not take.
func ClassifyDir(k Kind, rel string) (ok bool, why string) {
	p := start(k)
	for _, el := range strings.Split(rel, "/") {
		var v verdict
		if p, v, why = dirStep(p, el); v != take {
			return false, why
		}
	}
	return true, ""
}

// HoldsDirs reports whether the dir at rel ("" for the root;
// slash-separated, relative to a kind's root, clean) may hold a dir that
// ClassifyDir takes: not a dir the kind does not take, and not a Triton KEY
// dir (no dir inside a KEY is taken).
func HoldsDirs(k Kind, rel string) bool {
	p := start(k)
	if rel != "" {
		for _, el := range strings.Split(rel, "/") {
			var v verdict
			if p, v, _ = dirStep(p, el); v != take {
				return false
			}
		}
	}
	return p != posTritonKey
}

// unitPos walks a unit path; ok is false when the kind does not take it.
func unitPos(k Kind, unit string) (pos, bool) {
	if unit == "" {
		return start(k), false
	}
	p := start(k)
	for _, el := range strings.Split(unit, "/") {
		var v verdict
		if p, v, _ = dirStep(p, el); v != take {
			return p, false
		}
	}
	return p, p != posVLLMRoot && p != posInductorRoot && p != posTritonRoot && p != posInductorTriton
}

// IsUnit reports whether unit (slash-separated, relative to the root) is a
// dir whose files the kind takes.
func IsUnit(k Kind, unit string) bool {
	_, ok := unitPos(k, unit)
	return ok
}

// IsTritonUnit reports whether unit is a Triton KEY dir: its kernel JSONs
// say its targets, and its group files are rewritten where it is served.
func IsTritonUnit(k Kind, unit string) bool {
	p, ok := unitPos(k, unit)
	return ok && p == posTritonKey
}

// CheckPath checks a unit path or file path as it comes from an image or
// a state file: relative, clean, slash-separated, each element a plain name
// of at most 255 bytes without control characters.
func CheckPath(rel string) error {
	if rel == "" {
		return fmt.Errorf("empty path")
	}
	if strings.HasPrefix(rel, "/") {
		return fmt.Errorf("absolute path")
	}
	if path.Clean(rel) != rel {
		return fmt.Errorf("not a clean path")
	}
	for _, el := range strings.Split(rel, "/") {
		if err := CheckName(el); err != nil {
			return err
		}
	}
	return nil
}

// maxNameLen is NAME_MAX of Linux file systems.
const maxNameLen = 255

// CheckName checks one path element: no "", ".", "..", "/", NUL or other
// control characters, at most 255 bytes. What no file system holds, or what
// breaks lines in logs and listings.
func CheckName(el string) error {
	switch {
	case el == "" || el == "." || el == "..":
		return fmt.Errorf("path element %q", el)
	case strings.ContainsRune(el, '/'):
		return fmt.Errorf("slash in name")
	case len(el) > maxNameLen:
		return fmt.Errorf("name element of %d bytes (the most is %d)", len(el), maxNameLen)
	case strings.ContainsFunc(el, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		return fmt.Errorf("control character in name")
	}
	return nil
}
