// Command bench measures lazy KEY fetching against a real registry: it
// generates a Triton cache, packs it into one eStargz image, pushes it to a
// docker-registry process started for the run, and reports index load time
// and requests, per-dir fetch latency and bytes against each dir's
// compressed span, and a full download of the blob for comparison.
//
// The mount mode (mount.go) runs the built commands instead: a real
// cargohold-fs mount against the same kind of registry behind a latency
// proxy, side by side with cargohold -e of the whole image.
//
//	go run ./test/bench [--kernels 2000] [--dirs 100] [--workers 8] [--latency 0] [--scale 1] [--debug]
//	go run ./test/bench mount [--kernels 2000] [--hits 50] [--procs 8] [--latency 20ms] [--reps 200] [--bin DIR]
//	go run ./test/bench compare [--kernels 2000] [--latency 20ms] [--bandwidth 0,1000] [--cold 80] [--runs 1] [--bin DIR]
//	go run ./test/bench warm [--only pack,extract,memory] [--kernels 2000] [--images 20] [--keys 2000] [--bin DIR]
//	go run ./test/bench hit [--bin DIR,...] [--reps 200] [--rounds 5] [--count 100]
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"cargohold/test/replay"
)

// options is everything a run needs.
type options struct {
	kernels  int
	dirs     int
	workers  int
	scale    float64
	seed     int64
	latency  time.Duration
	work     string
	keepWork bool
	debug    bool
}

func main() {
	replay.ChildMain() // the mount mode's parallel replays re-execute this program
	if len(os.Args) > 1 && os.Args[1] == "mount" {
		mountMain(os.Args[2:])
		return
	}
	if len(os.Args) > 1 && os.Args[1] == "compare" {
		compareMain(os.Args[2:])
		return
	}
	if len(os.Args) > 1 && os.Args[1] == "warm" {
		warmMain(os.Args[2:])
		return
	}
	if len(os.Args) > 1 && os.Args[1] == "hit" {
		hitMain(os.Args[2:])
		return
	}
	var o options
	fl := pflag.NewFlagSet("bench", pflag.ContinueOnError)
	fl.Usage = func() {
		fmt.Fprint(os.Stderr, "Usage: bench [flags]          lazy fetch engine, in process\n       bench mount [flags]    cargohold-fs vs cargohold -e, real commands (bench mount -h)\n       bench compare [flags]  time to k kernels: cargohold-fs, --prefetch none, cargohold -e, skopeo + tar (bench compare -h)\n       bench warm [flags]     pack, extract, index memory, idle CPU, warm hit vs their anchors (bench warm -h)\n       bench hit [flags]      warm hit (CPython) on cargohold-fs mounts and a plain dir, FUSE requests per hit (bench hit -h)\n\nFlags:\n")
		fl.PrintDefaults()
	}
	fl.IntVarP(&o.kernels, "kernels", "n", 2000, "kernel dirs in the image")
	fl.IntVar(&o.dirs, "dirs", 100, "dirs to fetch one by one (spread over the image)")
	fl.IntVar(&o.workers, "workers", 8, "parallel fetchers for the parallel pass")
	fl.Float64Var(&o.scale, "scale", 1, "file size multiplier of the generated cache (1 = realistic)")
	fl.Int64Var(&o.seed, "seed", 1, "generator seed")
	fl.DurationVar(&o.latency, "latency", 0, "latency the proxy adds to every request (simulated network)")
	fl.StringVar(&o.work, "work", "", "work dir (default a temp dir, removed at the end)")
	fl.BoolVar(&o.keepWork, "keep", false, "keep the work dir")
	fl.BoolVar(&o.debug, "debug", false, "log each fetch (read, verify, commit times) to stderr")
	cmdMain(fl, os.Args[1:], nil, func(ctx context.Context) error { return run(ctx, o, os.Stdout) })
}

// cmdMain parses args into fl and, unless -h was asked, checks them (check
// may be nil) and runs run with a context that SIGINT and SIGTERM cancel.
// Bad flags exit 2 and a failed run exits 1, each with a message that starts
// with fl's name.
func cmdMain(fl *pflag.FlagSet, args []string, check func() error, run func(context.Context) error) {
	err := fl.Parse(args)
	if errors.Is(err, pflag.ErrHelp) {
		return
	}
	if err == nil && fl.NArg() > 0 {
		err = fmt.Errorf("unexpected arguments %q", fl.Args())
	}
	if err == nil && check != nil {
		err = check()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", fl.Name(), err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err = run(ctx)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", fl.Name(), err)
		os.Exit(1)
	}
}
