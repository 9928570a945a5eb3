package main

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"cargohold/gpu"
	"cargohold/image"
	"cargohold/kind"
	"cargohold/resolver"
	"cargohold/test/cachetest"
)

// TestFetchKindOfUnlabelledImage: a vLLM image without cache labels whose
// last layer holds no cache (a file added on top) still has its units fetched
// and installed: its kind is that of the first layer holding a cache, as
// the catalog and extract take it.
func TestFetchKindOfUnlabelledImage(t *testing.T) {
	ctx := context.Background()
	src := cachetest.VLLMTestdata(t, "llama-binary-cache")
	p, err := image.PackKind(ctx, src, image.Options{Kind: kind.VLLM,
		Targets: func() ([]gpu.Target, error) { return gpu.ParseList("cuda:90:32") }}, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	img, err := mutate.Config(p.Image, v1.Config{}) // no labels
	if err != nil {
		t.Fatal(err)
	}
	img, err = mutate.Append(img, mutate.Addendum{
		Layer:     static.NewLayer(cachetest.Tar(t, cachetest.Entry{Name: "etc/motd", Body: []byte("not a cache file\n")}), types.OCIUncompressedLayer),
		MediaType: types.OCIUncompressedLayer,
	})
	if err != nil {
		t.Fatal(err)
	}
	layout := t.TempDir()
	ref := "oci:" + layout + ":unlabelled"
	if _, err := resolver.Save(ctx, ref, img, resolver.Options{}); err != nil {
		t.Fatal(err)
	}
	u := p.Tree.Units[len(p.Tree.Units)-1]
	dir := t.TempDir()
	o := options{image: ref, dir: dir, keys: []string{u.Path}, stateDir: t.TempDir()}
	if err := fetchKeys(ctx, o, resolver.Options{}, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatalf("fetch: %v", err)
	}
	for _, f := range u.Files {
		if _, err := os.Stat(filepath.Join(dir, filepath.FromSlash(u.Path), f.Name)); err != nil {
			t.Errorf("not installed: %v", err)
		}
	}
}
