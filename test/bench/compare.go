package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"

	"cargohold/internal/cli"
	"cargohold/test/proxy"
	"cargohold/test/registry"
	"cargohold/test/replay"
)

// compareOptions is everything the compare mode needs.
type compareOptions struct {
	imageOptions
	bandwidths []int // Mbit/s; 0: no cap
	cold       int
	procs      int
	runs       int
	work       string
	keep       bool
}

func compareMain(args []string) {
	var o compareOptions
	fl := pflag.NewFlagSet("bench compare", pflag.ContinueOnError)
	fl.IntVarP(&o.kernels, "kernels", "n", 2000, "kernel dirs in the image (all for "+benchGPU+")")
	fl.Float64Var(&o.scale, "scale", 1, "file size multiplier of the generated cache (1 = realistic)")
	fl.Int64Var(&o.seed, "seed", 1, "generator seed (also orders the kernels hit)")
	fl.DurationVar(&o.latency, "latency", 20*time.Millisecond, "latency the proxy adds to every request")
	fl.IntSliceVar(&o.bandwidths, "bandwidth", []int{0, 1000}, "bandwidth caps to run the table at, Mbit/s (0: none)")
	fl.IntVar(&o.cold, "cold", 80, "cold KEYs looked up for the 1-process vs N-process comparison")
	fl.IntVar(&o.procs, "procs", 8, "replay processes for the parallel cold lookups")
	fl.IntVar(&o.runs, "runs", 1, "runs of each pass; the table shows medians")
	fl.StringVar(&o.bin, "bin", "", "dir holding cargohold and cargohold-fs (default: go build them into the work dir)")
	fl.StringVar(&o.data, "data", "", "dir keeping the generated cache and the registry storage across runs\n(default $TMPDIR/cargohold-bench-mount-n<kernels>-seed<seed>-scale<scale>, shared with bench mount)")
	fl.BoolVar(&o.fresh, "fresh", false, "regenerate the cache and push the image again")
	fl.StringVar(&o.work, "work", "", "work dir (default a temp dir, removed at the end); /dev/shm takes the disk out")
	fl.BoolVar(&o.keep, "keep", false, "keep the work dir")
	check := func() error {
		if o.kernels < 1 || o.cold < 1 || o.cold+1 > o.kernels || o.procs < 2 || o.runs < 1 {
			return fmt.Errorf("want --kernels > --cold >= 1, --procs >= 2, --runs >= 1")
		}
		return nil
	}
	cmdMain(fl, args, check, func(ctx context.Context) error {
		o.defaultData()
		return runCompare(ctx, o, os.Stdout)
	})
}

// serving is one way of getting kernels served, timed from its start (the
// cargohold-fs process start, the cargohold -e start, the skopeo start):
// the time, requests and bytes when the k-th kernel of the order had been
// served, for each checkpoint k.
type serving struct {
	Name  string    `json:"name"`
	At    []float64 `json:"seconds"`
	Reqs  []int     `json:"requests"`
	Bytes []int64   `json:"bytes"`
	// Setup is the part of every time that is the pull itself (cargohold
	// -e, skopeo copy + tar); 0 for the mount.
	Setup float64 `json:"setup_s,omitempty"`
}

// checkpoints are the k the table reports: 1, 10, 100, 500, all.
func checkpoints(n int) []int {
	var ks []int
	for _, k := range []int{1, 10, 100, 500} {
		if k < n {
			ks = append(ks, k)
		}
	}
	return append(ks, n)
}

