// Package gen writes realistic, synthetic Triton caches: the README's bundled
// example, tests with hundreds of kernels and benchmarks with thousands.
//
// Model: a generated cache looks like one Triton 3.x compiled: one KEY dir per
// kernel holding <name>.json (the metadata, field set and order of Triton
// 3.2–3.7), the IR text (.ttir, .ttgir, .llir, .ptx or .amdgcn), the binary
// (.cubin or .hsaco) and __grp__<name>.json, plus launcher KEY dirs holding one
// .so and no kernel JSON.
//
// Invariants: the output is a function of Options alone (kernel i draws from
// its own seeded stream, so kernels are generated in parallel and still
// reproducibly); every KEY is triton.KeyOf of the kernel's "hash"; every dir
// passes triton.ScanEntry with the Kind and target it was made for; group
// files are byte-for-byte what Python's json.dumps writes, children in
// Triton's order (ttir, ttgir, llir, ptx|amdgcn, cubin|hsaco, json).
package gen

import (
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"sync"

	"cargohold/gpu"
	"cargohold/triton"
)

// DefaultRoot is the cache root written into group files when Options.Root
// is empty: where Triton keeps its cache when run as root.
const DefaultRoot = "/root/.triton/cache"

// TritonVersion is the version written into every kernel's metadata.
const TritonVersion = "3.3.1"

// Options say what to generate. The zero value of each field documents its
// default.
type Options struct {
	Kernels   int          // kernel entries; 0 writes none
	Launchers int          // launcher entries (a cuda_utils/hip_utils .so first, then __triton_launcher .so); 0 writes none
	Targets   []gpu.Target // assigned to kernels round-robin; default cuda:80:32
	Seed      int64        // same seed, same cache, byte for byte
	Root      string       // cache root written into group files; default DefaultRoot
	Scale     float64      // multiplies every file size; default 1 (realistic: a few KB to ~200 KB per file)
}

// Generate writes a cache into dir (created if missing) and returns its
// entries as triton.Scan would, sorted by KEY.
func Generate(dir string, opts Options) ([]triton.Entry, error) {
	if err := opts.fill(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("gen: %w", err)
	}
	n := opts.Kernels + opts.Launchers
	entries := make([]triton.Entry, n)
	errs := make([]error, n)
	jobs := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < runtime.GOMAXPROCS(0); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				entries[i], errs[i] = opts.entry(dir, i)
			}
		}()
	}
	for i := 0; i < n; i++ {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Key < entries[j].Key })
	return entries, nil
}

func (o *Options) fill() error {
	if o.Kernels < 0 || o.Launchers < 0 {
		return fmt.Errorf("gen: negative count (kernels %d, launchers %d)", o.Kernels, o.Launchers)
	}
	if len(o.Targets) == 0 {
		o.Targets = []gpu.Target{{Backend: "cuda", Arch: "80", WarpSize: 32}}
	}
	for _, t := range o.Targets {
		p, err := gpu.ParseTarget(t.String())
		if err != nil {
			return fmt.Errorf("gen: %w", err)
		}
		if p != t {
			return fmt.Errorf("gen: target %s is not in canonical form (%s)", t, p)
		}
	}
	if o.Root == "" {
		o.Root = DefaultRoot
	}
	if o.Scale == 0 {
		o.Scale = 1
	}
	if o.Scale < 0 {
		return fmt.Errorf("gen: negative scale %g", o.Scale)
	}
	return nil
}

// entry writes entry i: kernels first, then launchers, each from its own
// stream so the result does not depend on scheduling.
func (o *Options) entry(dir string, i int) (triton.Entry, error) {
	r := rand.New(rand.NewPCG(uint64(o.Seed), uint64(i)))
	var files []file
	var hash string
	if i < o.Kernels {
		hash = randomHash(r)
		files = o.kernelFiles(r, i, hash)
	} else {
		hash = randomHash(r)
		files = o.launcherFiles(r, i-o.Kernels)
	}
	key, err := triton.KeyOf(hash)
	if err != nil {
		return triton.Entry{}, fmt.Errorf("gen: %w", err)
	}
	kd := filepath.Join(dir, key)
	if err := os.MkdirAll(kd, 0o755); err != nil {
		return triton.Entry{}, fmt.Errorf("gen: %w", err)
	}
	for _, f := range files {
		data := f.data
		if f.group {
			if data, err = groupFile(o.Root, key, files); err != nil {
				return triton.Entry{}, err
			}
		}
		p := filepath.Join(kd, f.name)
		if err := os.WriteFile(p, data, f.mode); err != nil {
			return triton.Entry{}, fmt.Errorf("gen: %w", err)
		}
		// WriteFile's mode passes through the umask; the cache's must not.
		if err := os.Chmod(p, f.mode); err != nil {
			return triton.Entry{}, fmt.Errorf("gen: %w", err)
		}
	}
	e, _, err := triton.ScanEntry(kd)
	if err != nil {
		return triton.Entry{}, fmt.Errorf("gen: check %s: %w", key, err)
	}
	return e, nil
}

// file is one file of an entry, in the order Triton writes it.
type file struct {
	name  string
	data  []byte
	mode  os.FileMode
	group bool // the group file; its data is made from the others
}

func randomHash(r *rand.Rand) string {
	var b [32]byte
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return hex.EncodeToString(b[:])
}

// groupFile lists every other file of the entry as root/key/name, in
// Triton's order. The names are plain identifiers; RewriteGroup does the
// Python-style quoting of the paths.
func groupFile(root, key string, files []file) ([]byte, error) {
	b := []byte(`{"child_paths": {`)
	n := 0
	for _, f := range files {
		if f.group {
			continue
		}
		if n > 0 {
			b = append(b, ", "...)
		}
		b = fmt.Appendf(b, "%q: %q", f.name, triton.ImageRoot+"/"+key+"/"+f.name)
		n++
	}
	b = append(b, "}}"...)
	out, err := triton.RewriteGroup(b, root)
	if err != nil {
		return nil, fmt.Errorf("gen: group file: %w", err)
	}
	return out, nil
}
