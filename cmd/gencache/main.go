// Command gencache writes a synthetic Triton cache (see package
// cargohold/triton/gen) and prints a summary of it.
//
//	gencache -o DIR -n KERNELS [--launchers N] [--targets LIST] [--seed S] [--scale F] [--root PATH]
package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/pflag"

	"cargohold/gpu"
	"cargohold/triton/gen"
)

// options is everything the command needs, from the flags.
type options struct {
	dir string
	gen gen.Options
}

func main() {
	opts, err := parse(os.Args[1:], os.Stderr)
	if errors.Is(err, pflag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "gencache:", err)
		os.Exit(2)
	}
	if err := run(opts, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "gencache:", err)
		os.Exit(1)
	}
}

func parse(args []string, stderr io.Writer) (options, error) {
	var o options
	fl := pflag.NewFlagSet("gencache", pflag.ContinueOnError)
	fl.SetOutput(stderr)
	fl.StringVarP(&o.dir, "output", "o", "", "cache dir to write (created if missing)")
	fl.IntVarP(&o.gen.Kernels, "kernels", "n", 0, "number of kernel entries")
	fl.IntVar(&o.gen.Launchers, "launchers", 0, "number of launcher (.so) entries")
	targets := fl.String("targets", "cuda:80:32", "kernel targets, assigned round-robin (backend:arch[:warp],...)")
	fl.Int64Var(&o.gen.Seed, "seed", 0, "random seed; the same seed gives the same cache")
	fl.Float64Var(&o.gen.Scale, "scale", 1, "file size multiplier (1 = realistic sizes)")
	fl.StringVar(&o.gen.Root, "root", gen.DefaultRoot, "absolute cache root written into group files")
	if err := fl.Parse(args); err != nil {
		return o, err
	}
	if fl.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fl.Args())
	}
	if o.dir == "" {
		return o, fmt.Errorf("-o DIR is required")
	}
	ts, err := gpu.ParseList(*targets)
	if err != nil {
		return o, err
	}
	if len(ts) == 0 {
		return o, fmt.Errorf("--targets: need at least one target")
	}
	o.gen.Targets = ts
	return o, nil
}
