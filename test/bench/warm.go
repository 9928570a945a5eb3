package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/spf13/pflag"

	"cargohold/gpu"
	"cargohold/image"
	"cargohold/internal/cli"
	"cargohold/resolver"
	"cargohold/test/registry"
	"cargohold/test/replay"
	"cargohold/triton"
	"cargohold/triton/gen"
)

// warmOptions is everything the warm mode needs.
type warmOptions struct {
	kernels int
	reps    int
	images  int
	keys    int
	idle    time.Duration
	hits    int
	parts   []string
	bin     string
	data    string
	work    string
	keep    bool
}

// warmParts are the measurements of the warm mode, in the order they run.
var warmParts = []string{"pack", "extract", "memory"}

func warmMain(args []string) {
	var o warmOptions
	fl := pflag.NewFlagSet("bench warm", pflag.ContinueOnError)
	fl.IntVarP(&o.kernels, "kernels", "n", 2000, "pack/extract: kernels in the generated cache (realistic sizes)")
	fl.IntVar(&o.reps, "reps", 3, "pack/extract: runs of each command, alternating; medians are reported")
	fl.IntVar(&o.images, "images", 20, "memory: images in the registry")
	fl.IntVar(&o.keys, "keys", 2000, "memory: KEY dirs per image")
	fl.DurationVar(&o.idle, "idle", 10*time.Second, "memory: how long the idle mount's CPU time is measured")
	fl.IntVar(&o.hits, "hits", 200, "memory: warm hits of one fetched kernel, on the mount and on a plain dir (0: none)")
	fl.StringSliceVar(&o.parts, "only", warmParts, "parts to run: "+strings.Join(warmParts, ","))
	fl.StringVar(&o.bin, "bin", "", "dir holding cargohold and cargohold-fs (default: go build them into the work dir)")
	fl.StringVar(&o.data, "data", "", "dir keeping the generated caches and the registry storage across runs\n(default $TMPDIR/cargohold-bench-warm)")
	fl.StringVar(&o.work, "work", "", "work dir (default a temp dir, removed at the end)")
	fl.BoolVar(&o.keep, "keep", false, "keep the work dir")
	check := func() error {
		for _, p := range o.parts {
			if !slices.Contains(warmParts, p) {
				return fmt.Errorf("--only: unknown part %q", p)
			}
		}
		if o.reps < 1 || o.kernels < 1 || o.images < 1 || o.keys < 2 {
			return fmt.Errorf("want --reps, --kernels, --images >= 1 and --keys >= 2")
		}
		return nil
	}
	cmdMain(fl, args, check, func(ctx context.Context) error {
		if o.data == "" {
			o.data = filepath.Join(os.TempDir(), "cargohold-bench-warm")
		}
		return runWarm(ctx, o, os.Stdout)
	})
}

// figure is one row of the final table: a measured value beside its
// anchor.
type figure struct {
	What   string `json:"what"`
	Value  string `json:"value"`
	Anchor string `json:"anchor"`
	Ratio  string `json:"ratio,omitempty"`
	Target string `json:"target"`
}

func runWarm(ctx context.Context, o warmOptions, out io.Writer) error {
	work, err := workDir(o.work, "cargohold-bench-warm-")
	if err != nil {
		return err
	}
	if !o.keep {
		defer os.RemoveAll(work)
	}
	say := func(format string, args ...any) { fmt.Fprintf(out, format+"\n", args...) }
	bin, err := binaries(ctx, o.bin, work)
	if err != nil {
		return err
	}
	say("machine:  %d CPUs (GOMAXPROCS %d); work dir %s", runtime.NumCPU(), runtime.GOMAXPROCS(0), work)
	var figs []figure
	var layout string // the image pack made, for extract
	if slices.Contains(o.parts, "pack") || slices.Contains(o.parts, "extract") {
		src, err := warmCache(o)
		if err != nil {
			return err
		}
		pf, l, err := benchPack(ctx, bin, src, work, o.reps, say)
		if err != nil {
			return err
		}
		layout = l
		if slices.Contains(o.parts, "pack") {
			figs = append(figs, pf...)
		}
		if slices.Contains(o.parts, "extract") {
			ef, err := benchExtract(ctx, bin, src, layout, work, o.reps, say)
			if err != nil {
				return err
			}
			figs = append(figs, ef...)
		}
	}
	if slices.Contains(o.parts, "memory") {
		mf, err := benchMemory(ctx, bin, o, work, say)
		if err != nil {
			return err
		}
		figs = append(figs, mf...)
	}

	say("")
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "figure\tvalue\tanchor\tratio\ttarget")
	for _, f := range figs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", f.What, f.Value, f.Anchor, f.Ratio, f.Target)
	}
	tw.Flush()
	b, _ := json.Marshal(figs)
	say("%s", b)
	return nil
}

