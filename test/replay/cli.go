package replay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"

	"github.com/spf13/pflag"

	"cargohold/triton"
)

const usage = `usage:
  replay hit  [--cache KIND] --root ROOT [--expect SRC] [--name NAME] [-p N [--split]] [--trace] (KEY... | --all)
  replay miss [--cache KIND] --root ROOT --from SRC [--name NAME] [--atomic] [-p N [--split]] [--trace] (KEY... | --all)
  replay auto [--cache KIND] --root ROOT --from SRC [--name NAME] [--atomic] [-p N [--split]] [--trace] (KEY... | --all)

KIND is the cache ROOT is (default triton), and says what a KEY is:
  triton    TRITON_CACHE_DIR; KEY is a KEY dir; NAME the kernel name or launcher .so
  vllm      $VLLM_CACHE_ROOT; KEY is a hash dir under torch_compile_cache; NAME its
            rank dir and prefix (rank_0_0/backbone); --atomic saves artifacts by rename
  inductor  TORCHINDUCTOR_CACHE_DIR; KEY is a unit's path under it (fxgraph/<xx>/<key>,
            aotautograd/<key>, <xx>/<name>.py, <xx>/<name>.best_config,
            triton/<device>/<KEY>, cache/<name>, locks/<name>.lock)
Without NAME each KEY's dir is listed to find it.

Prints "HIT KEY", "MISS KEY" or "ERROR KEY: why" per replay, then a JSON
summary. Exit status 1 if any replay failed, 2 for bad usage.
`

// Main is the replay command: args without the program name. In a
// process started by Run (ChildEnv set) it waits for its stdin to close
// and prints results as JSON lines for the parent.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, all, err := parseArgs(args, stderr)
	if errors.Is(err, pflag.ErrHelp) {
		return 0
	}
	if err == nil && all {
		src := o.From
		if src == "" {
			src = o.Expect
		}
		o.Keys, err = keysIn(o.kind(), src)
	}
	if err != nil {
		fmt.Fprintf(stderr, "replay: %v\n%s", err, usage)
		return 2
	}
	child, _ := strconv.Atoi(os.Getenv(ChildEnv))
	var report func(Result)
	if child > 0 {
		io.Copy(io.Discard, os.Stdin) // the parent closes it when all processes have started
		enc := json.NewEncoder(stdout)
		report = func(r Result) {
			r.Proc = child
			enc.Encode(r)
		}
	} else {
		report = func(r Result) {
			switch r.Outcome {
			case OutcomeHit:
				fmt.Fprintf(stdout, "HIT %s\n", r.Key)
			case OutcomeMiss:
				fmt.Fprintf(stdout, "MISS %s\n", r.Key)
			default:
				fmt.Fprintf(stdout, "ERROR %s: %s\n", r.Key, r.Error)
			}
			for _, t := range r.Trace {
				fmt.Fprintf(stdout, "  %s\n", t)
			}
		}
	}
	sum, err := Run(ctx, o, report)
	if err != nil {
		fmt.Fprintf(stderr, "%v\n", err)
		return 2
	}
	if child > 0 {
		return 0 // the parent counts the errors
	}
	b, _ := json.Marshal(sum)
	fmt.Fprintf(stdout, "%s\n", b)
	if !sum.OK() {
		return 1
	}
	return 0
}