func runCompare(ctx context.Context, o compareOptions, out io.Writer) error {
	work, err := workDir(o.work, "cargohold-bench-compare-")
	if err != nil {
		return err
	}
	if !o.keep {
		defer os.RemoveAll(work)
	}
	say := func(format string, args ...any) { fmt.Fprintf(out, format+"\n", args...) }
	sv, err := serve(ctx, o.imageOptions, work)
	if err != nil {
		return err
	}
	defer sv.close()
	bin, src, keys, info, px, ref := sv.bin, sv.src, sv.keys, sv.info, sv.px, sv.ref
	say("image:    %d KEY dirs (%s), %d files, %s; eStargz layer %s", len(keys), benchGPU, info.Files,
		cli.Bytes(info.Size), cli.Bytes(info.Compressed))
	say("registry: docker-registry behind a proxy adding %s per request; work dir %s", o.latency, work)

	// The order Triton looks kernels up in: random, so that every prefix is
	// spread over the layer (no access order packed).
	order := slices.Clone(keys)
	rand.New(rand.NewSource(o.seed)).Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
	ks := checkpoints(len(order))

	type table struct {
		Bandwidth int       `json:"bandwidth_mbit"`
		Rows      []serving `json:"rows"`
	}
	var tables []table
	for _, bw := range o.bandwidths {
		px.SetBandwidth(int64(bw) * 1e6 / 8)
		var runs [][]serving
		for run := range o.runs {
			dir := filepath.Join(work, fmt.Sprintf("bw%d-run%d", bw, run))
			var rows []serving
			for _, m := range []struct {
				name, dir string
				args      []string
			}{{"cargohold-fs (defaults)", "fs", nil}, {"cargohold-fs --prefetch none", "lazy", []string{"--prefetch", "none"}}} {
				r, err := fsServing(ctx, bin, ref, filepath.Join(dir, m.dir), px, src, order, ks, m.name, m.args...)
				if err != nil {
					return err
				}
				rows = append(rows, r)
			}
			ext, local, err := extractServing(ctx, bin, ref, filepath.Join(dir, "extract"), px, order, ks)
			if err != nil {
				return err
			}
			pull, err := pullServing(ctx, ref, filepath.Join(dir, "pull"), px, local, ks)
			if err != nil {
				return err
			}
			rows = append(rows, ext, pull)
			runs = append(runs, rows)
			if !o.keep {
				os.RemoveAll(dir)
			}
		}
		t := table{Bandwidth: bw, Rows: medians(runs)}
		tables = append(tables, t)
		say("")
		cap := "no bandwidth cap"
		if bw > 0 {
			cap = fmt.Sprintf("bandwidth capped at %d Mbit/s", bw)
		}
		say("time until k kernels are served, from process start (%s, %s latency; median of %d):", cap, o.latency, o.runs)
		printServing(out, t.Rows, ks)
	}
	px.SetBandwidth(0)

	// Cold lookups, prefetch off: one process doing all, then procs at once.
	cold := order[1 : 1+o.cold]
	one, err := coldLookups(ctx, bin, ref, filepath.Join(work, "cold1"), px, order[0], cold, 1)
	if err != nil {
		return err
	}
	many, err := coldLookups(ctx, bin, ref, filepath.Join(work, "coldN"), px, order[0], cold, o.procs)
	if err != nil {
		return err
	}
	say("")
	say("cold lookups, --prefetch none, %d KEYs: 1 process %.3fs, %d processes %.3fs (%.1fx faster)",
		len(cold), one, o.procs, many, one/many)

	b, _ := json.Marshal(map[string]any{
		"kernels": len(keys), "latency_ms": o.latency.Seconds() * 1e3, "scale": o.scale,
		"image_compressed_bytes": info.Compressed, "cache_bytes": info.Size, "checkpoints": ks,
		"tables": tables, "cold_keys": len(cold), "cold_1proc_s": one, "cold_procs": o.procs, "cold_nproc_s": many,
	})
	say("%s", b)
	return nil
}

// printServing prints the table: a time column per checkpoint, the ratio
// to the full pull at each, then requests and bytes at k = 1 and k = all.
func printServing(out io.Writer, rows []serving, ks []int) {
	pull := rows[len(rows)-1]
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprint(tw, "\t")
	for _, k := range ks {
		fmt.Fprintf(tw, "k=%d\t", k)
	}
	fmt.Fprint(tw, "reqs k=1\tbytes k=1\treqs all\tbytes all\t\n")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t", r.Name)
		for i := range ks {
			fmt.Fprintf(tw, "%.2fs\t", r.At[i])
		}
		last := len(ks) - 1
		fmt.Fprintf(tw, "%d\t%s\t%d\t%s\t\n", r.Reqs[0], cli.Bytes(r.Bytes[0]), r.Reqs[last], cli.Bytes(r.Bytes[last]))
	}
	for _, r := range rows[:len(rows)-1] {
		fmt.Fprintf(tw, "%s / pull\t", r.Name)
		for i := range ks {
			fmt.Fprintf(tw, "%.2fx\t", r.At[i]/pull.At[i])
		}
		fmt.Fprint(tw, "\t\t\t\t\n")
	}
	tw.Flush()
}

