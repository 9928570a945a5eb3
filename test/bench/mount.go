package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"

	"cargohold/internal/cli"
	"cargohold/test/proxy"
	"cargohold/test/replay"
)

// mountOptions is everything the mount mode needs.
type mountOptions struct {
	imageOptions
	hits  int
	procs int
	reps  int
	work  string
	keep  bool
}

func mountMain(args []string) {
	var o mountOptions
	fl := pflag.NewFlagSet("bench mount", pflag.ContinueOnError)
	fl.IntVarP(&o.kernels, "kernels", "n", 2000, "kernel dirs in the image (all for "+benchGPU+")")
	fl.IntVar(&o.hits, "hits", 50, "kernels to hit (spread over the image)")
	fl.IntVar(&o.procs, "procs", 8, "replay processes for the parallel pass")
	fl.IntVar(&o.reps, "reps", 200, "repetitions of the warm hit, on the mount and on the extracted dir")
	fl.Float64Var(&o.scale, "scale", 1, "file size multiplier of the generated cache (1 = realistic)")
	fl.Int64Var(&o.seed, "seed", 1, "generator seed")
	fl.DurationVar(&o.latency, "latency", 20*time.Millisecond, "latency the proxy adds to every request")
	fl.StringVar(&o.bin, "bin", "", "dir holding cargohold and cargohold-fs (default: go build them into the work dir)")
	fl.StringVar(&o.data, "data", "", "dir keeping the generated cache and the registry storage across runs\n(default $TMPDIR/cargohold-bench-mount-n<kernels>-seed<seed>-scale<scale>)")
	fl.BoolVar(&o.fresh, "fresh", false, "regenerate the cache and push the image again")
	fl.StringVar(&o.work, "work", "", "work dir (default a temp dir, removed at the end)")
	fl.BoolVar(&o.keep, "keep", false, "keep the work dir")
	check := func() error {
		if o.hits < 1 || o.hits > o.kernels || o.reps < 1 {
			return fmt.Errorf("want 1 <= --hits <= --kernels and --reps >= 1")
		}
		return nil
	}
	cmdMain(fl, args, check, func(ctx context.Context) error {
		o.defaultData()
		return runMount(ctx, o, os.Stdout)
	})
}

// pass is one way of getting kernels readable, timed from its start: the
// cargohold-fs process start, or the cargohold -e process start.
type pass struct {
	Name       string  `json:"name"`
	First      float64 `json:"first_s"` // first kernel readable
	FirstReqs  int     `json:"first_requests"`
	FirstBytes int64   `json:"first_bytes"`
	All        float64 `json:"all_s"` // every sampled kernel read
	AllReqs    int     `json:"all_requests"`
	AllBytes   int64   `json:"all_bytes"`
	Extract    float64 `json:"extract_s,omitempty"` // cargohold -e alone
	Retries    int     `json:"first_retries,omitempty"`
}

// traffic waits for the proxy to log every request it is still answering
// and returns its totals.
func traffic(px *proxy.Proxy) (int, int64) {
	for deadline := time.Now().Add(time.Second); px.Pending() > 0 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	return px.Count(nil), px.BytesSent()
}

func runMount(ctx context.Context, o mountOptions, out io.Writer) error {
	work, err := workDir(o.work, "cargohold-bench-mount-")
	if err != nil {
		return err
	}
	if !o.keep {
		defer os.RemoveAll(work)
	}
	say := func(format string, args ...any) { fmt.Fprintf(out, format+"\n", args...) }

	start := time.Now()
	sv, err := serve(ctx, o.imageOptions, work)
	if err != nil {
		return err
	}
	defer sv.close()
	bin, src, keys, info, reg, px, ref := sv.bin, sv.src, sv.keys, sv.info, sv.reg, sv.px, sv.ref
	say("image:    %d KEY dirs (%s), %d files, %s; eStargz layer %s (cache and image ready in %s, kept in %s)",
		len(keys), benchGPU, info.Files, cli.Bytes(info.Size), cli.Bytes(info.Compressed), since(start), o.data)
	sample := spread(keys, o.hits, 0)
	say("registry: docker-registry %s behind a proxy adding %s per request; %d of %d kernels hit", reg.Addr, o.latency,
		len(sample), len(keys))

	// Mount, sequential: start -> first kernel -> the rest one by one. It
	// stays up for the warm hits.
	seq, mnt, err := mountPass(ctx, bin, ref, filepath.Join(work, "seq"), px, sample, 1)
	if mnt != nil {
		defer mnt.stop()
	}
	if err != nil {
		return err
	}
	// Mount, parallel: a fresh state, the rest in replay processes.
	par, pm, err := mountPass(ctx, bin, ref, filepath.Join(work, "par"), px, sample, o.procs)
	if pm != nil {
		if serr := pm.stop(); err == nil {
			err = serr
		}
	}
	if err != nil {
		return err
	}
	ext, dir, err := extractPass(ctx, bin, ref, filepath.Join(work, "extract"), px, sample)
	if err != nil {
		return err
	}

	// Warm hits, alternating so both see the same machine state.
	var onMount, onDir []time.Duration
	for range o.reps {
		for _, w := range []struct {
			root string
			ds   *[]time.Duration
		}{{mnt.mnt, &onMount}, {dir, &onDir}} {
			t := time.Now()
			if _, err := replay.Hit(w.root, sample[0], ""); err != nil {
				return fmt.Errorf("warm hit: %w", err)
			}
			*w.ds = append(*w.ds, time.Since(t))
		}
	}
	// Every kernel read the same bytes as the source, on both (untimed).
	for _, k := range sample {
		for _, root := range []string{mnt.mnt, dir} {
			if _, err := replay.Hit(root, k, src); err != nil {
				return fmt.Errorf("check: %w", err)
			}
		}
	}
	st, err := mnt.statusAfter(time.Now())
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	if err := mnt.stop(); err != nil {
		return err
	}

	say("")
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "\tstart -> first kernel\t\t\tstart -> %d kernels\t\t\t\n", len(sample))
	fmt.Fprintf(tw, "\ttime\trequests\tbytes\ttime\trequests\tbytes\t\n")
	for _, p := range []pass{seq, par, ext} {
		fmt.Fprintf(tw, "%s\t%.3fs\t%d\t%s\t%.3fs\t%d\t%s\t\n", p.Name, p.First, p.FirstReqs, cli.Bytes(p.FirstBytes),
			p.All, p.AllReqs, cli.Bytes(p.AllBytes))
	}
	tw.Flush()
	say("(cargohold -e alone: %.3fs; first-hit retries: mount %d, %d)", ext.Extract, seq.Retries, par.Retries)
	say("")
	mq := func(q float64) time.Duration { return quantile(onMount, q).Round(time.Microsecond) }
	dq := func(q float64) time.Duration { return quantile(onDir, q).Round(time.Microsecond) }
	say("warm hit of one fetched kernel (%d reps, replay.Hit in process):", o.reps)
	say("  cargohold-fs mount:  p50 %s, p90 %s", mq(0.5), mq(0.9))
	say("  extracted local dir: p50 %s, p90 %s (mount/local at p50: %.1fx)", dq(0.5), dq(0.9),
		float64(mq(0.5))/float64(dq(0.5)))
	say("  mount status after: %d hits, %d fetches, %s fetched, %d errors", st.Hits, st.Fetches, cli.Bytes(st.Bytes), st.Errors)

	us := func(d time.Duration) float64 { return float64(d) / 1e3 }
	b, _ := json.Marshal(map[string]any{
		"kernels": len(keys), "hits": len(sample), "procs": o.procs, "latency_ms": o.latency.Seconds() * 1e3,
		"scale": o.scale, "image_compressed_bytes": info.Compressed, "cache_bytes": info.Size,
		"passes": []pass{seq, par, ext}, "warm_reps": o.reps,
		"warm_mount_p50_us": us(mq(0.5)), "warm_mount_p90_us": us(mq(0.9)),
		"warm_local_p50_us": us(dq(0.5)), "warm_local_p90_us": us(dq(0.9)),
	})
	say("%s", b)
	return nil
}

