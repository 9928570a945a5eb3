package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"cargohold/test/cachetest"
	"cargohold/test/registry"
	"cargohold/triton"
)

func TestPushSkopeoExtract(t *testing.T) {
	reg := registry.Start(t)
	env := []string{"CARGOHOLD_STORE=" + t.TempDir(), "CARGOHOLD_GPU="}
	for _, c := range []struct{ cache, gpu, target string }{
		{"vector-add-cache", "cuda:75:32", `"arch":"75"`},
		{"vector-add-cache-rocm", "hip:gfx90a:64", `"arch":"gfx90a"`},
	} {
		t.Run(c.cache, func(t *testing.T) {
			src := cachetest.Testdata(t, c.cache)
			ref := reg.Addr + "/cache/" + c.cache + ":v1"
			pushed := must(t, env, "cargohold", "-c", "-i", ref, "-d", src, "--push", "--plain-http")
			local := must(t, env, "cargohold", "-c", "-i", ref, "-d", src)
			if strings.TrimSpace(pushed.stdout) != strings.TrimSpace(local.stdout) {
				t.Fatalf("pushed %q, local store %q: digests differ", pushed.stdout, local.stdout)
			}

			// skopeo, an independent client, accepts the image and sees the labels.
			out := registry.Skopeo(t, "inspect", "--tls-verify=false", "docker://"+ref)
			var insp struct{ Labels map[string]string }
			if err := json.Unmarshal(out, &insp); err != nil {
				t.Fatalf("skopeo inspect: %v\n%s", err, out)
			}
			for _, l := range []string{triton.LabelMetadata, triton.LabelEntryCount, triton.LabelVariant, triton.LabelSummary, triton.LabelCacheSize, triton.LabelTitle} {
				if insp.Labels[l] == "" {
					t.Errorf("skopeo sees no label %s", l)
				}
			}
			if !strings.Contains(insp.Labels[triton.LabelSummary], c.target) {
				t.Errorf("summary label %s lacks %s", insp.Labels[triton.LabelSummary], c.target)
			}
			raw := registry.Skopeo(t, "inspect", "--raw", "--tls-verify=false", "docker://"+ref)
			if !bytes.Contains(raw, []byte("containerd.io/snapshot/stargz/toc.digest")) || !bytes.Contains(raw, []byte(string(types.OCIManifestSchema1))) {
				t.Errorf("manifest lacks OCI media type or TOC annotation:\n%s", raw)
			}
			// skopeo can copy it out whole, verifying every blob.
			registry.Skopeo(t, "copy", "--src-tls-verify=false", "docker://"+ref, "oci:"+filepath.Join(t.TempDir(), "copy")+":x")

			// Extract from the registry (a fresh store, so nothing local).
			renv := []string{"CARGOHOLD_STORE=" + t.TempDir(), "CARGOHOLD_GPU="}
			dir := filepath.Join(t.TempDir(), "cache")
			must(t, renv, "cargohold", "-e", "-i", ref, "-d", dir, "--gpu", c.gpu, "--plain-http")
			cachetest.Compare(t, src, dir)

			// A GPU that fits nothing: nothing extracted, and the reason given.
			none := filepath.Join(t.TempDir(), "none")
			r := must(t, renv, "cargohold", "-e", "-i", ref, "-d", none, "--gpu", "cuda:90:32", "--plain-http")
			if !strings.Contains(r.stderr, "fits the local GPU (cuda:90:32)") {
				t.Errorf("no reason given:\n%s", r.stderr)
			}
			if des, _ := os.ReadDir(none); len(des) != 0 {
				t.Errorf("non-fitting extract wrote %v", des)
			}
		})
	}
}

// An image made the plain way: tar(1) over io.triton.cache/, gzip, pushed
// with no labels by a generic client.
func TestExtractPlainImage(t *testing.T) {
	reg := registry.Start(t)
	src := cachetest.Testdata(t, "vector-add-cache")
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "io.triton.cache"), 0o755); err != nil {
		t.Fatal(err)
	}
	cp := exec.Command("cp", "-r", src+"/.", filepath.Join(root, "io.triton.cache"))
	if out, err := cp.CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	tarball := filepath.Join(t.TempDir(), "layer.tar.gz")
	if out, err := exec.Command("tar", "-C", root, "-czf", tarball, "io.triton.cache").CombinedOutput(); err != nil {
		t.Fatalf("tar: %v %s", err, out)
	}
	blob, err := os.ReadFile(tarball)
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, static.NewLayer(blob, types.DockerLayer))
	if err != nil {
		t.Fatal(err)
	}
	ref := reg.Addr + "/plain/cache:latest"
	push(t, ref, img)

	env := []string{"CARGOHOLD_STORE=" + t.TempDir(), "CARGOHOLD_GPU="}
	dir := t.TempDir()
	r := must(t, env, "cargohold", "-e", "-i", ref, "-d", dir, "--gpu", "cuda:75:32", "--plain-http")
	if !strings.Contains(r.stdout, "installed 1") {
		t.Fatalf("stdout: %s\nstderr: %s", r.stdout, r.stderr)
	}
	cachetest.Compare(t, src, dir)
	insp := must(t, env, "cargohold", "inspect", "-i", ref, "--plain-http", "--gpu", "cuda:75:32")
	if !strings.Contains(insp.stdout, "targets: unknown") {
		t.Errorf("inspect of a label-less image:\n%s", insp.stdout)
	}
}

func TestCreateRefusesEmptyDir(t *testing.T) {
	env := []string{"CARGOHOLD_STORE=" + t.TempDir()}
	r := run(t, env, "cargohold", "-c", "-i", "x/y:z", "-d", t.TempDir(), "--cache", "triton")
	if r.err == nil || !strings.Contains(r.stderr, "no Triton cache entries") {
		t.Fatalf("want a clear refusal, got %v\n%s", r.err, r.stderr)
	}
}

func push(t *testing.T, ref string, img v1.Image) {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img, remote.WithContext(context.Background())); err != nil {
		t.Fatal(err)
	}
}
