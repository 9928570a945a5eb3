package replay

import (
	"os"
	"path/filepath"
	"testing"

	"cargohold/triton"
)

func TestMain(m *testing.M) {
	ChildMain() // Run re-executes this test binary for Procs > 1
	os.Exit(m.Run())
}

const (
	cudaKey = "5W7KJQDTJCL4UGPMKKCS7TEEPZKSWOY4774SZQ6674FWSXG5MNXQ"
	rocmKey = "MCELTMXFCSPAMZYLZ3C3WPPYYVTVR4QOYNE52X3X6FIH7Z6N6X5A"
)

// testdata is a shared real Triton cache (read-only).
func testdata(t *testing.T, name string) string {
	t.Helper()
	d, err := filepath.Abs(filepath.Join("..", "..", "..", "shared", "testdata", "triton-cache", name))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(d); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("shared test data missing: %v", err)
		}
		t.Skipf("shared test data missing: %v", err)
	}
	return d
}

// extracted copies the KEY dirs of source caches into a fresh cache dir
// with group files rewritten to it: what extracting an image gives.
func extracted(t *testing.T, srcs ...string) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "cache")
	for _, src := range srcs {
		keys, err := keysIn(KindTriton, src)
		if err != nil {
			t.Fatal(err)
		}
		for _, key := range keys {
			if err := os.MkdirAll(filepath.Join(root, key), 0o755); err != nil {
				t.Fatal(err)
			}
			des, err := os.ReadDir(filepath.Join(src, key))
			if err != nil {
				t.Fatal(err)
			}
			for _, de := range des {
				data, err := os.ReadFile(filepath.Join(src, key, de.Name()))
				if err != nil {
					t.Fatal(err)
				}
				if triton.IsGroupFile(de.Name()) {
					if data, err = triton.RewriteGroup(data, root); err != nil {
						t.Fatal(err)
					}
				}
				info, _ := de.Info()
				if err := os.WriteFile(filepath.Join(root, key, de.Name()), data, info.Mode().Perm()|0o200); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	return root
}
