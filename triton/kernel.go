// Package triton models Triton's on-disk kernel cache, the one model shared by
// create, extract and the mount.
//
// A cache dir holds one directory per entry, named KEY. A kernel entry holds
// the kernel's metadata JSON (with a "hash" field), its IR and binary files
// and a group file __grp__<name>.json listing them by absolute path. A
// launcher entry holds a compiled .so and no kernel JSON. KEY is the base32
// (no padding) of the bytes of the hex SHA-256 in "hash" (Triton 3.2–3.7,
// triton/runtime/cache.py: _base32(key)); Triton 3.1 and older named the dir
// by the hex SHA-256 itself (64 lowercase hex digits), launchers included.
package triton

import (
	"bytes"
	"encoding/base32"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"

	"cargohold/gpu"
)

// Kernel is the part of a kernel's metadata JSON that cargohold uses. Unknown
// fields are ignored.
type Kernel struct {
	Hash          string     `json:"hash"`
	Name          string     `json:"name,omitempty"`
	Target        gpu.Target `json:"target"`
	PTXVersion    *int       `json:"ptx_version,omitempty"`
	NumWarps      int        `json:"num_warps,omitempty"`
	NumStages     int        `json:"num_stages,omitempty"`
	Debug         bool       `json:"debug"`
	TritonVersion string     `json:"triton_version,omitempty"`
}

// IsKey reports whether name has the shape of a cache KEY: 52 base32
// letters, the encoding of 32 bytes (Triton 3.2 and later), or 64 lowercase
// hex digits (Triton 3.1 and older, whose launcher dirs such caches still
// hold).
func IsKey(name string) bool {
	// ^([A-Z2-7]{52}|[0-9a-f]{64})$ by hand: every entry of every layer
	// passes here.
	switch len(name) {
	case 52:
		for i := range len(name) {
			if c := name[i]; !('A' <= c && c <= 'Z' || '2' <= c && c <= '7') {
				return false
			}
		}
		return true
	case 64:
		return isHexKey(name)
	}
	return false
}

// isHexKey: 64 lowercase hex digits, a KEY of Triton 3.1 and older.
func isHexKey(name string) bool {
	if len(name) != 64 {
		return false
	}
	for i := range len(name) {
		if c := name[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// KeyOf gives the cache dir name for a kernel's hex hash.
func KeyOf(hash string) (string, error) {
	b, err := hex.DecodeString(hash)
	if err != nil || len(b) != 32 {
		return "", fmt.Errorf("triton: hash %q is not a hex SHA-256", hash)
	}
	return base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b), nil
}

// HashOf is the inverse of KeyOf; a hex KEY (Triton 3.1 and older) is its
// own hash.
func HashOf(key string) (string, error) {
	if !IsKey(key) {
		return "", fmt.Errorf("triton: %q is not a cache KEY", key)
	}
	if isHexKey(key) {
		return key, nil
	}
	b, err := base32.StdEncoding.WithPadding(base32.NoPadding).DecodeString(key)
	if err != nil {
		return "", fmt.Errorf("triton: KEY %q: %w", key, err)
	}
	return hex.EncodeToString(b), nil
}

// rawKernel is the JSON as Triton writes it. target.arch is an int for CUDA
// and a string for HIP; Triton before 3.0 had no "target" object and wrote
// arch, warp_size and backend_name at the top level.
type rawKernel struct {
	Hash   *string `json:"hash"`
	Name   string  `json:"name"`
	Target *struct {
		Backend  string          `json:"backend"`
		Arch     json.RawMessage `json:"arch"`
		WarpSize int             `json:"warp_size"`
	} `json:"target"`
	Arch          json.RawMessage `json:"arch"`
	WarpSize      int             `json:"warp_size"`
	BackendName   string          `json:"backend_name"`
	PTXVersion    *int            `json:"ptx_version"`
	NumWarps      int             `json:"num_warps"`
	NumStages     int             `json:"num_stages"`
	Debug         bool            `json:"debug"`
	TritonVersion string          `json:"triton_version"`
}

// ParseKernel reads a kernel metadata JSON. ok is false, with no error, for
// JSON that is not kernel metadata (no "hash" field, or not an object): group
// files, autotuner results and the like live in the cache too.
func ParseKernel(data []byte) (k Kernel, ok bool, err error) {
	data = bytes.TrimSpace(data)
	if len(data) == 0 || data[0] != '{' {
		return Kernel{}, false, nil
	}
	var r rawKernel
	if err := json.Unmarshal(data, &r); err != nil {
		// Only a file that claims to be a kernel is an error.
		if bytes.Contains(data, []byte(`"hash"`)) {
			return Kernel{}, false, fmt.Errorf("triton: kernel JSON: %w", err)
		}
		return Kernel{}, false, nil
	}
	if r.Hash == nil {
		return Kernel{}, false, nil
	}
	k = Kernel{Hash: *r.Hash, Name: r.Name, PTXVersion: r.PTXVersion, NumWarps: r.NumWarps,
		NumStages: r.NumStages, Debug: r.Debug, TritonVersion: r.TritonVersion}
	if _, err := KeyOf(k.Hash); err != nil {
		return Kernel{}, false, err
	}
	arch, warp, backend := r.Arch, r.WarpSize, r.BackendName
	if r.Target != nil {
		arch, warp, backend = r.Target.Arch, r.Target.WarpSize, r.Target.Backend
	}
	a, err := archString(arch)
	if err != nil {
		return Kernel{}, false, fmt.Errorf("triton: kernel %s: %w", k.Hash, err)
	}
	if backend == "" {
		return Kernel{}, false, fmt.Errorf("triton: kernel %s: no backend in metadata", k.Hash)
	}
	if warp == 0 {
		warp = gpu.DefaultWarpSize(backend, a)
	}
	k.Target = gpu.Target{Backend: backend, Arch: a, WarpSize: warp}
	return k, true, nil
}

func archString(raw json.RawMessage) (string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return "", fmt.Errorf("no arch in metadata")
	}
	var n int64
	if err := json.Unmarshal(raw, &n); err == nil {
		return strconv.FormatInt(n, 10), nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil || s == "" {
		return "", fmt.Errorf("arch %s is neither a number nor a string", raw)
	}
	return s, nil
}

// Key is the cache dir name this kernel must live in (Triton 3.2 and
// later).
func (k Kernel) Key() string {
	key, _ := KeyOf(k.Hash) // validated by ParseKernel
	return key
}

// In reports whether the kernel belongs in the KEY dir key: its base32 KEY,
// or its hex hash as Triton 3.1 and older named the dir.
func (k Kernel) In(key string) bool {
	return key == k.Key() || key == k.Hash
}