// medians takes, cell by cell, the median over runs.
func medians(runs [][]serving) []serving {
	out := make([]serving, len(runs[0]))
	for i := range out {
		r := runs[0][i]
		out[i] = serving{Name: r.Name, At: make([]float64, len(r.At)), Reqs: make([]int, len(r.Reqs)),
			Bytes: make([]int64, len(r.Bytes))}
		var setups []float64
		for j := range r.At {
			var at []float64
			var reqs []int
			var bytes []int64
			for _, run := range runs {
				at = append(at, run[i].At[j])
				reqs = append(reqs, run[i].Reqs[j])
				bytes = append(bytes, run[i].Bytes[j])
			}
			out[i].At[j], out[i].Reqs[j], out[i].Bytes[j] = median(at), median(reqs), median(bytes)
		}
		for _, run := range runs {
			setups = append(setups, run[i].Setup)
		}
		out[i].Setup = median(setups)
	}
	return out
}

func median[T ~int | ~int64 | ~float64](xs []T) T {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

// fsServing starts cargohold-fs (args added) with a fresh state in dir and
// hits the kernels of order one by one, as one Triton process would; the
// first is retried until the mount answers. It checks a sample against the
// source afterwards (untimed) and stops the mount.
func fsServing(ctx context.Context, bin, ref, dir string, px *proxy.Proxy, src string, order []string, ks []int, name string, args ...string) (serving, error) {
	r := serving{Name: name}
	px.Reset()
	p, err := startFS(bin, ref, dir, args...)
	if err != nil {
		return r, err
	}
	defer p.stop()
	if _, err := p.firstHit(order[0]); err != nil {
		return r, fmt.Errorf("%s: first hit: %w\n%s", name, err, p.logTail())
	}
	mark := func() {
		r.At = append(r.At, time.Since(p.start).Seconds())
		r.Reqs = append(r.Reqs, px.Count(nil))
		r.Bytes = append(r.Bytes, px.BytesSent())
	}
	mark()
	for i, k := range order[1:ks[len(ks)-1]] {
		if err := ctx.Err(); err != nil {
			return r, err
		}
		if _, err := replay.Hit(p.mnt, k, ""); err != nil {
			return r, fmt.Errorf("%s: %w\n%s", name, err, p.logTail())
		}
		if slices.Contains(ks, i+2) {
			mark()
		}
	}
	for _, k := range spread(order[:ks[len(ks)-1]], 20, 0) {
		if _, err := replay.Hit(p.mnt, k, src); err != nil {
			return r, fmt.Errorf("%s: check: %w", name, err)
		}
	}
	return r, p.stop()
}

// extractServing runs cargohold -e of the whole image into dir/cache with
// an empty local store, so it pulls, then hits the kernels there one by
// one. local is the time the hits alone took up to each checkpoint.
func extractServing(ctx context.Context, bin, ref, dir string, px *proxy.Proxy, order []string, ks []int) (serving, []float64, error) {
	r := serving{Name: "cargohold -e, then hits"}
	cache := filepath.Join(dir, "cache")
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "cargohold"), "-e", "-i", ref, "-d", cache, "--plain-http",
		"--gpu", benchGPU, "-l", "warning")
	cmd.Env = append(os.Environ(), "CARGOHOLD_STORE="+filepath.Join(dir, "store"))
	px.Reset()
	start := time.Now()
	if b, err := cmd.CombinedOutput(); err != nil {
		return r, nil, fmt.Errorf("cargohold -e: %w\n%s", err, b)
	}
	r.Setup = time.Since(start).Seconds()
	reqs, bytes := traffic(px)
	hits := time.Now()
	var local []float64
	for i, k := range order[:ks[len(ks)-1]] {
		if _, err := replay.Hit(cache, k, ""); err != nil {
			return r, nil, fmt.Errorf("%s: %w", r.Name, err)
		}
		if slices.Contains(ks, i+1) {
			r.At = append(r.At, time.Since(start).Seconds())
			r.Reqs, r.Bytes = append(r.Reqs, reqs), append(r.Bytes, bytes)
			local = append(local, time.Since(hits).Seconds())
		}
	}
	return r, local, nil
}

