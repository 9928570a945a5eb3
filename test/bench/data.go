package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"

	"cargohold/image"
	"cargohold/resolver"
	"cargohold/test/proxy"
	"cargohold/test/registry"
	"cargohold/triton"
	"cargohold/triton/gen"
)

// workDir returns dir made absolute and present, or a new temp dir named
// after prefix when dir is "".
func workDir(dir, prefix string) (string, error) {
	if dir == "" {
		return os.MkdirTemp("", prefix)
	}
	dir, err := filepath.Abs(dir)
	if err == nil {
		err = os.MkdirAll(dir, 0o755)
	}
	return dir, err
}

// served is the image of a mode's generated cache in a registry process,
// behind a proxy adding o.latency, and the commands to run against it.
type served struct {
	bin, src string
	keys     []string // sorted
	info     imageInfo
	reg      *registry.Registry
	px       *proxy.Proxy
	ref      string // the image through the proxy
}

// imageOptions is what serve needs, the part of the options bench mount
// and bench compare share.
type imageOptions struct {
	kernels int
	scale   float64
	seed    int64
	latency time.Duration
	bin     string
	data    string
	fresh   bool
}

// defaultData sets o.data, where unset, to the dir bench mount and bench
// compare share for one generated cache:
// $TMPDIR/cargohold-bench-mount-n<kernels>-seed<seed>-scale<scale>.
func (o *imageOptions) defaultData() {
	if o.data == "" {
		o.data = filepath.Join(os.TempDir(), fmt.Sprintf("cargohold-bench-mount-n%d-seed%d-scale%g", o.kernels, o.seed, o.scale))
	}
}

// serve generates (or reuses, from o.data) the cache and its image, starts
// the registry on it and the proxy in front, and finds or builds the
// commands (o.bin, or under work).
func serve(ctx context.Context, o imageOptions, work string) (*served, error) {
	if o.fresh {
		os.Remove(filepath.Join(o.data, "cache.done"))
	}
	bin, err := binaries(ctx, o.bin, work)
	if err != nil {
		return nil, err
	}
	src, keys, err := source(o.data, o)
	if err != nil {
		return nil, err
	}
	reg, err := registry.StartProcess(filepath.Join(o.data, "registry"))
	if err != nil {
		return nil, err
	}
	info, err := pushOnce(ctx, reg, src, o.data, work)
	if err != nil {
		reg.Close()
		return nil, err
	}
	px, err := proxy.Listen(reg.URL)
	if err != nil {
		reg.Close()
		return nil, err
	}
	px.SetLatency(o.latency)
	return &served{bin: bin, src: src, keys: keys, info: info, reg: reg, px: px, ref: px.Addr + "/" + benchRepo}, nil
}

func (s *served) close() {
	s.px.Close()
	s.reg.Close()
}

// The mount mode's image: every kernel for one target, which the mount and
// the extract both claim, so all 2,000 fit.
const (
	benchGPU  = "cuda:80:32"
	benchRepo = "bench/cache:v1"
)

// imageInfo is what a data dir remembers about the image it pushed.
type imageInfo struct {
	Files        int   `json:"files"`
	Size         int64 `json:"size"`         // cache bytes
	Compressed   int64 `json:"compressed"`   // layer blob
	Uncompressed int64 `json:"uncompressed"` // layer tar
}

// source generates the cache into data/cache once (gen is deterministic,
// so a finished dir is reused) and returns it with its KEYs, sorted.
func source(data string, o imageOptions) (string, []string, error) {
	dir := filepath.Join(data, "cache")
	done := filepath.Join(data, "cache.done")
	if _, err := os.Stat(done); err != nil {
		for _, stale := range []string{dir, filepath.Join(data, "registry"), filepath.Join(data, "pushed.json")} {
			if err := os.RemoveAll(stale); err != nil {
				return "", nil, err
			}
		}
		if _, err := gen.Generate(dir, gen.Options{Kernels: o.kernels, Seed: o.seed, Scale: o.scale}); err != nil {
			return "", nil, err
		}
		if err := os.WriteFile(done, nil, 0o644); err != nil {
			return "", nil, err
		}
	}
	des, err := os.ReadDir(dir)
	if err != nil {
		return "", nil, err
	}
	var keys []string
	for _, de := range des {
		if de.IsDir() && triton.IsKey(de.Name()) {
			keys = append(keys, de.Name())
		}
	}
	sort.Strings(keys)
	return dir, keys, nil
}

// pushOnce packs src and pushes it to reg, unless this data dir's registry
// storage already holds it.
func pushOnce(ctx context.Context, reg *registry.Registry, src, data, tmp string) (imageInfo, error) {
	var info imageInfo
	marker := filepath.Join(data, "pushed.json")
	if b, err := os.ReadFile(marker); err == nil && json.Unmarshal(b, &info) == nil {
		return info, nil
	}
	p, err := image.Pack(ctx, src, "bench", tmp)
	if err != nil {
		return info, err
	}
	defer p.Close()
	if _, err := resolver.Push(ctx, reg.Ref(benchRepo), p.Image, resolver.Options{Keychain: authn.NewMultiKeychain()}); err != nil {
		return info, err
	}
	for _, e := range p.Entries {
		for _, f := range e.Files {
			info.Files++
			info.Size += f.Size
		}
	}
	built, err := p.Built()
	if err != nil {
		return info, err
	}
	info.Compressed, info.Uncompressed = built.Size, built.UncompressedSize
	b, _ := json.Marshal(info)
	return info, os.WriteFile(marker, b, 0o644)
}

// binaries returns a dir holding cargohold and cargohold-fs: dir when
// given, else a fresh build under work.
func binaries(ctx context.Context, dir, work string) (string, error) {
	if dir != "" {
		for _, name := range []string{"cargohold", "cargohold-fs"} {
			if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
				return "", fmt.Errorf("--bin: %w", err)
			}
		}
		return filepath.Abs(dir)
	}
	out := filepath.Join(work, "bin")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out+"/", "./cmd/cargohold", "./cmd/cargohold-fs")
	// The module root, from this file's path; else the current dir.
	if _, self, _, ok := runtime.Caller(0); ok {
		root := filepath.Join(filepath.Dir(self), "..", "..")
		if _, err := os.Stat(filepath.Join(root, "go.mod")); err == nil {
			cmd.Dir = root
		}
	}
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %w\n%s", err, b)
	}
	return out, nil
}
