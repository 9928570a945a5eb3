// Command cargohold-fs mounts a FUSE filesystem as Triton's cache dir. A
// lookup of a kernel KEY that is not on local disk is answered from a cache
// image that fits the local GPU: only that KEY dir is fetched, verified and
// kept in a bounded local store; then, unless --prefetch none, the other
// fitting KEYs of that image layer in the background. The dir under the
// mount stays visible and takes the local compiles (it is the upper dir).
//
//	cargohold-fs -i REGISTRY/REPO:TAG [-i ...] [MOUNTPOINT]
//	cargohold-fs status [--state-dir DIR] [--trace]
package main

import (
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"cargohold/gpu"
	"cargohold/internal/cli"
	"cargohold/internal/userdir"
	"cargohold/kind"
)

const usage = `Usage:
  cargohold-fs [flags] [MOUNTPOINT]     mount (default the --cache kind's root: $TRITON_CACHE_DIR or ~/.triton/cache)
  cargohold-fs status [--state-dir DIR] print the status of a running mount
  cargohold-fs status --trace           print the KEYs in the order first looked up (for cargohold -c --order)

Image sources (-i, repeatable, first wins for a KEY held twice):
  REG/REPO:TAG or REG/REPO@sha256:...   one image
  REG/REPO:*                            every tag of a repository
  oci:DIR[:REF]                         a local OCI layout (all images, or REF)
  NAME:TAG                              an image in the local store (--store)

The mountpoint is the root the framework is pointed at (--cache KIND):
  triton    TRITON_CACHE_DIR (~/.triton/cache): Triton KEY dirs
  vllm      $VLLM_CACHE_ROOT (~/.cache/vllm): the dir holding torch_compile_cache/
  inductor  TORCHINDUCTOR_CACHE_DIR (/tmp/torchinductor_$USER)

Flags:
`

// options is everything a mount needs.
type options struct {
	status       bool
	mountpoint   string
	cache        kind.Kind
	images       []string
	stateDir     string
	store        string
	cacheSize    int64
	minFree      int64
	gpu          string
	plainHTTP    bool
	fetchTimeout time.Duration
	reqTimeout   time.Duration
	refresh      time.Duration
	pathPrefix   string
	logLevel     string
	metricsAddr  string
	foreground   bool
	allowOther   bool
	prefetch     string
	trace        bool
}

// --prefetch modes.
const (
	prefetchFitting = "fitting" // a layer that served a lookup: its KEYs that fit the local GPU
	prefetchNone    = "none"    // strictly lazy
)

func main() {
	o, err := parseFlags(os.Args[1:])
	if errors.Is(err, pflag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "cargohold-fs:", err)
		os.Exit(2)
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "cargohold-fs:", err)
		os.Exit(1)
	}
}

