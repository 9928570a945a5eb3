package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/spf13/pflag"

	"cargohold/triton"
	"cargohold/triton/gen"
)

// hitOptions is everything the hit mode needs.
type hitOptions struct {
	bins    []string
	kernels int
	reps    int
	rounds  int
	count   int
	work    string
	keep    bool
}

// hitMain: the warm hit of one fetched kernel, on cargohold-fs mounts
// (one per --bin), on a plain dir and on a loopback FUSE mount that does
// nothing but what the kernel asks (the floor), timed in one CPython
// process running Triton's hit sequence
// (test/replay/testdata/triton_like.py), with the FUSE requests each hit
// costs (README.md).
func hitMain(args []string) {
	var o hitOptions
	fl := pflag.NewFlagSet("bench hit", pflag.ContinueOnError)
	fl.StringSliceVar(&o.bins, "bin", nil, "dirs holding cargohold and cargohold-fs, each mounted side by side\n(default: go build them into the work dir)")
	fl.IntVar(&o.kernels, "kernels", 20, "kernels in the generated image (the first one is hit)")
	fl.IntVar(&o.reps, "reps", 200, "hits per root per round")
	fl.IntVar(&o.rounds, "rounds", 5, "rounds; each hits every root in turn")
	fl.IntVar(&o.count, "count", 100, "hits per mount whose FUSE requests are counted (untimed)")
	fl.StringVar(&o.work, "work", "", "work dir (default a temp dir, removed at the end)")
	fl.BoolVar(&o.keep, "keep", false, "keep the work dir")
	check := func() error {
		if o.kernels < 1 || o.reps < 1 || o.rounds < 1 || o.count < 1 {
			return fmt.Errorf("want --kernels, --reps, --rounds and --count >= 1")
		}
		return nil
	}
	cmdMain(fl, args, check, func(ctx context.Context) error { return runHit(ctx, o, os.Stdout) })
}

// hitMount is one cargohold-fs under test.
type hitMount struct {
	bin     string
	p       *fsProc
	metrics string // host:port of its --metrics-addr
}

