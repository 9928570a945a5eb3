// Command bench measures lazy KEY fetching against a real registry: it
// generates a Triton cache, packs it into one eStargz image, pushes it to a
// docker-registry process started for the run, and reports index load time
// and requests, per-dir fetch latency and bytes against each dir's
// compressed span, and a full download of the blob for comparison.
//
//	go run ./test/bench [--kernels 2000] [--dirs 100] [--workers 8] [--latency 0] [--scale 1] [--debug]
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
	var o options
	fl := pflag.NewFlagSet("bench", pflag.ContinueOnError)
	fl.IntVarP(&o.kernels, "kernels", "n", 2000, "kernel dirs in the image")
	fl.IntVar(&o.dirs, "dirs", 100, "dirs to fetch one by one (spread over the image)")
	fl.IntVar(&o.workers, "workers", 8, "parallel fetchers for the parallel pass")
	fl.Float64Var(&o.scale, "scale", 1, "file size multiplier of the generated cache (1 = realistic)")
	fl.Int64Var(&o.seed, "seed", 1, "generator seed")
	fl.DurationVar(&o.latency, "latency", 0, "latency the proxy adds to every request (simulated network)")
	fl.StringVar(&o.work, "work", "", "work dir (default a temp dir, removed at the end)")
	fl.BoolVar(&o.keepWork, "keep", false, "keep the work dir")
	fl.BoolVar(&o.debug, "debug", false, "log each fetch (read, verify, commit times) to stderr")
	err := fl.Parse(os.Args[1:])
	if errors.Is(err, pflag.ErrHelp) {
		return
	}
	if err == nil && fl.NArg() > 0 {
		err = fmt.Errorf("unexpected arguments %q", fl.Args())
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err = run(ctx, o, os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}
