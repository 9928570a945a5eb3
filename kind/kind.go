// Package kind is the model of the compile caches cargohold ships: Triton's
// (TRITON_CACHE_DIR), vLLM's ($VLLM_CACHE_ROOT, which holds
// torch_compile_cache/) and PyTorch Inductor's (TORCHINDUCTOR_CACHE_DIR).
// Create, extract, the catalog and the mount share it.
//
// Model: a cache is a tree of units under the kind's root. A unit is one
// directory's direct regular files; its path, relative to the root and
// slash-separated, is the unit of packing, of extracting and of lazy
// fetching alike (a Triton KEY; a vLLM rank or prefix dir; an Inductor
// fxgraph/<xx>/<key>, aotautograd/<key> or <xx> module dir; a nested
// triton_cache/<KEY> or triton/<device>/<KEY>). A file belongs to the unit
// of its parent dir. Dirs without files of their own (torch_compile_cache/,
// fxgraph/<xx>/) are implied by the units below them. A unit whose last
// element is a KEY inside a Triton cache (the Triton root, a triton_cache
// dir, an Inductor triton/<device> dir) is a Triton unit: its kernel JSONs
// give its targets and its group files name their children by absolute
// path (rewritten where the unit is served).
//
// Local-only paths (tmp dirs and files of interrupted writes, Inductor's
// locks/ and cache/ timings, Triton's lock file) are never packed or
// served, silently; anything else a kind does not take (an unknown dir, a
// file at the root, a symlink) is skipped and named (Skipped).
//
// Images carry each kind under MCV's layer prefix (io.triton.cache/,
// io.vllm.cache/; io.inductor.cache/ by analogy) with its manifest
// (io.<kind>.manifest/manifest.json) and labels (cache.<kind>.image/*).
package kind

import (
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"regexp"
)

// Kind is a cache kind.
type Kind string

const (
	Triton   Kind = "triton"   // TRITON_CACHE_DIR: KEY dirs
	VLLM     Kind = "vllm"     // $VLLM_CACHE_ROOT: torch_compile_cache/<hash>/rank_<r>_<dp>/...
	Inductor Kind = "inductor" // TORCHINDUCTOR_CACHE_DIR: fxgraph/, aotautograd/, <xx>/, triton/<device>/
)

// All lists the kinds in the order detection and label parsing try them.
var All = []Kind{Triton, VLLM, Inductor}

// Parse reads a kind's name.
func Parse(name string) (Kind, error) {
	for _, k := range All {
		if name == string(k) {
			return k, nil
		}
	}
	return "", fmt.Errorf("kind: unknown cache kind %q (want triton, vllm or inductor)", name)
}

// Valid reports whether k is one of All.
func (k Kind) Valid() bool {
	_, err := Parse(string(k))
	return err == nil
}

// Prefix is the dir holding the cache in an image layer, with its slash:
// "io.triton.cache/" (MCV's prefixes).
func (k Kind) Prefix() string { return "io." + string(k) + ".cache/" }

// ManifestPath is the manifest file MCV expects in the layer:
// "io.triton.manifest/manifest.json".
func (k Kind) ManifestPath() string { return "io." + string(k) + ".manifest/manifest.json" }

// LabelPrefix starts the kind's image config labels: "cache.triton.image/".
func (k Kind) LabelPrefix() string { return "cache." + string(k) + ".image/" }

// Env is the environment variable that points the framework at the kind's
// root.
func (k Kind) Env() string {
	switch k {
	case VLLM:
		return "VLLM_CACHE_ROOT"
	case Inductor:
		return "TORCHINDUCTOR_CACHE_DIR"
	}
	return "TRITON_CACHE_DIR"
}

// DefaultRoot is the root the framework uses when nothing else is said:
// $TRITON_CACHE_DIR or ~/.triton/cache; $VLLM_CACHE_ROOT or
// ${XDG_CACHE_HOME:-~/.cache}/vllm (vllm/envs.py); $TORCHINDUCTOR_CACHE_DIR
// or <tmp>/torchinductor_<user> (torch/_inductor/runtime/cache_dir_utils.py,
// the user name sanitised as there).
func (k Kind) DefaultRoot() (string, error) {
	if d := os.Getenv(k.Env()); d != "" {
		return d, nil
	}
	if k == Inductor {
		u, err := user.Current()
		if err != nil {
			return "", fmt.Errorf("kind: no $%s and no user name: %w", k.Env(), err)
		}
		name := regexp.MustCompile(`[\\/:*?"<>|]`).ReplaceAllString(u.Username, "_")
		return filepath.Join(os.TempDir(), "torchinductor_"+name), nil
	}
	if k == VLLM {
		if x := os.Getenv("XDG_CACHE_HOME"); x != "" {
			return filepath.Join(x, "vllm"), nil
		}
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("kind: no $%s and no home dir: %w", k.Env(), err)
	}
	if k == VLLM {
		return filepath.Join(home, ".cache", "vllm"), nil
	}
	return filepath.Join(home, ".triton", "cache"), nil
}