// mountPass starts cargohold-fs with a fresh state in dir, hits keys[0]
// until it is readable, then the rest, in one process or procs replay
// processes. The mount is returned running (nil if it never started).
func mountPass(ctx context.Context, bin, ref, dir string, px *proxy.Proxy, keys []string, procs int) (pass, *fsProc, error) {
	r := pass{Name: "cargohold-fs, sequential"}
	if procs > 1 {
		r.Name = fmt.Sprintf("cargohold-fs, %d procs", procs)
	}
	px.Reset()
	p, err := startFS(bin, ref, dir)
	if err != nil {
		return r, nil, err
	}
	r.Retries, err = p.firstHit(keys[0])
	first := time.Since(p.start)
	if err != nil {
		return r, p, fmt.Errorf("%s: first hit: %w\n%s", r.Name, err, p.logTail())
	}
	r.First = first.Seconds()
	r.FirstReqs, r.FirstBytes = traffic(px)

	start := time.Now()
	if procs > 1 {
		var failed string
		sum, err := replay.Run(ctx, replay.Options{Mode: replay.ModeHit, Root: p.mnt, Keys: keys[1:], Procs: procs, Split: true},
			func(res replay.Result) {
				if res.Error != "" && failed == "" {
					failed = res.Error
				}
			})
		if err == nil && !sum.OK() {
			err = fmt.Errorf("%d of %d replays failed, first: %s", sum.Errors, sum.Replays, failed)
		}
		if err != nil {
			return r, p, fmt.Errorf("%s: %w\n%s", r.Name, err, p.logTail())
		}
	} else {
		for _, k := range keys[1:] {
			if _, err := replay.Hit(p.mnt, k, ""); err != nil {
				return r, p, fmt.Errorf("%s: %w\n%s", r.Name, err, p.logTail())
			}
		}
	}
	r.All = (first + time.Since(start)).Seconds()
	r.AllReqs, r.AllBytes = traffic(px)
	return r, p, nil
}

// extractPass runs cargohold -e of the whole image into dir/cache with an
// empty local store, so it pulls, then hits keys there one by one.
func extractPass(ctx context.Context, bin, ref, dir string, px *proxy.Proxy, keys []string) (pass, string, error) {
	r := pass{Name: "cargohold -e, then hits"}
	cache := filepath.Join(dir, "cache")
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "cargohold"), "-e", "-i", ref, "-d", cache, "--plain-http",
		"--gpu", benchGPU, "-l", "warning")
	cmd.Env = append(os.Environ(), "CARGOHOLD_STORE="+filepath.Join(dir, "store"))
	px.Reset()
	start := time.Now()
	b, err := cmd.CombinedOutput()
	extract := time.Since(start)
	if err != nil {
		return r, "", fmt.Errorf("cargohold -e: %w\n%s", err, b)
	}
	r.Extract = extract.Seconds()
	for i, k := range keys {
		if _, err := replay.Hit(cache, k, ""); err != nil {
			return r, "", fmt.Errorf("%s: %w", r.Name, err)
		}
		if i == 0 {
			r.First = time.Since(start).Seconds()
		}
	}
	r.All = time.Since(start).Seconds()
	r.AllReqs, r.AllBytes = traffic(px)
	r.FirstReqs, r.FirstBytes = r.AllReqs, r.AllBytes
	return r, cache, nil
}
