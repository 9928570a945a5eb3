package catalog

import (
	"slices"
	"testing"

	"cargohold/kind"
)

// TestDirRange: Dir finds a dir's units as one range of the sorted units,
// also where a sibling's name sorts inside that range ("b-x" between "b"
// and "b/c": '-' < '/').
func TestDirRange(t *testing.T) {
	cat := &Catalog{}
	cat.cur.Store(&snapshot{keys: map[string][]loc{"a/b": nil, "a/b-x/c": nil, "a/b/c": nil, "a/bc": nil, "ab": nil}})
	for rel, want := range map[string]DirInfo{
		"":      {Exists: true, Children: []string{"a", "ab"}},
		"a":     {Exists: true, Children: []string{"b", "b-x", "bc"}},
		"a/b":   {Exists: true, Unit: true, Children: []string{"c"}},
		"a/b-x": {Exists: true, Children: []string{"c"}},
		"a/bc":  {Exists: true, Unit: true},
		"a/b/c": {Exists: true, Unit: true},
		"a/z":   {},
		"zz":    {},
	} {
		if got := cat.Dir(rel); got.Exists != want.Exists || got.Unit != want.Unit || !slices.Equal(got.Children, want.Children) {
			t.Errorf("Dir(%q) = %+v, want %+v", rel, got, want)
		}
	}
}

// TestDirTriton: a Triton catalog's units are KEYs at the root, answered by
// the map alone: no sorted copy of the units is built (its memory would
// grow with every KEY of every image).
func TestDirTriton(t *testing.T) {
	cat := &Catalog{cfg: Config{Kind: kind.Triton}}
	s := &snapshot{keys: map[string][]loc{"KB": nil, "KA": nil}}
	cat.cur.Store(s)
	for rel, want := range map[string]DirInfo{
		"":     {Exists: true, Children: []string{"KA", "KB"}},
		"KA":   {Exists: true, Unit: true},
		"KC":   {},
		"KA/x": {},
	} {
		if got := cat.Dir(rel); got.Exists != want.Exists || got.Unit != want.Unit || !slices.Equal(got.Children, want.Children) {
			t.Errorf("Dir(%q) = %+v, want %+v", rel, got, want)
		}
	}
	if s.sorted != nil {
		t.Errorf("a Triton catalog built the sorted units (%d)", len(s.sorted))
	}
}