// warmCache generates the pack/extract cache once per data dir.
func warmCache(o warmOptions) (string, error) {
	data := filepath.Join(o.data, fmt.Sprintf("pack-n%d", o.kernels))
	src, _, err := source(data, imageOptions{kernels: o.kernels, seed: 1, scale: 1})
	return src, err
}

// run times one command; its stdout comes back.
func timed(ctx context.Context, env []string, name string, args ...string) (time.Duration, string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	d := time.Since(start)
	if err != nil {
		return d, "", fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	return d, stdout.String(), nil
}

func mbps(bytes int64, d time.Duration) float64 { return float64(bytes) / 1e6 / d.Seconds() }

// treeSize is the bytes and files of the regular files under dir.
func treeSize(dir string) (int64, int, error) {
	var size int64
	var files int
	err := filepath.WalkDir(dir, func(_ string, de fs.DirEntry, err error) error {
		if err != nil || !de.Type().IsRegular() {
			return err
		}
		fi, err := de.Info()
		if err != nil {
			return err
		}
		size += fi.Size()
		files++
		return nil
	})
	return size, files, err
}

// benchPack packs src with cargohold -c (into an OCI layout, the one-pass
// path) and with tar -czf (and tar -I pigz when pigz is installed),
// alternating, reps times each; then once with GOMAXPROCS=1, whose digest
// must be the one every other run gave. It returns the figures and the
// layout of the first run.
func benchPack(ctx context.Context, bin, src, work string, reps int, say func(string, ...any)) ([]figure, string, error) {
	size, files, err := treeSize(src)
	if err != nil {
		return nil, "", err
	}
	say("pack:     %s, %d files; cargohold -c into an OCI layout vs tar -czf to a file, %d runs each", cli.Bytes(size), files, reps)
	pigz, _ := exec.LookPath("pigz")
	var ours, tgz, pz []time.Duration
	digests := map[string]bool{}
	layout := ""
	for r := range reps {
		// The same layout name each time: it is the image's title label.
		dir := filepath.Join(work, fmt.Sprintf("pack-%d", r), "image")
		d, stdout, err := timed(ctx, nil, filepath.Join(bin, "cargohold"), "-c", "-d", src, "-i", "oci:"+dir+":v1", "-l", "warning")
		if err != nil {
			return nil, "", err
		}
		ours = append(ours, d)
		digests[digestOf(stdout)] = true
		if layout == "" {
			layout = dir
		} else {
			os.RemoveAll(dir)
		}
		tarball := filepath.Join(work, fmt.Sprintf("pack-%d.tgz", r))
		if d, _, err = timed(ctx, nil, "tar", "-czf", tarball, "-C", src, "."); err != nil {
			return nil, "", err
		}
		tgz = append(tgz, d)
		os.Remove(tarball)
		if pigz != "" {
			if d, _, err = timed(ctx, nil, "tar", "-I", "pigz", "-cf", tarball, "-C", src, "."); err != nil {
				return nil, "", err
			}
			pz = append(pz, d)
			os.Remove(tarball)
		}
	}
	one := filepath.Join(work, "pack-gomaxprocs1", "image")
	d1, stdout, err := timed(ctx, []string{"GOMAXPROCS=1"}, filepath.Join(bin, "cargohold"), "-c", "-d", src, "-i", "oci:"+one+":v1", "-l", "warning")
	if err != nil {
		return nil, "", err
	}
	os.RemoveAll(one)
	d1Digest := digestOf(stdout)
	same := len(digests) == 1 && digests[d1Digest]
	nDigest := slices.Sorted(maps.Keys(digests))
	say("  cargohold -c:        median %s (%.0f MB/s), runs %v", median(ours).Round(time.Millisecond), mbps(size, median(ours)), rounded(ours))
	say("  cargohold -c, GOMAXPROCS=1: %s (%.0f MB/s)", d1.Round(time.Millisecond), mbps(size, d1))
	say("  tar -czf:            median %s (%.0f MB/s), runs %v", median(tgz).Round(time.Millisecond), mbps(size, median(tgz)), rounded(tgz))
	if pigz != "" {
		say("  tar -I pigz:         median %s (%.0f MB/s), runs %v", median(pz).Round(time.Millisecond), mbps(size, median(pz)), rounded(pz))
	}
	say("  digest: %d cores %s; GOMAXPROCS=1 %s: %s", runtime.NumCPU(), strings.Join(nDigest, " "), d1Digest, sameWord(same))
	figs := []figure{{
		What:   "pack: cargohold -c throughput",
		Value:  fmt.Sprintf("%.0f MB/s", mbps(size, median(ours))),
		Anchor: fmt.Sprintf("tar -czf %.0f MB/s", mbps(size, median(tgz))),
		Ratio:  fmt.Sprintf("%.2fx", median(tgz).Seconds()/median(ours).Seconds()),
		Target: ">= 1x tar -czf",
	}}
	if pigz != "" {
		figs = append(figs, figure{What: "pack: vs pigz (info)", Value: fmt.Sprintf("%.0f MB/s", mbps(size, median(ours))),
			Anchor: fmt.Sprintf("tar -I pigz %.0f MB/s", mbps(size, median(pz))),
			Ratio:  fmt.Sprintf("%.2fx", median(pz).Seconds()/median(ours).Seconds()), Target: "-"})
	}
	figs = append(figs, figure{What: "pack: digest, GOMAXPROCS=1 vs N", Value: sameWord(same),
		Anchor: fmt.Sprintf("%d cores", runtime.NumCPU()), Target: "same"})
	if !same {
		return figs, layout, fmt.Errorf("pack: digests differ: %v vs GOMAXPROCS=1 %s", nDigest, d1Digest)
	}
	return figs, layout, nil
}

func sameWord(same bool) string {
	if same {
		return "same"
	}
	return "DIFFERENT"
}

// digestOf is the digest cargohold -c prints (REF@DIGEST).
func digestOf(stdout string) string {
	s := strings.TrimSpace(stdout)
	return s[strings.LastIndex(s, "@")+1:]
}

func rounded(ds []time.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d.Round(time.Millisecond)
	}
	return out
}

