package layer

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"cargohold/kind"
	"cargohold/test/cachetest"
)

// TestBuildKinds builds the layer of each kind of the shared real caches
// (with MCV's manifest), indexes it in every format and reads every unit
// back from its own span: units keyed by path, each unit's files
// contiguous, no two units' spans overlapping, bytes as on disk.
func TestBuildKinds(t *testing.T) {
	unpacked := cachetest.VLLMTestdata(t, "unpacked-vllm-cache")
	for _, c := range []struct {
		k   kind.Kind
		dir string
	}{
		{kind.VLLM, cachetest.VLLMTestdata(t, "llama-binary-cache")},
		{kind.VLLM, unpacked},
		{kind.Inductor, filepath.Join(unpacked, "torch_compile_cache/d4ec7c2a7d/rank_0_0/inductor_cache")},
	} {
		tree, err := kind.Scan(c.dir, c.k)
		if err != nil {
			t.Fatal(err)
		}
		manifest, err := kind.Manifest(tree)
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		if _, err := BuildSource(context.Background(), &b, Source{Kind: c.k, Dir: c.dir, Units: tree.Units, Manifest: manifest}); err != nil {
			t.Fatal(err)
		}
		blob := b.Bytes()
		raw := gunzip(t, blob)
		for how, data := range map[string][]byte{"estargz": blob, "tar": raw} {
			idx, err := Open(bytes.NewReader(data), int64(len(data)), "")
			if err != nil {
				t.Fatalf("%s %s: %v", c.dir, how, err)
			}
			if idx.Kind != c.k || len(idx.Dirs) != len(tree.Units) || len(idx.Skipped) != 0 {
				t.Fatalf("%s %s: kind %q, %d dirs (want %d), skipped %q", c.dir, how, idx.Kind, len(idx.Dirs), len(tree.Units), idx.Skipped)
			}
			if md := idx.ManifestDir(); md == nil || !bytes.Equal(readDir(t, bytes.NewReader(data), md)[0].Data, manifest) {
				t.Fatalf("%s %s: the index does not find the manifest", c.dir, how)
			}
			// The whole-blob paths (a layer the manifest does not vouch for
			// file by file) index the same units, manifest included.
			var whole *Index
			if how == "estargz" {
				whole, err = idx.Check(bytes.NewReader(data))
			} else {
				whole, err = ScanTar(bytes.NewReader(data), int64(len(data)))
			}
			if err != nil {
				t.Fatalf("%s %s: whole read: %v", c.dir, how, err)
			}
			if whole.Kind != c.k || len(whole.Dirs) != len(idx.Dirs) || !whole.Complete() || whole.Manifest == nil || whole.Manifest.Digest == "" {
				t.Fatalf("%s %s: whole read: kind %q, %d dirs (want %d), complete %v, manifest %+v", c.dir, how, whole.Kind, len(whole.Dirs), len(idx.Dirs), whole.Complete(), whole.Manifest)
			}
			if md := whole.ManifestDir(); !bytes.Equal(readDir(t, bytes.NewReader(data), md)[0].Data, manifest) {
				t.Fatalf("%s %s: whole read: the manifest does not verify", c.dir, how)
			}
			var spans [][2]int64
			for _, u := range tree.Units {
				d := idx.Dirs[u.Path]
				if d == nil {
					t.Fatalf("%s: unit %s missing", how, u.Path)
				}
				spans = append(spans, [2]int64{d.Offset, d.End})
				cs := readDir(t, bytes.NewReader(data), d)
				for i, f := range u.Files {
					want, err := os.ReadFile(filepath.Join(c.dir, u.Path, f.Name))
					if err != nil {
						t.Fatal(err)
					}
					if cs[i].File.Name != f.Name || !bytes.Equal(cs[i].Data, want) {
						t.Fatalf("%s: %s/%s differs from the source", how, u.Path, f.Name)
					}
				}
			}
			slices.SortFunc(spans, func(a, b [2]int64) int { return int(a[0] - b[0]) })
			for i := 1; i < len(spans); i++ {
				if spans[i][0] < spans[i-1][1] {
					t.Fatalf("%s: unit spans %v and %v overlap", how, spans[i-1], spans[i])
				}
			}
		}
		// The manifest is where MCV reads it, and Walk passes every unit
		// file once with the layer's kind.
		files := 0
		err = Walk(bytes.NewReader(blob), func(k kind.Kind, unit string, f File, r io.Reader) error {
			if k != c.k || !kind.IsUnit(k, unit) {
				t.Errorf("Walk: %s %s/%s", k, unit, f.Name)
			}
			files++
			return nil
		})
		want := 0
		for _, u := range tree.Units {
			want += len(u.Files)
		}
		if err != nil || files != want {
			t.Fatalf("Walk: %d files, want %d: %v", files, want, err)
		}
		if !tarHas(t, raw, c.k.ManifestPath(), manifest) {
			t.Errorf("%s: no %s", c.dir, c.k.ManifestPath())
		}
	}
}