func runHit(ctx context.Context, o hitOptions, out io.Writer) error {
	py, err := exec.LookPath("python3")
	if err != nil {
		return fmt.Errorf("the warm hit is timed in CPython: %w", err)
	}
	script, err := tritonLikeScript()
	if err != nil {
		return err
	}
	work, err := workDir(o.work, "cargohold-bench-hit-")
	if err != nil {
		return err
	}
	if !o.keep {
		defer os.RemoveAll(work)
	}
	say := func(format string, args ...any) { fmt.Fprintf(out, format+"\n", args...) }
	bins := o.bins
	if len(bins) == 0 {
		b, err := binaries(ctx, "", work)
		if err != nil {
			return err
		}
		bins = []string{b}
	}
	for i, b := range bins {
		if bins[i], err = binaries(ctx, b, work); err != nil {
			return err
		}
	}

	cache := filepath.Join(work, "cache")
	entries, err := gen.Generate(cache, gen.Options{Kernels: o.kernels, Seed: 1})
	if err != nil {
		return err
	}
	key, name, files := "", "", 0
	for _, e := range entries {
		if e.Kind == triton.KindKernel {
			key, name, files = e.Key, e.Kernels[0].Name, len(e.Files)
			break
		}
	}
	layout := "oci:" + filepath.Join(work, "layout") + ":hit"
	plain := filepath.Join(work, "plain")
	env := []string{"CARGOHOLD_STORE=" + filepath.Join(work, "store")}
	for _, args := range [][]string{
		{"-c", "-i", layout, "-d", cache},
		{"-e", "-i", layout, "-d", plain, "--gpu", benchGPU},
	} {
		if _, err := hitCmd(ctx, env, filepath.Join(bins[0], "cargohold"), append(args, "-l", "warning")...); err != nil {
			return err
		}
	}

	// The floor: go-fuse's loopback over a copy of the plain dir whose
	// group files name the loopback's mountpoint, caching as cargohold-fs
	// does; it costs what the kernel always asks, with no work behind it.
	floorMnt, floorDir := filepath.Join(work, "floor"), filepath.Join(work, "floor-backing")
	if _, err := hitCmd(ctx, env, filepath.Join(bins[0], "cargohold"),
		"-e", "-i", layout, "-d", floorMnt, "--gpu", benchGPU, "-l", "warning"); err != nil {
		return err
	}
	if err := os.Rename(floorMnt, floorDir); err != nil {
		return err
	}
	if err := os.Mkdir(floorMnt, 0o755); err != nil {
		return err
	}
	floor, err := mountFloor(floorDir, floorMnt)
	if err != nil {
		return fmt.Errorf("loopback mount: %w", err)
	}
	defer floor.Unmount()

	var mounts []*hitMount
	defer func() {
		for _, m := range mounts {
			m.p.stop()
		}
	}()
	for i, b := range bins {
		addr, err := freeAddr()
		if err != nil {
			return err
		}
		p, err := startFS(b, layout, filepath.Join(work, fmt.Sprintf("mount-%d", i)),
			"--metrics-addr", addr, "--prefetch", "none", "-l", "warning")
		if err != nil {
			return err
		}
		mounts = append(mounts, &hitMount{bin: b, p: p, metrics: addr})
		if _, err := p.firstHit(key); err != nil {
			return fmt.Errorf("%s: first hit: %w", b, err)
		}
	}
	say("warm hit of one fetched kernel (%d files): Triton's hit sequence (triton_like.py) in one CPython process,", files)
	say("%d rounds x %d hits per root, roots in turn; FUSE requests over %d more hits per mount", o.rounds, o.reps, o.count)

	roots := []string{plain, floorMnt}
	for _, m := range mounts {
		roots = append(roots, m.p.mnt)
	}
	ds, err := pythonTimes(ctx, py, script, key, name, o.reps, o.rounds, roots)
	if err != nil {
		return err
	}
	reqs := make([]map[string]float64, len(mounts))
	for i, m := range mounts {
		if reqs[i], err = m.requestsPerHit(ctx, py, script, key, name, o.count); err != nil {
			return err
		}
	}

	say("")
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "root\tp50\tp90\t/ plain (p50)\tFUSE requests per hit\t\n")
	pp := quantile(ds[0], 0.5)
	fmt.Fprintf(tw, "plain dir\t%s\t%s\t1.0x\t-\t\n", us(pp), us(quantile(ds[0], 0.9)))
	fmt.Fprintf(tw, "go-fuse loopback, same caching (floor)\t%s\t%s\t%.1fx\t-\t\n", us(quantile(ds[1], 0.5)),
		us(quantile(ds[1], 0.9)), float64(quantile(ds[1], 0.5))/float64(pp))
	for i, m := range mounts {
		d := ds[i+2]
		fmt.Fprintf(tw, "cargohold-fs (%s)\t%s\t%s\t%.1fx\t%s\t\n", m.bin, us(quantile(d, 0.5)), us(quantile(d, 0.9)),
			float64(quantile(d, 0.5))/float64(pp), perHit(reqs[i]))
	}
	tw.Flush()
	b, _ := json.Marshal(map[string]any{"files": files, "reps": o.reps * o.rounds, "plain_p50_us": float64(pp) / 1e3,
		"floor_p50_us": float64(quantile(ds[1], 0.5)) / 1e3,
		"mounts": func() []map[string]any {
			var ms []map[string]any
			for i, m := range mounts {
				ms = append(ms, map[string]any{"bin": m.bin, "p50_us": float64(quantile(ds[i+2], 0.5)) / 1e3,
					"p90_us": float64(quantile(ds[i+2], 0.9)) / 1e3, "requests_per_hit": reqs[i]})
			}
			return ms
		}()})
	say("%s", b)
	for _, m := range mounts {
		if err := m.p.stop(); err != nil {
			return err
		}
	}
	return nil
}

func us(d time.Duration) string { return d.Round(time.Microsecond).String() }

// perHit prints requests per hit: the total, then each kind.
func perHit(r map[string]float64) string {
	total := 0.0
	ops := make([]string, 0, len(r))
	for op, n := range r {
		total += n
		ops = append(ops, op)
	}
	slices.Sort(ops)
	var b strings.Builder
	fmt.Fprintf(&b, "%.1f", total)
	for _, op := range ops {
		fmt.Fprintf(&b, " %s %.1f", op, r[op])
	}
	return b.String()
}

// freeAddr is a loopback address nobody listens on just now.
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// tritonLikeScript is test/replay's Python model of Triton's cache traffic.
func tritonLikeScript() (string, error) {
	_, self, _, ok := runtime.Caller(0)
	if !ok {
		return "", fmt.Errorf("no source path for triton_like.py")
	}
	p := filepath.Join(filepath.Dir(self), "..", "replay", "testdata", "triton_like.py")
	if _, err := os.Stat(p); err != nil {
		return "", err
	}
	return p, nil
}

// pyHitLoop runs triton_like.py's hit (loaded without running its main)
// reps times per root per round, the roots in turn, and prints each root's
// durations in seconds as JSON.
const pyHitLoop = `
import json, sys, time
script, key, name, reps, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
roots = sys.argv[6:]
src = open(script).read()
g = {"__name__": "triton_like"}
exec(compile(src[:src.rindex("\nmain()")], script, "exec"), g)
hit = g["hit"]
ds = [[] for _ in roots]
for _ in range(rounds):
    for i, root in enumerate(roots):
        for _ in range(reps):
            t = time.perf_counter()
            hit(root, key, name)
            ds[i].append(time.perf_counter() - t)
print(json.dumps(ds))
`

