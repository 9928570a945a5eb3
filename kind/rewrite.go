package kind

import (
	"bytes"
	"fmt"
	"path"
	"strings"

	"cargohold/triton"
)

// Rewrite says how a file is changed where it is served or installed.
// Images store every file as it was on disk, absolute paths of the build
// host included: MCV extracts them unmodified, which hits where the cache
// is extracted at the dir it was built in.
type Rewrite uint8

const (
	RewriteNone  Rewrite = iota
	RewriteGroup         // a Triton group file: child paths → <served root>/<unit>/<file>
	RewriteVLLM          // vllm_compile_cache.py: the old $VLLM_CACHE_ROOT → the served root
)

// MaxRewrite bounds the files rewritten in memory (Triton's group files and
// vLLM's cache files are a few KiB).
const MaxRewrite = 16 << 20

// RewriteOf says which rewrite file name of unit takes: Triton group files
// of Triton units (triton.RewriteGroup: Triton keeps only the children
// whose absolute paths exist), and vLLM's vllm_compile_cache.py (the
// "binary" format loads its artifacts from the absolute paths in it;
// research: vllm compiler_interface.py InductorStandaloneAdaptor.load).
func RewriteOf(k Kind, unit, name string) Rewrite {
	switch {
	case triton.IsGroupFile(name) && IsTritonUnit(k, unit):
		return RewriteGroup
	case k == VLLM && name == vllmCacheFile:
		if p, ok := unitPos(k, unit); ok && p == posPlain {
			return RewriteVLLM
		}
	}
	return RewriteNone
}

// Apply rewrites data, file name of unit, for a cache whose root the
// framework sees at root (absolute: the extract dir, or the mount's path
// prefix).
func (r Rewrite) Apply(data []byte, root, unit string) ([]byte, error) {
	switch r {
	case RewriteGroup:
		// Triton's root for the KEY dir is the dir holding it.
		return triton.RewriteGroup(data, path.Join(root, path.Dir(unit)))
	case RewriteVLLM:
		return RewriteVLLMCache(data, root)
	}
	return data, nil
}

// RewriteVLLMCache rewrites the paths of a vllm_compile_cache.py (a
// pprint'ed dict of Python literals) to root: in every quoted string that
// is an absolute path holding /torch_compile_cache/, the part before is
// the $VLLM_CACHE_ROOT it was written under, and root replaces it. The rest
// of the file is left as it is: ast.literal_eval ignores pprint's
// alignment, and the strings hold no quotes or escapes (vLLM's paths are
// plain; a string with a backslash is left alone).
func RewriteVLLMCache(data []byte, root string) ([]byte, error) {
	if strings.ContainsAny(root, "'\"\\\n\r") || !path.IsAbs(root) {
		return nil, fmt.Errorf("kind: rewrite %s: root %q must be absolute and hold no quote, backslash or newline", vllmCacheFile, root)
	}
	root = strings.TrimRight(root, "/")
	marker := []byte("/" + vllmCompileDir + "/")
	var out bytes.Buffer
	out.Grow(len(data))
	for i := 0; i < len(data); {
		c := data[i]
		if c != '\'' && c != '"' {
			out.WriteByte(c)
			i++
			continue
		}
		// A string literal: up to the matching quote, past escapes.
		j := i + 1
		for j < len(data) && data[j] != c && data[j] != '\n' {
			if data[j] == '\\' {
				j++
			}
			j++
		}
		if j >= len(data) || data[j] != c {
			return nil, fmt.Errorf("kind: rewrite %s: unterminated string at byte %d", vllmCacheFile, i)
		}
		s := data[i+1 : j]
		if k := bytes.Index(s, marker); len(s) > 0 && s[0] == '/' && k >= 0 && bytes.IndexByte(s, '\\') < 0 {
			out.WriteByte(c)
			out.WriteString(root)
			out.Write(s[k:])
			out.WriteByte(c)
		} else {
			out.Write(data[i : j+1])
		}
		i = j + 1
	}
	return out.Bytes(), nil
}