// benchExtract unpacks the layout's image with cargohold -e and its layer
// blob with tar -xzf, alternating, into fresh dirs.
func benchExtract(ctx context.Context, bin, src, layout, work string, reps int, say func(string, ...any)) ([]figure, error) {
	blob, err := largestBlob(layout)
	if err != nil {
		return nil, err
	}
	size, files, err := treeSize(src)
	if err != nil {
		return nil, err
	}
	say("extract:  cargohold -e of that image vs tar -xzf of its layer blob, %d runs each", reps)
	var ours, tgz []time.Duration
	for r := range reps {
		dir := filepath.Join(work, fmt.Sprintf("extract-%d", r))
		d, _, err := timed(ctx, []string{"CARGOHOLD_STORE=" + filepath.Join(work, "store")}, filepath.Join(bin, "cargohold"),
			"-e", "-i", "oci:"+layout+":v1", "-d", dir, "--gpu", benchGPU, "-l", "warning")
		if err != nil {
			return nil, err
		}
		ours = append(ours, d)
		if r == 0 {
			if got, n, err := treeSize(dir); err != nil || n != files {
				return nil, fmt.Errorf("cargohold -e wrote %d files (%s), the cache has %d: %v", n, cli.Bytes(got), files, err)
			}
		}
		tdir := filepath.Join(work, fmt.Sprintf("tar-%d", r))
		if err := os.MkdirAll(tdir, 0o755); err != nil {
			return nil, err
		}
		if d, _, err = timed(ctx, nil, "tar", "-xzf", blob, "-C", tdir); err != nil {
			return nil, err
		}
		tgz = append(tgz, d)
	}
	say("  cargohold -e:        median %s (%.0f MB/s), runs %v", median(ours).Round(time.Millisecond), mbps(size, median(ours)), rounded(ours))
	say("  tar -xzf:            median %s (%.0f MB/s), runs %v", median(tgz).Round(time.Millisecond), mbps(size, median(tgz)), rounded(tgz))
	return []figure{{
		What:   "extract: cargohold -e time",
		Value:  median(ours).Round(time.Millisecond).String(),
		Anchor: "tar -xzf " + median(tgz).Round(time.Millisecond).String(),
		Ratio:  fmt.Sprintf("%.2fx", median(ours).Seconds()/median(tgz).Seconds()),
		Target: "<= 1x tar -xzf",
	}}, nil
}

