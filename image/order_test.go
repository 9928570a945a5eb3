package image

import (
	"bytes"
	"cmp"
	"context"
	"io"
	"slices"
	"strings"
	"testing"

	"cargohold/kind"
	"cargohold/layer"
	"cargohold/triton"
	"cargohold/triton/gen"
)

// layerOrder lists the KEY dirs of p's layer by offset.
func layerOrder(t *testing.T, p *Packed) []string {
	t.Helper()
	rc, err := p.layer.Compressed()
	if err != nil {
		t.Fatal(err)
	}
	blob, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	built, err := p.Built()
	if err != nil {
		t.Fatal(err)
	}
	idx, err := layer.Open(bytes.NewReader(blob), built.Size, built.TOCDigest.String())
	if err != nil {
		t.Fatal(err)
	}
	var dirs []*layer.Dir
	for _, d := range idx.Dirs {
		dirs = append(dirs, d)
	}
	slices.SortFunc(dirs, func(a, b *layer.Dir) int { return cmp.Compare(a.Offset, b.Offset) })
	var keys []string
	for _, d := range dirs {
		keys = append(keys, d.Key)
	}
	return keys
}

// TestPackOrdered: an access order (Options.Order) puts its KEY dirs first in the layer,
// in that order, the rest sorted; unknown KEYs are ignored and reported;
// the digest is reproducible with and without an order, and without one it
// is Pack's.
func TestPackOrdered(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	es, err := gen.Generate(dir, gen.Options{Kernels: 12, Launchers: 1, Seed: 5, Scale: 0.01})
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, e := range es {
		keys = append(keys, e.Key)
	}
	slices.Sort(keys)
	unknown, err := triton.KeyOf(strings.Repeat("cd", 32))
	if err != nil {
		t.Fatal(err)
	}
	pack := func(order []string) *Packed {
		t.Helper()
		p, err := PackKind(ctx, dir, Options{Kind: kind.Triton, Title: "t", Order: order}, t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		return p
	}
	digest := func(p *Packed) string {
		d, err := p.Image.Digest()
		if err != nil {
			t.Fatal(err)
		}
		return d.String()
	}
	plain, err := Pack(ctx, dir, "t", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if got := layerOrder(t, plain); !slices.Equal(got, keys) {
		t.Fatalf("Pack: layer order %v, want sorted", got)
	}
	if digest(pack(nil)) != digest(plain) {
		t.Fatal("PackKind without an order differs from Pack")
	}

	order := []string{keys[7], unknown, keys[2], keys[7], keys[11]}
	p := pack(order)
	want := []string{keys[7], keys[2], keys[11]}
	for _, k := range keys {
		if !slices.Contains(want, k) {
			want = append(want, k)
		}
	}
	if got := layerOrder(t, p); !slices.Equal(got, want) {
		t.Fatalf("layer order\n%v\nwant\n%v", got, want)
	}
	if !slices.Equal(p.Unknown, []string{unknown}) {
		t.Errorf("Unknown = %v, want %v", p.Unknown, []string{unknown})
	}
	if !slices.IsSortedFunc(p.Entries, func(a, b triton.Entry) int { return cmp.Compare(a.Key, b.Key) }) {
		t.Error("Packed.Entries not sorted by KEY")
	}
	if d := digest(p); d == digest(plain) || d != digest(pack(order)) {
		t.Errorf("ordered digest %s: want it to differ from Pack's %s and to repeat", d, digest(plain))
	}
}

func TestReadOrder(t *testing.T) {
	k, _ := triton.KeyOf(strings.Repeat("ab", 32))
	got, err := ReadOrder(strings.NewReader("# recorded\n\n " + k + " \n" + k + "\n"))
	if err != nil || !slices.Equal(got, []string{k, k}) {
		t.Fatalf("ReadOrder = %v, %v", got, err)
	}
	if _, err := ReadOrder(strings.NewReader(k + "\nnot-a-key\n")); err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Fatalf("bad line: %v, want an error naming line 2", err)
	}
}
