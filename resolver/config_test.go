package resolver

import (
	"context"
	"strings"
	"testing"

	"cargohold/test/registry"
)

// Low: an image whose config is huge (a 20 MiB label) is refused before
// its config is read, with an error that says so, from a registry and
// from a local layout alike.
func TestHugeConfigRefused(t *testing.T) {
	reg := registry.Start(t)
	opts := testOptions(t)
	img := testImage(t, 1000, 1, map[string]string{"cache.triton.image/metadata": strings.Repeat("x", 20<<20)})
	ref := reg.Ref("cache/huge:v1")
	pushImage(t, ref, img, opts)
	if _, err := New(opts).Fetch(context.Background(), ref); err == nil || !strings.Contains(err.Error(), "config") || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("registry: Fetch = %v, want a refusal of the config's size", err)
	}
	layout := t.TempDir()
	if _, err := Save(context.Background(), "oci:"+layout+":huge", img, opts); err != nil {
		t.Fatal(err)
	}
	if _, err := New(opts).Fetch(context.Background(), "oci:"+layout+":huge"); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("layout: Fetch = %v, want a refusal of the config's size", err)
	}
	// A normal config passes.
	small := testImage(t, 1000, 1, map[string]string{"a": "b"})
	pushImage(t, reg.Ref("cache/small:v1"), small, opts)
	if _, err := New(opts).Fetch(context.Background(), reg.Ref("cache/small:v1")); err != nil {
		t.Fatal(err)
	}
}