// largestBlob is the layer blob of a one-image layout.
func largestBlob(layout string) (string, error) {
	des, err := os.ReadDir(filepath.Join(layout, "blobs", "sha256"))
	if err != nil {
		return "", err
	}
	best, bestSize := "", int64(-1)
	for _, de := range des {
		if fi, err := de.Info(); err == nil && fi.Size() > bestSize {
			best, bestSize = filepath.Join(layout, "blobs", "sha256", de.Name()), fi.Size()
		}
	}
	if best == "" {
		return "", fmt.Errorf("no blobs in %s", layout)
	}
	return best, nil
}

// memRepo is the repository of the memory part's images.
const memRepo = "bench/many"

// memImages generates and pushes images x keys KEY dirs (1/200 of them
// launchers, tiny files) into a registry storage kept in the data dir;
// a run that finds its marker pushes nothing. It returns the registry.
func memImages(ctx context.Context, o warmOptions, say func(string, ...any)) (*registry.Registry, error) {
	dir := filepath.Join(o.data, fmt.Sprintf("memory-%dx%d", o.images, o.keys))
	marker := filepath.Join(dir, "done")
	_, statErr := os.Stat(marker)
	if statErr != nil {
		if err := os.RemoveAll(dir); err != nil {
			return nil, err
		}
	}
	reg, err := registry.StartProcess(filepath.Join(dir, "registry"))
	if err != nil {
		return nil, err
	}
	if statErr == nil {
		return reg, nil
	}
	start := time.Now()
	errs := make([]error, o.images)
	sem := make(chan struct{}, runtime.GOMAXPROCS(0))
	var wg sync.WaitGroup
	for i := range o.images {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			errs[i] = memImage(ctx, o, reg, dir, i)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		reg.Close()
		return nil, err
	}
	if err := os.WriteFile(marker, nil, 0o644); err != nil {
		reg.Close()
		return nil, err
	}
	say("memory:   generated and pushed %d images x %d KEYs in %s (kept in %s)", o.images, o.keys, since(start), dir)
	return reg, nil
}

func memImage(ctx context.Context, o warmOptions, reg *registry.Registry, dir string, i int) error {
	cache := filepath.Join(dir, fmt.Sprintf("cache-%02d", i))
	launchers := max(1, o.keys/200)
	t, _ := gpu.ParseTarget(benchGPU)
	if _, err := gen.Generate(cache, gen.Options{Kernels: o.keys - launchers, Launchers: launchers,
		Seed: int64(1000 + i), Scale: 0.001, Targets: []gpu.Target{t}}); err != nil {
		return err
	}
	p, err := image.Prepare(ctx, cache, "many")
	if err != nil {
		return err
	}
	defer p.Close()
	_, err = resolver.Push(ctx, reg.Ref(fmt.Sprintf("%s:img-%02d", memRepo, i)), p.Image, resolver.Options{Keychain: authn.NewMultiKeychain()})
	if i > 0 {
		os.RemoveAll(cache) // image 0's cache stays: the plain dir of the warm hits
	}
	return err
}

// procMem is a process's resident memory now and at its peak.
type procMem struct{ rss, hwm int64 }

