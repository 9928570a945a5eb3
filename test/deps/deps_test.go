// Package deps holds the test that keeps the data path's arrows pointing one
// way: each production package may import only the project packages listed
// for it below.
package deps

import (
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
)

const module = "cargohold"

// allowed lists, for each production package, the project packages it may
// import. The data path runs resolver (where image bytes live) → fetch
// (which bytes: KEY dirs, verified into the store) → catalog (which image
// holds a KEY) → cmd; fs knows none of them (cmd adapts the catalog to
// fs.Lower); gpu, triton, store and layer sit below. A new package or import
// is added here on purpose, or the test fails.
var allowed = map[string][]string{
	"gpu":                {},
	"gpu/internal/probe": {"gpu"},
	"triton":             {"gpu"},
	"triton/gen":         {"gpu", "triton"},
	"kind":               {"gpu", "triton"},
	"store":              {},
	"layer":              {"kind", "triton"},
	"resolver":           {"internal/userdir"},
	"fetch":              {"internal/userdir", "kind", "layer", "resolver", "store", "triton"},
	"catalog":            {"fetch", "gpu", "kind", "layer", "resolver", "store", "triton"},
	"image":              {"gpu", "kind", "layer", "resolver", "triton"},
	"fs":                 {"kind", "triton"},
	"internal/cli":       {},
	"internal/userdir":   {},
	"cmd/cargohold":      {"fetch", "gpu", "image", "internal/cli", "internal/userdir", "kind", "layer", "resolver", "store", "triton"},
	"cmd/cargohold-fs":   {"catalog", "fetch", "fs", "gpu", "internal/cli", "internal/userdir", "kind", "resolver", "store"},
	"cmd/gencache":       {"gpu", "triton", "triton/gen"},
}

func TestImportDirections(t *testing.T) {
	_, self, _, _ := runtime.Caller(0)
	got, err := imports(filepath.Join(filepath.Dir(self), "..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range violations(got) {
		t.Error(v)
	}
	for pkg := range allowed {
		if _, ok := got[pkg]; !ok {
			t.Errorf("package %s is in the table but not in the tree", pkg)
		}
	}
}

// TestImportDirectionsCatchesABreak: the check fails on a tree that breaks
// the rules.
func TestImportDirectionsCatchesABreak(t *testing.T) {
	root := t.TempDir()
	write := func(rel, src string) {
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("fs/a.go", "package fs\n\nimport _ \"cargohold/catalog\"\n")
	write("fs/a_test.go", "package fs\n\nimport _ \"cargohold/resolver\"\n") // tests may
	write("resolver/b.go", "package resolver\n\nimport _ \"cargohold/test/proxy\"\n")
	write("newpkg/c.go", "package newpkg\n")
	write("test/e2e/d.go", "package e2e\n\nimport _ \"cargohold/fs\"\n") // test/ is not production
	got, err := imports(root)
	if err != nil {
		t.Fatal(err)
	}
	v := violations(got)
	if len(v) != 3 {
		t.Fatalf("%d violations, want 3 (fs→catalog, resolver→test/proxy, newpkg unlisted):\n%s", len(v), strings.Join(v, "\n"))
	}
}

// imports maps each production package under root (test/ and _test.go
// files excluded) to the project packages it imports.
func imports(root string) (map[string][]string, error) {
	got := map[string][]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			if strings.HasPrefix(d.Name(), ".") && rel != "." || rel == "test" || d.Name() == "testdata" {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(token.NewFileSet(), p, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		pkg := filepath.ToSlash(filepath.Dir(rel))
		if _, ok := got[pkg]; !ok {
			got[pkg] = nil
		}
		for _, im := range f.Imports {
			path, _ := strconv.Unquote(im.Path.Value)
			if dep, ok := strings.CutPrefix(path, module+"/"); ok && !slices.Contains(got[pkg], dep) {
				got[pkg] = append(got[pkg], dep)
			}
		}
		return nil
	})
	return got, err
}

// violations lists imports the table does not allow, and packages it does
// not list.
func violations(got map[string][]string) []string {
	var out []string
	for pkg, deps := range got {
		ok, listed := allowed[pkg]
		if !listed {
			out = append(out, "package "+pkg+" is not in the table: add it with the project packages it may import")
			continue
		}
		for _, dep := range deps {
			if strings.HasPrefix(dep, "test/") {
				out = append(out, "production package "+pkg+" imports test package "+dep)
			} else if !slices.Contains(ok, dep) {
				out = append(out, pkg+" imports "+dep+": not allowed (the arrows run one way; see the table)")
			}
		}
	}
	slices.Sort(out)
	return out
}