// tarHas reports whether the tar holds name with content data.
func tarHas(t *testing.T, raw []byte, name string, data []byte) bool {
	tr := tar.NewReader(bytes.NewReader(raw))
	for {
		h, err := tr.Next()
		if err != nil {
			return false
		}
		if h.Name == name {
			got, _ := io.ReadAll(tr)
			return bytes.Equal(got, data)
		}
	}
}

// TestNestedEntries: what other tools write under the other kinds'
// prefixes: MCV's "./" names, local-only and stray files (skipped and
// named), a second kind in the layer (skipped and named), and the hostile
// names of TestUnsafeEntries deep inside a unit.
func TestNestedEntries(t *testing.T) {
	const v = "io.vllm.cache/"
	unit := "torch_compile_cache/edf531ca35/rank_0_0/backbone"
	key := keyN(t, 3)
	tarBytes := makeTar(t,
		tarEntry{Name: "./" + v, Type: tar.TypeDir},
		tarEntry{Name: "./io.vllm.manifest/", Type: tar.TypeDir},
		tarEntry{Name: "./io.vllm.manifest/manifest.json", Body: []byte(`{"vllm":[]}`)},
		tarEntry{Name: "./" + v + unit + "/vllm_compile_cache.py", Body: []byte("{}")},
		tarEntry{Name: "./" + v + unit + "/artifact_compile_range_1_2_subgraph_0", Body: []byte("art")},
		tarEntry{Name: v + "torch_compile_cache/edf531ca35/rank_0_0/triton_cache/" + key + "/k.json", Body: []byte("{}")},
		tarEntry{Name: v + "torch_compile_cache/edf531ca35/rank_0_0/inductor_cache/locks/a.lock"},
		tarEntry{Name: v + "xla_cache/", Type: tar.TypeDir},
		tarEntry{Name: v + "stray.txt", Body: []byte("x")},
		tarEntry{Name: Prefix + key + "/other-kind.json", Body: []byte("{}")},
	)
	idx, err := Open(bytes.NewReader(tarBytes), int64(len(tarBytes)), "")
	if err != nil {
		t.Fatal(err)
	}
	var units []string
	for u := range idx.Dirs {
		units = append(units, u)
	}
	slices.Sort(units)
	wantUnits := []string{unit, "torch_compile_cache/edf531ca35/rank_0_0/triton_cache/" + key}
	wantSkipped := []string{v + "torch_compile_cache/edf531ca35/rank_0_0/inductor_cache/locks/a.lock", v + "xla_cache/", v + "stray.txt", Prefix + key + "/other-kind.json"}
	if idx.Kind != kind.VLLM || !slices.Equal(units, wantUnits) || !slices.Equal(idx.Skipped, wantSkipped) {
		t.Fatalf("kind %q units %q skipped %q\nwant units %q skipped %q", idx.Kind, units, idx.Skipped, wantUnits, wantSkipped)
	}
	var walked []string
	if err := WalkSkipped(bytes.NewReader(tarBytes), discardFile, func(name string) { walked = append(walked, name) }); err != nil || !slices.Equal(walked, wantSkipped[:3]) { // the other kind goes to fn
		t.Fatalf("WalkSkipped: skipped %q, %v; want %q", walked, err, wantSkipped[:3])
	}
	if d := idx.Dirs[unit]; len(d.Files) != 2 || d.Files[0].Name != "artifact_compile_range_1_2_subgraph_0" {
		t.Fatalf("unit %s: %+v", unit, d.Files)
	}

	for _, bad := range []tarEntry{
		{Name: v + unit + "/../../../../../etc/passwd", Body: []byte("x")},
		{Name: v + unit + "/link", Type: tar.TypeSymlink, Link: "/etc/passwd"},
		{Name: v + unit + "//x", Body: []byte("x")},
		{Name: v + unit + "/./x", Body: []byte("x")},
		{Name: v + unit + "/" + strings.Repeat("n", 256), Body: []byte("x")},
		{Name: v + unit + "/a\nb", Body: []byte("x")},
		{Name: "io.inductor.cache/fxgraph/ab/fabc/dev", Type: tar.TypeChar},
		{Name: "/io.inductor.cache/ab/c.py", Body: []byte("x")},
	} {
		tb := makeTar(t, bad)
		var ue *UnsafeEntryError
		if _, err := Open(bytes.NewReader(tb), int64(len(tb)), ""); !errors.As(err, &ue) {
			t.Errorf("Open %q: %v, want *UnsafeEntryError", bad.Name, err)
		}
		if err := Walk(bytes.NewReader(tb), discardFile); !errors.As(err, &ue) {
			t.Errorf("Walk %q: %v, want *UnsafeEntryError", bad.Name, err)
		}
	}
}

// TestBuildRejectsOtherKindsUnits: a unit the kind does not take is refused,
// as a path that escapes is.
func TestBuildRejectsOtherKindsUnits(t *testing.T) {
	for _, u := range []string{"", "xla_cache", "../x", "torch_compile_cache/../x", "/abs"} {
		s := Source{Kind: kind.VLLM, Dir: t.TempDir(), Units: []kind.Unit{{Path: u, Files: nil}}}
		if _, err := BuildSource(context.Background(), io.Discard, s); err == nil {
			t.Errorf("unit %q: want an error", u)
		}
	}
}