func readProcMem(pid int) (procMem, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return procMem{}, err
	}
	var m procMem
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			m.rss = kb << 10
		case "VmHWM:":
			m.hwm = kb << 10
		}
	}
	return m, nil
}

// cpuTicks is a process's user+system time in clock ticks
// (/proc/PID/stat fields 14 and 15).
func cpuTicks(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:]) // fields from 3 on
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, s)
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return u + st, nil
}

// clockTick is USER_HZ, 100 on Linux wherever Go runs.
const clockTick = 10 * time.Millisecond

// onCPU is the time every thread of a process has run, in nanoseconds
// (the first field of /proc/PID/task/*/schedstat): utime+stime are
// sampled at clock ticks, this is not.
func onCPU(pid int) (time.Duration, error) {
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	if err != nil || len(tasks) == 0 {
		return 0, fmt.Errorf("schedstat of %d: %v", pid, err)
	}
	var sum time.Duration
	for _, p := range tasks {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // a thread that just ended
		}
		if f := strings.Fields(string(b)); len(f) > 0 {
			ns, _ := strconv.ParseInt(f[0], 10, 64)
			sum += time.Duration(ns)
		}
	}
	return sum, nil
}

// memStatus is the part of status.json the memory part waits on.
type memStatus struct {
	PID     int  `json:"pid"`
	Ready   bool `json:"index_ready"`
	Keys    int  `json:"indexed_keys"`
	Catalog struct {
		Refreshes int64 `json:"refreshes"`
	} `json:"catalog"`
}

// memPhase is one cargohold-fs run measured: until its catalog holds every
// KEY and a refresh has completed, then idle.
type memPhase struct {
	name      string
	ready     time.Duration
	peak, rss int64
	idleCPU   time.Duration // utime+stime, in clock ticks
	idleRun   time.Duration // schedstat
}

// measureFS waits for p's catalog to hold want KEYs after a refresh, lets
// it settle, then reads its RSS and its CPU time over idle.
func measureFS(ctx context.Context, p *fsProc, name string, want int, idle time.Duration) (memPhase, error) {
	ph := memPhase{name: name}
	pid := p.cmd.Process.Pid
	deadline := time.Now().Add(10 * time.Minute)
	for {
		var s memStatus
		b, err := os.ReadFile(filepath.Join(p.state, "status.json"))
		// This process's status (a restart finds the last one's).
		if err == nil && json.Unmarshal(b, &s) == nil && s.PID == pid && s.Ready && s.Keys >= want && s.Catalog.Refreshes > 0 {
			break
		}
		select {
		case <-p.exited:
			return ph, fmt.Errorf("cargohold-fs exited: %v\n%s", p.err, p.logTail())
		case <-ctx.Done():
			return ph, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return ph, fmt.Errorf("%s: catalog not complete within 10m\n%s", name, p.logTail())
		}
	}
	ph.ready = time.Since(p.start)
	// Settle: the status writer goes idle after 5 quiet seconds.
	time.Sleep(7 * time.Second)
	m, err := readProcMem(pid)
	if err != nil {
		return ph, err
	}
	ph.rss, ph.peak = m.rss, m.hwm
	t0, err := cpuTicks(pid)
	if err != nil {
		return ph, err
	}
	r0, err := onCPU(pid)
	if err != nil {
		return ph, err
	}
	select {
	case <-time.After(idle):
	case <-ctx.Done():
		return ph, ctx.Err()
	}
	t1, err := cpuTicks(pid)
	if err != nil {
		return ph, err
	}
	r1, err := onCPU(pid)
	if err != nil {
		return ph, err
	}
	ph.idleCPU = time.Duration(t1-t0) * clockTick
	ph.idleRun = max(0, r1-r0)
	if m, err := readProcMem(pid); err == nil {
		ph.peak = max(ph.peak, m.hwm)
	}
	return ph, nil
}