func pythonTimes(ctx context.Context, py, script, key, name string, reps, rounds int, roots []string) ([][]time.Duration, error) {
	args := append([]string{"-c", pyHitLoop, script, key, name, strconv.Itoa(reps), strconv.Itoa(rounds)}, roots...)
	out, err := hitCmd(ctx, nil, py, args...)
	if err != nil {
		return nil, fmt.Errorf("python hits: %w", err)
	}
	var secs [][]float64
	if err := json.Unmarshal([]byte(out), &secs); err != nil || len(secs) != len(roots) {
		return nil, fmt.Errorf("python hits: %v: %.200q", err, out)
	}
	ds := make([][]time.Duration, len(secs))
	for i, s := range secs {
		for _, x := range s {
			ds[i] = append(ds[i], time.Duration(x*float64(time.Second)))
		}
		slices.Sort(ds[i])
	}
	return ds, nil
}

// requestsPerHit counts the FUSE requests of n more hits on the mount
// (RELEASE comes after close returns: the count is read once it settles).
func (m *hitMount) requestsPerHit(ctx context.Context, py, script, key, name string, n int) (map[string]float64, error) {
	before, err := m.requests()
	if err != nil {
		return nil, err
	}
	if _, err := pythonTimes(ctx, py, script, key, name, n, 1, []string{m.p.mnt}); err != nil {
		return nil, err
	}
	after, err := m.requests()
	for i := 0; err == nil && i < 50; i++ {
		time.Sleep(20 * time.Millisecond)
		var again map[string]int64
		if again, err = m.requests(); err == nil && maps.Equal(again, after) {
			break
		}
		after = again
	}
	if err != nil {
		return nil, err
	}
	per := map[string]float64{}
	for op, c := range after {
		if d := c - before[op]; d > 0 {
			per[op] = float64(d) / float64(n)
		}
	}
	return per, nil
}

var requestLine = regexp.MustCompile(`^cargohold_fuse_requests_total\{op="([A-Z_]+)"\} (\d+)$`)

// requests reads the mount's request counters from its metrics.
func (m *hitMount) requests() (map[string]int64, error) {
	resp, err := http.Get("http://" + m.metrics + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]int64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if g := requestLine.FindStringSubmatch(sc.Text()); g != nil {
			out[g[1]], _ = strconv.ParseInt(g[2], 10, 64)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no cargohold_fuse_requests_total in its metrics (built before they were counted?)", m.bin)
	}
	return out, nil
}

// hitCmd runs a command and returns its stdout; a failure says its stderr.
func hitCmd(ctx context.Context, env []string, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%s %s: %w\n%s", filepath.Base(name), strings.Join(args[:min(len(args), 3)], " "), err, stderr.String())
	}
	return string(out), nil
}

// floorNode is go-fuse's loopback node with cargohold-fs's opens: the page
// cache kept, no FLUSH, no passthrough (reads passed through to the backing
// file would make the kernel ask each file's attributes again).
type floorNode struct{ *gofs.LoopbackNode }

type floorFile struct{ *gofs.LoopbackFile }

func (floorFile) PassthroughFd() (int, bool) { return -1, false }

func (n *floorNode) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	fh, ff, errno := n.LoopbackNode.Open(ctx, flags)
	if lf, ok := fh.(*gofs.LoopbackFile); ok {
		fh = floorFile{lf}
	}
	return fh, ff | fuse.FOPEN_KEEP_CACHE | fuse.FOPEN_NOFLUSH, errno
}

// mountFloor mounts go-fuse's loopback of dir at mnt, in this process, with
// cargohold-fs's timeouts and mount options.
func mountFloor(dir, mnt string) (*fuse.Server, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		return nil, err
	}
	root := &gofs.LoopbackRoot{Path: dir, Dev: uint64(st.Dev)}
	root.NewNode = func(r *gofs.LoopbackRoot, _ *gofs.Inode, _ string, _ *syscall.Stat_t) gofs.InodeEmbedder {
		return &floorNode{&gofs.LoopbackNode{RootData: r}}
	}
	root.RootNode = root.NewNode(root, nil, "", &st)
	ttl := time.Hour
	return gofs.Mount(mnt, root.RootNode, &gofs.Options{EntryTimeout: &ttl, AttrTimeout: &ttl, NegativeTimeout: &ttl,
		MountOptions: fuse.MountOptions{DirectMount: true, FsName: "bench-floor", Name: "bench-floor",
			Options: []string{"default_permissions"}, DisableReadDirPlus: true}})
}
