// Command probe runs gpu.Detect once and prints the report; the gpu tests
// build it to check that a cgo binary starts on a host without
// libnvidia-ml.
package main

import (
	"fmt"
	"os"

	"cargohold/gpu"
)

func main() {
	r, err := gpu.Detect(gpu.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "probe:", err)
		os.Exit(1)
	}
	fmt.Printf("source: %s\ntargets: %s\nnvidia: %s\namd: %s\n", r.Source, gpu.FormatList(r.Targets), r.NVIDIA, r.AMD)
}