// benchMemory mounts cargohold-fs over images x keys KEYs: a fresh state
// (the catalog built from the registry), then a restart on that state (the
// catalog loaded from disk, then refreshed); RSS and idle CPU of each.
// Then, on the restarted mount, the warm hit of one fetched kernel against
// the same kernel extracted into a plain dir.
func benchMemory(ctx context.Context, bin string, o warmOptions, work string, say func(string, ...any)) ([]figure, error) {
	reg, err := memImages(ctx, o, say)
	if err != nil {
		return nil, err
	}
	defer reg.Close()
	want := o.images * o.keys
	ref := reg.Addr + "/" + memRepo + ":*"
	say("memory:   cargohold-fs -i %s (%d images x %d KEYs); RSS and VmHWM from /proc, idle CPU over %s", ref, o.images, o.keys, o.idle)
	dir := filepath.Join(work, "memory")
	var phases []memPhase
	var warm []figure
	for i, name := range []string{"fresh build", "restart"} {
		// The restart serves the warm hits: its metrics count their FUSE
		// requests (an idle listener costs no CPU).
		var args []string
		addr := ""
		if i == 1 && o.hits > 0 {
			if addr, err = freeAddr(); err != nil {
				return nil, err
			}
			args = []string{"--metrics-addr", addr}
		}
		p, err := startFS(bin, ref, dir, args...)
		if err != nil {
			return nil, err
		}
		ph, err := measureFS(ctx, p, name, want, o.idle)
		if err == nil && addr != "" {
			m := &hitMount{bin: bin, p: p, metrics: addr}
			warm, err = warmHits(ctx, bin, m, reg.Ref(memRepo+":img-00"), filepath.Join(o.data, fmt.Sprintf("memory-%dx%d", o.images, o.keys), "cache-00"), work, o.hits, say)
		}
		if serr := p.stop(); err == nil {
			err = serr
		}
		if err != nil {
			return nil, err
		}
		phases = append(phases, ph)
		say("  %-12s catalog complete %.1fs after start; RSS %s (%.0f B/KEY), peak %s (%.0f B/KEY); idle CPU over %s: %s utime+stime, %s on CPU (schedstat)",
			name+":", ph.ready.Seconds(), cli.Bytes(ph.rss), float64(ph.rss)/float64(want), cli.Bytes(ph.peak),
			float64(ph.peak)/float64(want), o.idle, ph.idleCPU, ph.idleRun.Round(time.Microsecond))
	}
	var figs []figure
	for _, ph := range phases {
		figs = append(figs,
			figure{What: "memory: RSS per KEY idle, " + ph.name, Value: fmt.Sprintf("%.0f B", float64(ph.rss)/float64(want)),
				Anchor: fmt.Sprintf("%d KEYs, RSS %s", want, cli.Bytes(ph.rss)), Ratio: fmt.Sprintf("%.2f KiB", float64(ph.rss)/float64(want)/1024), Target: "<= 1.0 KiB"},
			figure{What: "memory: RSS per KEY peak, " + ph.name, Value: fmt.Sprintf("%.0f B", float64(ph.peak)/float64(want)),
				Anchor: fmt.Sprintf("%d KEYs, VmHWM %s", want, cli.Bytes(ph.peak)), Ratio: fmt.Sprintf("%.2f KiB", float64(ph.peak)/float64(want)/1024), Target: "<= 1.0 KiB"},
			figure{What: "idle CPU (utime+stime), " + ph.name, Value: ph.idleCPU.String(), Anchor: fmt.Sprintf("%s idle, %d images", o.idle, o.images),
				Ratio: fmt.Sprintf("%.2f%%", 100*ph.idleCPU.Seconds()/o.idle.Seconds()), Target: "not measurable (0 ticks)"},
			figure{What: "idle CPU (schedstat), " + ph.name, Value: ph.idleRun.Round(time.Microsecond).String(), Anchor: fmt.Sprintf("%s idle, %d images", o.idle, o.images),
				Ratio: fmt.Sprintf("%.3f%%", 100*ph.idleRun.Seconds()/o.idle.Seconds()), Target: "< 10ms (one tick)"})
	}
	return append(figs, warm...), nil
}

