package kind

import (
	"encoding/json"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"cargohold/triton"
)

// The manifest MCV writes beside the cache in its images
// (io.<kind>.manifest/manifest.json; MCV pkg/cache types.go): for Triton
// {"triton":[kernel...]}, for vLLM {"vllm":[hash dir...]}. cargohold writes
// the same, and {"inductor":[unit...]} for Inductor by analogy. MCV's
// dummy_key (a hash computed by running Python with Triton) is left out:
// cargohold does not run Python at create time.

// tritonEntry is MCV's TritonCacheMetadata.
type tritonEntry struct {
	Hash       string `json:"hash"`
	PTXVersion int    `json:"ptx_version,omitempty"`
	NumStages  int    `json:"num_stages,omitempty"`
	NumWarps   int    `json:"num_warps,omitempty"`
	Debug      bool   `json:"debug,omitempty"`
	Backend    string `json:"backend"`
	Arch       string `json:"arch"`
	WarpSize   int    `json:"warp_size"`
}

func tritonEntries(ks []triton.Kernel) []tritonEntry {
	out := []tritonEntry{}
	for _, k := range ks {
		e := tritonEntry{Hash: k.Hash, NumStages: k.NumStages, NumWarps: k.NumWarps, Debug: k.Debug,
			Backend: k.Target.Backend, Arch: k.Target.Arch, WarpSize: k.Target.WarpSize}
		if k.PTXVersion != nil {
			e.PTXVersion = *k.PTXVersion
		}
		out = append(out, e)
	}
	return out
}

// vllmEntry is MCV's VLLMCacheMetadata.
type vllmEntry struct {
	Hash        string        `json:"vllmHash"`
	CacheFormat string        `json:"cacheFormat"`
	Triton      []tritonEntry `json:"triton,omitempty"`
	Binary      []binaryEntry `json:"binary,omitempty"`
}

// binaryEntry is MCV's BinaryCacheMetadata.
type binaryEntry struct {
	Rank            string         `json:"rank"`
	Prefix          string         `json:"prefix"`
	ArtifactCount   int            `json:"artifact_count"`
	ArtifactNames   []string       `json:"artifact_names,omitempty"`
	CodeHash        string         `json:"code_hash,omitempty"`
	ConfigHash      string         `json:"config_hash,omitempty"`
	CompilerHash    string         `json:"compiler_hash,omitempty"`
	CacheSaveFormat string         `json:"cache_save_format,omitempty"`
	TargetDevice    string         `json:"target_device,omitempty"`
	Env             map[string]any `json:"env,omitempty"`
}

// inductorEntry is one unit of an Inductor image's manifest.
type inductorEntry struct {
	Unit   string        `json:"unit"`
	Files  int           `json:"files"`
	Bytes  int64         `json:"bytes"`
	Triton []tritonEntry `json:"triton,omitempty"`
}

// vllmHashDir is what a vLLM tree holds under one hash dir.
type vllmHashDir struct {
	hash    string
	aot     bool // under torch_compile_cache/torch_aot_compile/
	binary  []binaryEntry
	kernels []triton.Kernel
}

// vllmInfo describes a vLLM tree as MCV does (pkg/cache/vllm.go).
type vllmInfo struct {
	list       []*vllmHashDir // regular hash dirs sorted, then AOT ones sorted
	entryCount int
	compiled   bool // binary or AOT artifacts: code no kernel JSON describes
}

var rankDir = regexp.MustCompile(`^rank_\d+_\d+$`)

func describeVLLM(t *Tree) *vllmInfo {
	v := &vllmInfo{}
	by := map[string]*vllmHashDir{}
	get := func(hash string, aot bool) *vllmHashDir {
		id := hash
		if aot {
			id = vllmAOTDir + "/" + hash
		}
		if h := by[id]; h != nil {
			return h
		}
		h := &vllmHashDir{hash: hash, aot: aot}
		by[id] = h
		v.list = append(v.list, h)
		return h
	}
	for _, u := range t.Units {
		els := strings.Split(u.Path, "/")
		if len(els) < 2 || els[0] != vllmCompileDir {
			continue
		}
		if els[1] == vllmAOTDir {
			if len(els) >= 3 {
				h := get(els[2], true)
				// MCV's "mega-AOT": rank_<r>_<dp>/model, reported as binary.
				if len(els) == 4 && rankDir.MatchString(els[3]) && slices.ContainsFunc(u.Files, func(f triton.File) bool { return f.Name == "model" }) {
					h.binary = append(h.binary, binaryEntry{Rank: els[3], ArtifactCount: 1, ArtifactNames: []string{"model"}, CacheSaveFormat: "mega-aot"})
					v.compiled = true
				}
			}
			continue
		}
		h := get(els[1], false)
		h.kernels = append(h.kernels, u.Kernels...)
		if len(els) == 4 && rankDir.MatchString(els[2]) {
			if b, ok := binaryOf(t, u); ok {
				h.binary = append(h.binary, b)
				v.compiled = true
			}
		}
	}
	slices.SortStableFunc(v.list, func(a, b *vllmHashDir) int {
		if a.aot != b.aot {
			if a.aot {
				return 1
			}
			return -1
		}
		return strings.Compare(a.hash, b.hash)
	})
	v.entryCount = len(v.list)
	return v
}