// pullServing is the plain pull: skopeo copy of the image to a dir, then
// tar -xzf of its layer. Its times add the local hits measured on the
// cargohold -e dir (the tar's group files keep the image's relative child
// paths, which Triton would not follow; cargohold -e rewrites them).
func pullServing(ctx context.Context, ref, dir string, px *proxy.Proxy, local []float64, ks []int) (serving, error) {
	r := serving{Name: "skopeo copy + tar -xzf"}
	blobs, dest := filepath.Join(dir, "blobs"), filepath.Join(dir, "cache")
	if err := os.MkdirAll(dest, 0o755); err != nil {
		return r, err
	}
	px.Reset()
	start := time.Now()
	if _, err := registry.RunSkopeo(ctx, "copy", "--src-tls-verify=false", "docker://"+ref, "dir:"+blobs); err != nil {
		return r, err
	}
	var m struct {
		Layers []struct {
			Digest string `json:"digest"`
		} `json:"layers"`
	}
	b, err := os.ReadFile(filepath.Join(blobs, "manifest.json"))
	if err == nil {
		err = json.Unmarshal(b, &m)
	}
	if err != nil || len(m.Layers) != 1 {
		return r, fmt.Errorf("skopeo dir manifest: %v (%d layers)", err, len(m.Layers))
	}
	layer := filepath.Join(blobs, strings.TrimPrefix(m.Layers[0].Digest, "sha256:"))
	if out, err := exec.CommandContext(ctx, "tar", "-xzf", layer, "-C", dest).CombinedOutput(); err != nil {
		return r, fmt.Errorf("tar -xzf: %w\n%s", err, out)
	}
	r.Setup = time.Since(start).Seconds()
	reqs, bytes := traffic(px)
	for i := range ks {
		r.At = append(r.At, r.Setup+local[i])
		r.Reqs, r.Bytes = append(r.Reqs, reqs), append(r.Bytes, bytes)
	}
	return r, nil
}

// coldLookups mounts afresh with --prefetch none, waits until warm is
// served (the mount and its index are up), then times hits of keys, all
// cold: in this process one by one, or in procs replay processes at once.
func coldLookups(ctx context.Context, bin, ref, dir string, px *proxy.Proxy, warm string, keys []string, procs int) (float64, error) {
	p, err := startFS(bin, ref, dir, "--prefetch", "none")
	if err != nil {
		return 0, err
	}
	defer p.stop()
	if _, err := p.firstHit(warm); err != nil {
		return 0, fmt.Errorf("cold lookups: first hit: %w", err)
	}
	start := time.Now()
	if procs > 1 {
		var failed string
		sum, err := replay.Run(ctx, replay.Options{Mode: replay.ModeHit, Root: p.mnt, Keys: keys, Procs: procs, Split: true},
			func(res replay.Result) {
				if res.Error != "" && failed == "" {
					failed = res.Error
				}
			})
		if err == nil && !sum.OK() {
			err = fmt.Errorf("%d of %d replays failed, first: %s", sum.Errors, sum.Replays, failed)
		}
		if err != nil {
			return 0, fmt.Errorf("cold lookups, %d procs: %w", procs, err)
		}
	} else {
		for _, k := range keys {
			if _, err := replay.Hit(p.mnt, k, ""); err != nil {
				return 0, fmt.Errorf("cold lookups: %w", err)
			}
		}
	}
	took := time.Since(start).Seconds()
	return took, p.stop()
}
