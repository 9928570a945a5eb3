// Command cargohold packs a compile cache (Triton, vLLM, Inductor) into an
// OCI image (-c), unpacks the units of an image that fit the local GPU
// (-e), and inspects images, the local GPU and single units.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"cargohold/gpu"
	"cargohold/internal/cli"
	"cargohold/kind"
)

const usage = `Usage:
  cargohold -c -i IMAGE -d DIR [--cache KIND] [--push] [--order FILE]
                                             pack a cache root into an image
  cargohold -e -i IMAGE [-d DIR]             unpack the units that fit this host's GPU
  cargohold inspect -i IMAGE                 kind, labels, targets, units, size, fit
  cargohold gpu                              the GPU targets of this host
  cargohold fetch -i IMAGE [-d DIR] UNIT...  fetch single units lazily (ranged reads)

A cache KIND is triton (DIR is TRITON_CACHE_DIR, ~/.triton/cache), vllm
(DIR is $VLLM_CACHE_ROOT, ~/.cache/vllm: the dir holding
torch_compile_cache/) or inductor (DIR is TORCHINDUCTOR_CACHE_DIR,
/tmp/torchinductor_$USER). -c detects it from DIR; -e and fetch take it
from the image. A UNIT is a Triton KEY, or a dir path under the root
(torch_compile_cache/HASH/rank_0_0/backbone).

Images live in the local OCI layout store unless --push is given (create) or
the store does not hold them (extract, inspect); "oci:DIR[:REF]" names an
explicit layout dir.

Flags:
`

// options is everything a run needs, from flags and environment.
type options struct {
	mode      string // "create", "extract", "inspect", "gpu", "fetch"
	image     string
	dir       string
	keys      []string
	push      bool
	plainHTTP bool
	store     string
	stateDir  string
	gpu       string
	logLevel  string
	timeout   time.Duration
	order     string
	cache     kind.Kind // --cache; "" detects
}

func main() {
	opts, err := parseFlags(os.Args[1:])
	if errors.Is(err, pflag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "cargohold:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err = run(ctx, opts)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "cargohold:", err)
		os.Exit(1)
	}
}

func parseFlags(args []string) (options, error) {
	var o options
	fs := pflag.NewFlagSet("cargohold", pflag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(os.Stderr, usage); fs.PrintDefaults() }
	create := fs.BoolP("create", "c", false, "pack the cache dir -d into image -i")
	extract := fs.BoolP("extract", "e", false, "unpack image -i into the cache dir -d")
	fs.StringVarP(&o.image, "image", "i", "", "image reference, or oci:DIR[:REF]")
	fs.StringVarP(&o.dir, "dir", "d", "", "cache root (extract default by the image's kind: $TRITON_CACHE_DIR or ~/.triton/cache, $VLLM_CACHE_ROOT or ~/.cache/vllm, $TORCHINDUCTOR_CACHE_DIR or /tmp/torchinductor_$USER)")
	cache := fs.String("cache", "", "create: the cache's kind, triton, vllm or inductor (default: detected from -d)")
	fs.StringVarP(&o.logLevel, "log-level", "l", "info", "log level: debug, info, warning, error")
	fs.BoolVar(&o.push, "push", false, "create: push to the registry named by -i instead of the local store")
	fs.BoolVar(&o.plainHTTP, "plain-http", false, "allow plain HTTP to a registry that is not loopback, never with credentials (loopback needs no flag)")
	fs.StringVar(&o.store, "store", "", "local OCI layout store (default $CARGOHOLD_STORE or ~/.local/share/cargohold/oci)")
	fs.StringVar(&o.stateDir, "state-dir", "", "fetch: content store and layer indexes (default ${XDG_CACHE_HOME:-~/.cache}/cargohold)")
	fs.StringVar(&o.gpu, "gpu", "", `local GPU targets instead of detection, e.g. "cuda:80:32,hip:gfx90a:64" or "none" (env CARGOHOLD_GPU); create: the targets of a vLLM or Inductor cache no kernel JSON describes`)
	fs.DurationVar(&o.timeout, "timeout", 30*time.Second, "each registry request must answer, and its body keep moving, within this")
	fs.StringVar(&o.order, "order", "", "create: KEYs one a line (cargohold-fs status --trace) whose dirs go first in the layer, in that order")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	rest := fs.Args()
	switch {
	case *create && *extract:
		return o, fmt.Errorf("-c and -e exclude each other")
	case *create:
		o.mode = "create"
	case *extract:
		o.mode = "extract"
	case len(rest) > 0 && (rest[0] == "inspect" || rest[0] == "gpu" || rest[0] == "fetch"):
		o.mode, rest = rest[0], rest[1:]
	default:
		fs.Usage()
		return o, fmt.Errorf("say -c, -e, inspect, gpu or fetch")
	}
	if o.mode == "fetch" {
		o.keys, rest = rest, nil
		if len(o.keys) == 0 {
			return o, fmt.Errorf("fetch: name at least one unit (a KEY, or a dir path under the cache root)")
		}
	}
	if *cache != "" {
		k, err := kind.Parse(*cache)
		if err != nil {
			return o, fmt.Errorf("--cache: %w", err)
		}
		if o.mode != "create" {
			return o, fmt.Errorf("--cache goes with -c (extract, inspect and fetch take the kind from the image)")
		}
		o.cache = k
	}
	if len(rest) > 0 {
		return o, fmt.Errorf("unexpected arguments %q", rest)
	}
	if o.image == "" && o.mode != "gpu" {
		return o, fmt.Errorf("%s: -i IMAGE is required", o.mode)
	}
	if o.mode == "create" && o.dir == "" {
		return o, fmt.Errorf("create: -d DIR is required")
	}
	if o.order != "" && o.mode != "create" {
		return o, fmt.Errorf("--order goes with -c")
	}
	if _, err := cli.ParseLevel(o.logLevel); err != nil {
		return o, err
	}
	if o.timeout <= 0 {
		return o, fmt.Errorf("--timeout %v: want a positive duration such as 30s", o.timeout)
	}
	if fs.Changed("gpu") {
		if strings.TrimSpace(o.gpu) == "" {
			return o, fmt.Errorf(`--gpu %q: name targets such as "cuda:90:32", or "none" for no GPU`, o.gpu)
		}
		if _, err := gpu.ParseList(o.gpu); err != nil {
			return o, fmt.Errorf("--gpu: %w", err)
		}
	}
	return o, nil
}