// binaryOf reads a rank/prefix unit of vLLM's binary format: it holds
// cache_key_factors.json and artifact_compile_range_* files (or dirs, the
// "unpacked" save format, which are units of their own below it).
func binaryOf(t *Tree, u Unit) (binaryEntry, bool) {
	els := strings.Split(u.Path, "/")
	b := binaryEntry{Rank: els[2], Prefix: els[3], CacheSaveFormat: "binary"}
	hasFactors := false
	for _, f := range u.Files {
		switch {
		case f.Name == "cache_key_factors.json":
			hasFactors = true
		case strings.HasPrefix(f.Name, vllmArtifact):
			b.ArtifactNames = append(b.ArtifactNames, f.Name)
		}
	}
	if len(b.ArtifactNames) == 0 {
		seen := map[string]bool{}
		for _, o := range t.Units {
			rest, ok := strings.CutPrefix(o.Path, u.Path+"/")
			if name, _, _ := strings.Cut(rest, "/"); ok && strings.HasPrefix(name, vllmArtifact) && !seen[name] {
				seen[name] = true
				b.ArtifactNames = append(b.ArtifactNames, name)
				b.CacheSaveFormat = "unpacked"
			}
		}
	}
	if !hasFactors || len(b.ArtifactNames) == 0 {
		return b, false
	}
	slices.Sort(b.ArtifactNames)
	b.ArtifactCount = len(b.ArtifactNames)
	data, err := os.ReadFile(filepath.Join(t.Root, filepath.FromSlash(u.Path), "cache_key_factors.json"))
	if err == nil {
		var f struct {
			CodeHash     string         `json:"code_hash"`
			CompilerHash string         `json:"compiler_hash"`
			ConfigHash   string         `json:"config_hash"`
			Env          map[string]any `json:"env"`
		}
		if json.Unmarshal(data, &f) == nil {
			b.CodeHash, b.CompilerHash, b.ConfigHash, b.Env = f.CodeHash, f.CompilerHash, f.ConfigHash, f.Env
			if d, ok := f.Env["VLLM_TARGET_DEVICE"].(string); ok {
				b.TargetDevice = d
			}
		}
	}
	return b, true
}

// format is the cache.vllm.image/format label: the formats present, in
// MCV's order, or "unpacked" for none.
func (v *vllmInfo) format() string {
	var bin, tri bool
	for _, h := range v.list {
		bin = bin || len(h.binary) > 0
		tri = tri || (len(h.binary) == 0 && len(h.kernels) > 0)
	}
	var fs []string
	if bin {
		fs = append(fs, "binary")
	}
	if tri {
		fs = append(fs, "triton")
	}
	if len(fs) == 0 {
		return "unpacked"
	}
	return strings.Join(fs, ",")
}

// hashes are the hash dirs MCV would list (those with a format it knows).
func (v *vllmInfo) hashes() []string {
	var out []string
	for _, h := range v.list {
		if (len(h.binary) > 0 || len(h.kernels) > 0) && !slices.Contains(out, h.hash) {
			out = append(out, h.hash)
		}
	}
	return out
}

// Manifest is the manifest file of t's image (MCV's format, see above),
// reproducible: the same tree gives the same bytes.
func Manifest(t *Tree) ([]byte, error) {
	var m any
	switch t.Kind {
	case Triton:
		m = map[string][]tritonEntry{"triton": tritonEntries(t.Kernels())}
	case VLLM:
		v := describeVLLM(t)
		es := []vllmEntry{}
		for _, h := range v.list {
			e := vllmEntry{Hash: h.hash}
			switch {
			case len(h.binary) > 0:
				e.CacheFormat, e.Binary = "binary", h.binary
			case len(h.kernels) > 0:
				e.CacheFormat, e.Triton = "triton", tritonEntries(h.kernels)
			default:
				continue // MCV lists only hash dirs of a format it knows
			}
			es = append(es, e)
		}
		m = map[string][]vllmEntry{"vllm": es}
	default:
		es := []inductorEntry{}
		for _, u := range t.Units {
			e := inductorEntry{Unit: u.Path, Files: len(u.Files), Bytes: u.Size()}
			if len(u.Kernels) > 0 {
				e.Triton = tritonEntries(u.Kernels)
			}
			es = append(es, e)
		}
		m = map[string][]inductorEntry{string(t.Kind): es}
	}
	return json.MarshalIndent(m, "", "  ")
}

// VLLMBinary is one binary-format entry of a vLLM image's manifest: where
// it is (hash dir, rank, prefix) and the env factors of its hash.
type VLLMBinary struct {
	Hash, Rank, Prefix string
	Env                map[string]any
}

// VLLMBinaries reads the binary-format entries of a vLLM manifest
// (Manifest's format); nil when it holds none or does not parse.
func VLLMBinaries(data []byte) []VLLMBinary {
	var m struct {
		VLLM []vllmEntry `json:"vllm"`
	}
	if json.Unmarshal(data, &m) != nil {
		return nil
	}
	var out []VLLMBinary
	for _, e := range m.VLLM {
		for _, b := range e.Binary {
			out = append(out, VLLMBinary{Hash: e.Hash, Rank: b.Rank, Prefix: b.Prefix, Env: b.Env})
		}
	}
	return out
}

// ParentDirs lists the ancestors of a unit path, outermost first:
// "a/b/c" gives "a", "a/b".
func ParentDirs(unit string) []string {
	var out []string
	for d := path.Dir(unit); d != "." && d != "/"; d = path.Dir(d) {
		out = append(out, d)
	}
	slices.Reverse(out)
	return out
}
