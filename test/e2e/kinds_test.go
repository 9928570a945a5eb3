package e2e

import (
	"encoding/json"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"cargohold/test/cachetest"
	"cargohold/test/registry"
)

// TestKindsPushExtract: vLLM (binary and unpacked) and Inductor caches, as
// their frameworks' roots from the shared real data, pushed to a real
// registry (kind detected), read by skopeo, extracted into the root their
// framework reads ($VLLM_CACHE_ROOT, $TORCHINDUCTOR_CACHE_DIR, no -d) and
// replayed as HITs there; one unit fetched lazily costs its span, not the
// layer.
func TestKindsPushExtract(t *testing.T) {
	reg := registry.Start(t)
	unpacked := cachetest.VLLMTestdata(t, "unpacked-vllm-cache")
	for _, c := range []struct {
		name, kind, src, gpu, env, unit string
	}{
		{"vllm-binary", "vllm", cachetest.VLLMTestdata(t, "llama-binary-cache"), "cuda:75:32", "VLLM_CACHE_ROOT", "modelinfos"},
		{"vllm-unpacked", "vllm", unpacked, "hip:gfx90a:64", "VLLM_CACHE_ROOT",
			"torch_compile_cache/d4ec7c2a7d/rank_0_0/triton_cache/CLGERUUZRLHT73J2VAUCCDR5ZG34VIZXGHFLZH6HGZRILMOKHGQQ"},
		{"inductor", "inductor", filepath.Join(unpacked, "torch_compile_cache/d4ec7c2a7d/rank_0_0/inductor_cache"), "hip:gfx90a:64",
			"TORCHINDUCTOR_CACHE_DIR", "fxgraph/r4/fr4t73hg7nisksrnalktc6oq7w4kf5xjy7couij4xnicybdtk65e"},
	} {
		t.Run(c.name, func(t *testing.T) {
			env := []string{"CARGOHOLD_STORE=" + t.TempDir(), "CARGOHOLD_GPU=" + c.gpu}
			ref := reg.Addr + "/kinds/" + c.name + ":v1"
			must(t, env, "cargohold", "-c", "-i", ref, "-d", c.src, "--push")

			out := registry.Skopeo(t, "inspect", "--tls-verify=false", "docker://"+ref)
			var insp struct{ Labels map[string]string }
			if err := json.Unmarshal(out, &insp); err != nil {
				t.Fatalf("skopeo inspect: %v\n%s", err, out)
			}
			if insp.Labels["cache."+c.kind+".image/summary"] == "" || insp.Labels["cache."+c.kind+".image/cache-size-bytes"] == "" {
				t.Errorf("skopeo sees no %s labels: %v", c.kind, insp.Labels)
			}
			registry.Skopeo(t, "copy", "--src-tls-verify=false", "docker://"+ref, "oci:"+filepath.Join(t.TempDir(), "copy")+":x")

			root := filepath.Join(t.TempDir(), "root")
			r := must(t, append(env, c.env+"="+root), "cargohold", "-e", "-i", ref)
			if !strings.Contains(r.stdout, c.kind+" cache in "+root+": installed ") || strings.Contains(r.stdout, "installed 0,") {
				t.Fatalf("extract:\n%s%s", r.stdout, r.stderr)
			}
			must(t, nil, "replay", "hit", "--cache", c.kind, "--root", root, "--expect", c.src, "--all")

			// One unit, lazily: its bytes, not the layer's.
			size := layerSize(t, ref)
			f := must(t, env, "cargohold", "fetch", "-i", ref, "--state-dir", t.TempDir(), "-d", filepath.Join(t.TempDir(), "lazy"), c.unit)
			m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(c.unit) + `  (\d+) files  .*  (\d+) requests  (\S+ \S+) received`).FindStringSubmatch(f.stdout)
			if m == nil {
				t.Fatalf("fetch output:\n%s", f.stdout)
			}
			t.Logf("%s: unit %s: %s files, %s requests, %s received (layer %d bytes)", c.name, c.unit, m[1], m[2], m[3], size)
			if got := parseBytes(t, m[3]); got*4 > size {
				t.Errorf("unit %s cost %d bytes of a %d-byte layer: not lazy", c.unit, got, size)
			}
		})
	}
}

// layerSize is the compressed size of ref's one layer.
func layerSize(t *testing.T, ref string) int64 {
	raw := registry.Skopeo(t, "inspect", "--raw", "--tls-verify=false", "docker://"+ref)
	var m struct{ Layers []struct{ Size int64 } }
	if err := json.Unmarshal(raw, &m); err != nil || len(m.Layers) != 1 {
		t.Fatalf("manifest %s: %v", raw, err)
	}
	return m.Layers[0].Size
}

// parseBytes reads cli.Bytes' "12.3 KiB".
func parseBytes(t *testing.T, s string) int64 {
	num, unit, _ := strings.Cut(s, " ")
	f, err := strconv.ParseFloat(num, 64)
	if err != nil {
		t.Fatalf("bytes %q: %v", s, err)
	}
	mult := map[string]float64{"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}[unit]
	if mult == 0 {
		t.Fatalf("bytes %q: unit %q", s, unit)
	}
	return int64(f * mult)
}

// TestCreateNamesTheKinds: a dir that holds no cache cargohold knows is
// refused with the kinds it looks for; --cache names one.
func TestCreateNamesTheKinds(t *testing.T) {
	env := []string{"CARGOHOLD_STORE=" + t.TempDir()}
	r := run(t, env, "cargohold", "-c", "-i", "x/y:z", "-d", t.TempDir())
	if r.err == nil || !strings.Contains(r.stderr, "want a Triton cache (KEY dirs), a vLLM cache root (torch_compile_cache/)") {
		t.Fatalf("want a clear refusal naming the kinds, got %v\n%s", r.err, r.stderr)
	}
	r = run(t, env, "cargohold", "-c", "-i", "x/y:z", "-d", t.TempDir(), "--cache", "vllm")
	if r.err == nil || !strings.Contains(r.stderr, "as a vllm cache: no cache units") {
		t.Fatalf("--cache vllm on an empty dir: %v\n%s", r.err, r.stderr)
	}
}