// ChildMain makes a program usable as Options.Exe: call it first in main
// (or TestMain). In a process Run started it runs the replay and exits;
// elsewhere it returns at once.
func ChildMain() {
	if os.Getenv(ChildEnv) != "" {
		os.Exit(Main(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
	}
}

func parseArgs(args []string, stderr io.Writer) (o Options, all bool, err error) {
	if len(args) == 0 {
		return o, false, fmt.Errorf("no mode")
	}
	if args[0] == "-h" || args[0] == "--help" {
		fmt.Fprint(stderr, usage)
		return o, false, pflag.ErrHelp
	}
	o.Mode = Mode(args[0])
	fl := pflag.NewFlagSet("replay "+args[0], pflag.ContinueOnError)
	fl.SetOutput(stderr)
	fl.StringVar((*string)(&o.Cache), "cache", string(KindTriton), "the cache's kind: triton, vllm or inductor")
	fl.StringVar(&o.Root, "root", "", "the root the framework is pointed at (TRITON_CACHE_DIR, VLLM_CACHE_ROOT, TORCHINDUCTOR_CACHE_DIR)")
	fl.StringVar(&o.Expect, "expect", "", "source cache dir to compare every file read with")
	fl.StringVar(&o.From, "from", "", "source cache dir to write misses from")
	fl.StringVar(&o.Name, "name", "", "Triton: kernel name (or launcher .so); vLLM: rank dir and prefix; default: list each KEY dir")
	fl.BoolVar(&o.Atomic, "atomic", false, "vLLM miss: save artifacts by tmp + rename, not in place")
	fl.IntVarP(&o.Procs, "procs", "p", 1, "processes replaying at once")
	fl.BoolVar(&o.Split, "split", false, "share the keys among the processes instead of each replaying all")
	fl.BoolVar(&o.Trace, "trace", false, "print the syscalls of each replay")
	fl.BoolVar(&all, "all", false, "replay every KEY of the --from (or --expect) root")
	if err := fl.Parse(args[1:]); err != nil {
		return o, false, err
	}
	o.Keys = fl.Args()
	switch {
	case all && len(o.Keys) > 0:
		return o, false, fmt.Errorf("--all and KEY arguments")
	case all && o.From == "" && o.Expect == "":
		return o, false, fmt.Errorf("--all needs --from or --expect")
	case !all:
		if err := o.check(); err != nil {
			return o, false, err
		}
	case o.kind() != KindTriton && o.kind() != KindVLLM && o.kind() != KindInductor:
		return o, false, fmt.Errorf("unknown cache kind %q (want triton, vllm or inductor)", o.Cache)
	}
	return o, all, nil
}

// KeysIn lists the keys of a cache root of a kind, as the replay command's
// --all does: Triton's KEY dirs, vLLM's hash dirs, Inductor's units.
func KeysIn(kind Kind, dir string) ([]string, error) { return keysIn(kind, dir) }

// HitAll replays the HIT of every key of root (KeysIn) in this process,
// each file read compared with the source root expect ("" for none), as
// replay hit --all does. It returns the results that are not hits, and an
// error for bad options or a root without keys.
func HitAll(ctx context.Context, kind Kind, root, expect string) (Summary, []Result, error) {
	keys, err := KeysIn(kind, root)
	if err != nil {
		return Summary{}, nil, err
	}
	var bad []Result
	sum, err := Run(ctx, Options{Mode: ModeHit, Cache: kind, Root: root, Keys: keys, Expect: expect}, func(r Result) {
		if r.Outcome != OutcomeHit {
			bad = append(bad, r)
		}
	})
	return sum, bad, err
}

// keysIn lists the keys of a source root of a kind: Triton's KEY dirs,
// vLLM's hash dirs, Inductor's units.
func keysIn(kind Kind, dir string) ([]string, error) {
	switch kind {
	case KindInductor:
		return inductorUnits(dir)
	case KindVLLM:
		tcc := filepath.Join(dir, vllmCacheDir)
		des, err := os.ReadDir(tcc)
		if err != nil {
			return nil, err
		}
		var keys []string
		for _, de := range des {
			if de.IsDir() && de.Name() != vllmAOTDir {
				keys = append(keys, de.Name())
			}
		}
		if len(keys) == 0 {
			return nil, fmt.Errorf("%s holds no hash dir", tcc)
		}
		return keys, nil
	}
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var keys []string
	for _, de := range des {
		if de.IsDir() && triton.IsKey(de.Name()) {
			keys = append(keys, de.Name())
		}
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("%s: %w", dir, triton.ErrNoEntries)
	}
	return keys, nil
}