func parseFlags(args []string) (options, error) {
	var o options
	var cacheSize, minFree, cache string
	defState, defStateErr := userdir.Cache("cargohold", "fs")
	fs := pflag.NewFlagSet("cargohold-fs", pflag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(os.Stderr, usage); fs.PrintDefaults() }
	fs.StringArrayVarP(&o.images, "image", "i", nil, "image source (repeatable; see above)")
	fs.StringVar(&cache, "cache", string(kind.Triton), "the cache kind the mount is the root of: triton, vllm or inductor (see above); images of other kinds are listed, not served")
	fs.StringVar(&o.stateDir, "state-dir", defState, "content store, layer indexes, catalog, status.json and log, outside the mountpoint (default ${XDG_CACHE_HOME:-~/.cache}/cargohold/fs; without $HOME, the per-user runtime dir)")
	fs.StringVar(&o.store, "store", "", "local OCI layout store for plain names (default $CARGOHOLD_STORE or ~/.local/share/cargohold/oci)")
	fs.StringVar(&cacheSize, "cache-size", "10G", "bound on the content store, bytes with K/M/G/T suffix (0: unbounded)")
	fs.StringVar(&minFree, "min-free", "1G", "free space the content store leaves on its file system for local compiles; it evicts rather than go below (0: none)")
	fs.StringVar(&o.gpu, "gpu", "", `local GPU targets instead of detection, e.g. "cuda:90:32" or "none" (env CARGOHOLD_GPU)`)
	fs.BoolVar(&o.plainHTTP, "plain-http", false, "allow plain HTTP to registries that are not loopback, never with credentials (loopback needs no flag)")
	fs.DurationVar(&o.fetchTimeout, "fetch-timeout", 5*time.Second, "deadline for a lookup that fetches a KEY dir; past it Triton sees ENOENT and compiles, and the fetch goes on for a later lookup")
	fs.DurationVar(&o.reqTimeout, "request-timeout", 30*time.Second, "each registry request must answer, and its body move, within this (index loads are bounded by it, not by --fetch-timeout)")
	fs.DurationVar(&o.refresh, "refresh", 5*time.Minute, "how often image sources are re-read (tags move)")
	fs.StringVar(&o.pathPrefix, "path-prefix", "", "the path the framework sees the cache root at, for bind mounts (default the mountpoint); group files and vllm_compile_cache.py are rewritten to it")
	fs.StringVarP(&o.logLevel, "log-level", "l", "info", "log level: debug, info, warning, error")
	fs.StringVar(&o.metricsAddr, "metrics-addr", "", "serve Prometheus metrics on this address, e.g. 127.0.0.1:9477 (default off)")
	fs.BoolVarP(&o.foreground, "foreground", "f", false, "stay in the foreground (default: detach once mounted)")
	fs.BoolVar(&o.allowOther, "allow-other", false, "let other users use the mount (needs user_allow_other for non-root); as root, they may compile into it too")
	fs.StringVar(&o.prefetch, "prefetch", prefetchFitting, `"fitting": once a layer served a lookup, fetch its KEYs that fit the local GPU in the background, within --cache-size; "none": strictly lazy`)
	fs.BoolVar(&o.trace, "trace", false, "status: print the KEYs in the order first looked up instead")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	rest := fs.Args()
	if len(rest) > 0 && rest[0] == "status" {
		o.status, rest = true, rest[1:]
	}
	if _, err := cli.ParseLevel(o.logLevel); err != nil {
		return o, err
	}
	k, err := kind.Parse(cache)
	if err != nil {
		return o, fmt.Errorf("--cache: %w", err)
	}
	o.cache = k
	if o.prefetch != prefetchFitting && o.prefetch != prefetchNone {
		return o, fmt.Errorf("--prefetch %q: want %q or %q", o.prefetch, prefetchFitting, prefetchNone)
	}
	if o.trace && !o.status {
		return o, fmt.Errorf("--trace goes with status")
	}
	n, err := parseSize("--cache-size", cacheSize)
	if err != nil {
		return o, err
	}
	o.cacheSize = n
	if o.minFree, err = parseSize("--min-free", minFree); err != nil {
		return o, err
	}
	if err := checkGPUFlag(fs.Changed("gpu"), o.gpu); err != nil {
		return o, err
	}
	switch {
	case o.refresh < minRefresh:
		return o, fmt.Errorf("--refresh %v: want at least %v (sources are re-read that often)", o.refresh, minRefresh)
	case o.fetchTimeout <= 0:
		return o, fmt.Errorf("--fetch-timeout %v: want a positive duration such as 5s", o.fetchTimeout)
	case o.reqTimeout <= 0:
		return o, fmt.Errorf("--request-timeout %v: want a positive duration such as 30s", o.reqTimeout)
	}
	if o.stateDir == "" {
		if defStateErr == nil {
			defStateErr = errors.New("empty")
		}
		return o, fmt.Errorf("no state dir: %w; name one with --state-dir", defStateErr)
	}
	switch {
	case len(rest) > 1:
		return o, fmt.Errorf("unexpected arguments %q", rest[1:])
	case o.status:
		return o, nil
	case len(rest) == 1:
		o.mountpoint = rest[0]
	default:
		root, err := o.cache.DefaultRoot()
		if err != nil {
			return o, fmt.Errorf("no MOUNTPOINT: %w", err)
		}
		o.mountpoint = root
	}
	if len(o.images) == 0 {
		return o, fmt.Errorf("name at least one image source with -i")
	}
	return o, nil
}

// minRefresh is the shortest --refresh: a source is not re-read more often.
const minRefresh = time.Second

// parseSize reads "10G", "512M", "1.5G", "123456" (powers of 1024): a
// finite, non-negative number of bytes that fits an int64.
func parseSize(flag, raw string) (int64, error) {
	s := strings.TrimSpace(strings.ToUpper(raw))
	mult := int64(1)
	s = strings.TrimSuffix(strings.TrimSuffix(s, "B"), "I")
	if s != "" {
		if i := strings.IndexByte("KMGT", s[len(s)-1]); i >= 0 {
			mult = int64(1) << (10 * (i + 1))
			s = s[:len(s)-1]
		}
	}
	n, err := strconv.ParseFloat(s, 64)
	v := n * float64(mult)
	if err != nil || math.IsNaN(n) || n < 0 || v >= math.MaxInt64 {
		return 0, fmt.Errorf("%s %q: want bytes with an optional K/M/G/T suffix, at most 8E", flag, raw)
	}
	return int64(v), nil
}

// checkGPUFlag refuses a --gpu that was given but names nothing (it would
// silently mean "detect") and one that does not parse.
func checkGPUFlag(set bool, v string) error {
	if !set {
		return nil
	}
	if strings.TrimSpace(v) == "" {
		return fmt.Errorf(`--gpu %q: name targets such as "cuda:90:32", or "none" for no GPU`, v)
	}
	if _, err := gpu.ParseList(v); err != nil {
		return fmt.Errorf("--gpu: %w", err)
	}
	return nil
}
