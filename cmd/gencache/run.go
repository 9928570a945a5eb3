package main

import (
	"fmt"
	"io"
	"sort"

	"cargohold/triton"
	"cargohold/triton/gen"
)

// run generates the cache and prints one line per target and a total.
func run(o options, out io.Writer) error {
	entries, err := gen.Generate(o.dir, o.gen)
	if err != nil {
		return err
	}
	perTarget := map[string]int{}
	var files int
	var bytes int64
	launchers := 0
	for _, e := range entries {
		for _, k := range e.Kernels {
			perTarget[k.Target.String()]++
		}
		if e.Kind == triton.KindLauncher {
			launchers++
		}
		for _, f := range e.Files {
			files++
			bytes += f.Size
		}
	}
	targets := make([]string, 0, len(perTarget))
	for t := range perTarget {
		targets = append(targets, t)
	}
	sort.Strings(targets)
	for _, t := range targets {
		fmt.Fprintf(out, "%-16s %d kernels\n", t, perTarget[t])
	}
	_, err = fmt.Fprintf(out, "wrote %d kernels and %d launchers to %s: %d files, %d bytes (seed %d, scale %g, root %s)\n",
		len(entries)-launchers, launchers, o.dir, files, bytes, o.gen.Seed, o.gen.Scale, o.gen.Root)
	return err
}
