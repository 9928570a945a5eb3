package triton

import (
	"errors"
	"testing"
)

func TestLabelsRoundTrip(t *testing.T) {
	var all []Entry
	for _, name := range []string{"vector-add-cache", "vector-add-cache-rocm"} {
		es, _, err := Scan(testdata(t, name))
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, es...)
	}
	labels, err := Labels(all, "vector-add")
	if err != nil {
		t.Fatal(err)
	}
	s, err := ParseLabels(labels)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Targets) != 2 || s.Targets[0].String() != "cuda:75:32" || s.Targets[1].String() != "hip:gfx90a:64" {
		t.Fatalf("targets %v", s.Targets)
	}
	if len(s.Kernels) != 2 || s.EntryCount != 2 || s.CacheSize == 0 || s.Title != "vector-add" || labels[LabelVariant] != "multi" {
		t.Fatalf("summary %+v", s)
	}
}

func TestParseLabelsBad(t *testing.T) {
	if _, err := ParseLabels(map[string]string{"x": "y"}); !errors.Is(err, ErrNoLabels) {
		t.Fatalf("no labels: %v", err)
	}
	for _, l := range []map[string]string{
		{LabelSummary: `{"targets": [`},
		{LabelMetadata: `[{"hash": "ab", "backend": "cuda", "arch": [75]}]`},
		{LabelSummary: `{"targets": [{"backend": "cuda", "arch": 80, "warp_size": 32}]}`, LabelEntryCount: "many"},
	} {
		if _, err := ParseLabels(l); err == nil {
			t.Errorf("%v: want error", l)
		}
	}
	// CUDA arch as Triton writes it (a number) is read too.
	s, err := ParseLabels(map[string]string{LabelSummary: `{"targets": [{"backend": "cuda", "arch": 80, "warp_size": 32}]}`})
	if err != nil || s.Targets[0].String() != "cuda:80:32" {
		t.Fatalf("%v %v", s, err)
	}
}