// warmHits fetches one kernel through the mount, extracts its image into a
// plain dir, and times warm hits of it on both: Go's replay.Hit and
// CPython running Triton's hit sequence in a loop, and the FUSE requests a
// CPython hit costs on the mount (m's metrics).
func warmHits(ctx context.Context, bin string, m *hitMount, imgRef, src, work string, reps int, say func(string, ...any)) ([]figure, error) {
	p := m.p
	entries, _, err := triton.Scan(src)
	if err != nil {
		return nil, err
	}
	var key, name string
	for _, e := range entries {
		if e.Kind == triton.KindKernel {
			key, name = e.Key, e.Kernels[0].Name
			break
		}
	}
	if key == "" {
		return nil, fmt.Errorf("no kernel in %s", src)
	}
	if _, err := p.firstHit(key); err != nil {
		return nil, fmt.Errorf("warm hit: first hit: %w", err)
	}
	plain := filepath.Join(work, "warm-plain")
	if _, _, err := timed(ctx, []string{"CARGOHOLD_STORE=" + filepath.Join(work, "warm-store")}, filepath.Join(bin, "cargohold"),
		"-e", "-i", imgRef, "-d", plain, "--plain-http", "--gpu", benchGPU, "-l", "warning"); err != nil {
		return nil, err
	}
	var onMount, onDir []time.Duration
	for range reps {
		for _, w := range []struct {
			root string
			ds   *[]time.Duration
		}{{p.mnt, &onMount}, {plain, &onDir}} {
			t := time.Now()
			if _, err := replay.Hit(w.root, key, ""); err != nil {
				return nil, fmt.Errorf("warm hit: %w", err)
			}
			*w.ds = append(*w.ds, time.Since(t))
		}
	}
	mg, dg := quantile(onMount, 0.5), quantile(onDir, 0.5)
	say("warm hit: one fetched kernel, %d reps: Go replay p50 mount %s, plain dir %s (%.1fx)", reps, mg.Round(time.Microsecond),
		dg.Round(time.Microsecond), float64(mg)/float64(dg))
	figs := []figure{{What: "warm hit p50, Go replay", Value: mg.Round(time.Microsecond).String(),
		Anchor: "plain dir " + dg.Round(time.Microsecond).String(), Ratio: fmt.Sprintf("%.1fx", float64(mg)/float64(dg)), Target: "-"}}
	py, err := exec.LookPath("python3")
	if err != nil {
		say("warm hit: no python3; the Python replay is left out")
		return figs, nil
	}
	pm, err := pythonHits(ctx, py, p.mnt, key, name, reps)
	if err != nil {
		return nil, err
	}
	pd, err := pythonHits(ctx, py, plain, key, name, reps)
	if err != nil {
		return nil, err
	}
	say("warm hit: Python replay (Triton's hit sequence in one CPython, %d reps) p50 mount %s, plain dir %s (%.1fx)", reps,
		pm.Round(time.Microsecond), pd.Round(time.Microsecond), float64(pm)/float64(pd))
	script, err := tritonLikeScript()
	if err != nil {
		return nil, err
	}
	per, err := m.requestsPerHit(ctx, py, script, key, name, min(reps, 100))
	if err != nil {
		return nil, fmt.Errorf("warm hit: FUSE requests: %w", err)
	}
	say("warm hit: FUSE requests per Python hit on the mount: %s", perHit(per))
	total := 0.0
	for _, n := range per {
		total += n
	}
	return append(figs,
		figure{What: "warm hit p50, Python replay", Value: pm.Round(time.Microsecond).String(),
			Anchor: "plain dir " + pd.Round(time.Microsecond).String(), Ratio: fmt.Sprintf("%.1fx", float64(pm)/float64(pd)), Target: "<= 2x plain dir"},
		figure{What: "warm hit: FUSE requests per hit", Value: fmt.Sprintf("%.1f", total), Anchor: perHit(per), Target: "<= 10"}), nil
}

// pythonHits is the p50 of reps hits of key on root, timed in one CPython
// running test/replay's model of Triton's hit (pythonTimes).
func pythonHits(ctx context.Context, py, root, key, name string, reps int) (time.Duration, error) {
	script, err := tritonLikeScript()
	if err != nil {
		return 0, err
	}
	ds, err := pythonTimes(ctx, py, script, key, name, reps, 1, []string{root})
	if err != nil {
		return 0, fmt.Errorf("python replay on %s: %w", root, err)
	}
	return ds[0][len(ds[0])/2], nil
}
