package replay

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"time"
)

// Mode says what the replay does for each KEY.
type Mode string

const (
	ModeHit  Mode = "hit"  // read each KEY as a cache hit
	ModeMiss Mode = "miss" // write each KEY as a local compile, then read it back
	ModeAuto Mode = "auto" // hit, and where Triton would compile, miss
)

// Kind is the cache a replay plays the framework of.
type Kind string

const (
	KindTriton   Kind = "triton"   // TRITON_CACHE_DIR; a key is a KEY dir
	KindVLLM     Kind = "vllm"     // $VLLM_CACHE_ROOT; a key is a hash dir under torch_compile_cache
	KindInductor Kind = "inductor" // TORCHINDUCTOR_CACHE_DIR; a key is a unit's path under it
)

// Options configure Run. Zero values are the defaults each field names.
type Options struct {
	Mode   Mode
	Cache  Kind     // the cache's kind; default KindTriton
	Root   string   // the root the framework is pointed at (see Kind); required
	Keys   []string // keys to replay, in order (see Kind)
	Expect string   // hit: compare every file with the source root Expect; default none (auto: From)
	From   string   // miss, auto: source root holding the keys; required for them
	Name   string   // Triton: the kernel name (or launcher .so); vLLM: rank dir and prefix ("rank_0_0/backbone"); default: list the key's dir; Inductor: none
	Atomic bool     // vLLM miss: save artifacts by tmp + rename; default open("wb") in place
	Procs  int      // OS processes replaying at once; 0 or 1 replays in this process
	Split  bool     // with Procs > 1, share the keys out round-robin; default every process replays every key
	Trace  bool     // keep each Result's syscall trace; default dropped
	Exe    string   // program re-executed for Procs > 1; default os.Executable(), which must call ChildMain
}

// Summary totals a Run.
type Summary struct {
	Mode       Mode    `json:"mode"`
	Cache      Kind    `json:"cache"`
	Root       string  `json:"root"`
	Procs      int     `json:"procs"`
	Keys       int     `json:"keys"`
	Replays    int     `json:"replays"` // results: keys times processes (or keys, split)
	Hits       int     `json:"hits"`
	Misses     int     `json:"misses"`
	Errors     int     `json:"errors"`
	Mismatches int     `json:"mismatches"` // errors that are byte mismatches
	Bytes      int64   `json:"bytes"`
	Seconds    float64 `json:"seconds"`
}

// OK reports whether every replay succeeded.
func (s Summary) OK() bool { return s.Errors == 0 }

func (s *Summary) add(r Result) {
	s.Replays++
	s.Bytes += r.Bytes
	switch r.Outcome {
	case OutcomeHit:
		s.Hits++
	case OutcomeMiss:
		s.Misses++
	default:
		s.Errors++
		if r.Mismatch {
			s.Mismatches++
		}
	}
}

// kind is the cache kind, defaulted.
func (o *Options) kind() Kind {
	if o.Cache == "" {
		return KindTriton
	}
	return o.Cache
}

func (o *Options) check() error {
	switch o.kind() {
	case KindTriton, KindVLLM:
	case KindInductor:
		if o.Name != "" {
			return fmt.Errorf("replay: an Inductor unit has no name")
		}
	default:
		return fmt.Errorf("replay: unknown cache kind %q (want triton, vllm or inductor)", o.Cache)
	}
	if o.Atomic && o.kind() != KindVLLM {
		return fmt.Errorf("replay: atomic saves are vLLM's")
	}
	switch o.Mode {
	case ModeHit:
	case ModeMiss, ModeAuto:
		if o.From == "" {
			return fmt.Errorf("replay: %s needs a source dir (From)", o.Mode)
		}
	default:
		return fmt.Errorf("replay: unknown mode %q (want hit, miss or auto)", o.Mode)
	}
	if o.Root == "" {
		return fmt.Errorf("replay: no cache root")
	}
	if len(o.Keys) == 0 {
		return fmt.Errorf("replay: no keys")
	}
	return nil
}

// Run replays every key and calls report (which may be nil) with each
// result as it comes, from one goroutine at a time. Failed replays are
// counted in the Summary, not returned: the error is for bad options and
// processes that could not run.
func Run(ctx context.Context, o Options, report func(Result)) (Summary, error) {
	if err := o.check(); err != nil {
		return Summary{}, err
	}
	if report == nil {
		report = func(Result) {}
	}
	start := time.Now()
	sum := Summary{Mode: o.Mode, Cache: o.kind(), Root: o.Root, Procs: 1, Keys: len(o.Keys)}
	var err error
	if o.Procs > 1 {
		err = runProcs(ctx, o, &sum, report)
	} else {
		for _, key := range o.Keys {
			if err = ctx.Err(); err != nil {
				break
			}
			r := o.one(key)
			sum.add(r)
			report(r)
		}
	}
	sum.Seconds = time.Since(start).Seconds()
	return sum, err
}

// one replays one key in this process.
func (o *Options) one(key string) Result {
	p := newPyos()
	expect := o.Expect
	if o.Mode == ModeAuto && expect == "" {
		expect = o.From
	}
	var hit, miss func() (Result, error)
	switch o.kind() {
	case KindVLLM:
		hit = func() (Result, error) { return p.vllmHit(o.Root, key, o.Name, expect) }
		miss = func() (Result, error) { return p.vllmMiss(o.Root, key, o.Name, o.From, o.Atomic) }
	case KindInductor:
		hit = func() (Result, error) { return p.inductorHit(o.Root, key, expect) }
		miss = func() (Result, error) { return p.inductorMiss(o.Root, key, o.From) }
	default:
		hit = func() (Result, error) { return p.hit(o.Root, key, o.Name, expect) }
		miss = func() (Result, error) { return p.miss(o.Root, key, o.From) }
	}
	var r Result
	switch o.Mode {
	case ModeHit:
		r, _ = hit()
	case ModeMiss:
		r, _ = miss()
	case ModeAuto:
		var err error
		if r, err = hit(); errors.Is(err, ErrNotFound) {
			r, _ = miss() // the trace goes on from the hit's
		}
	}
	if !o.Trace {
		r.Trace = nil
	}
	return r
}

// ChildEnv marks a process started by Run for Procs > 1; its value is the
// process number, from 1.
const ChildEnv = "CARGOHOLD_REPLAY_CHILD"

// runProcs starts the processes, lets them go at once (closing their stdin
// is the starting gun) and collects the JSON results they print.
func runProcs(ctx context.Context, o Options, sum *Summary, report func(Result)) error {
	exe := o.Exe
	if exe == "" {
		var err error
		if exe, err = os.Executable(); err != nil {
			return fmt.Errorf("replay: find own program: %w", err)
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type child struct {
		cmd   *exec.Cmd
		keys  []string
		stdin io.Closer
		out   io.Reader
	}
	var children []*child
	for i := 0; i < o.Procs; i++ {
		keys := o.Keys
		if o.Split {
			keys = nil
			for j := i; j < len(o.Keys); j += o.Procs {
				keys = append(keys, o.Keys[j])
			}
			if len(keys) == 0 {
				continue
			}
		}
		c := &child{keys: keys}
		c.cmd = exec.CommandContext(ctx, exe, o.childArgs(keys)...)
		c.cmd.Env = append(os.Environ(), ChildEnv+"="+strconv.Itoa(i+1))
		c.cmd.Stderr = os.Stderr
		var err error
		if c.stdin, err = c.cmd.StdinPipe(); err != nil {
			return fmt.Errorf("replay: process %d: %w", i+1, err)
		}
		if c.out, err = c.cmd.StdoutPipe(); err != nil {
			return fmt.Errorf("replay: process %d: %w", i+1, err)
		}
		if err := c.cmd.Start(); err != nil {
			for _, c := range children {
				c.stdin.Close()
				c.cmd.Wait()
			}
			return fmt.Errorf("replay: start process %d: %w", i+1, err)
		}
		children = append(children, c)
	}
	sum.Procs = len(children)
	for _, c := range children {
		c.stdin.Close()
	}
	var mu sync.Mutex // serializes report and sum
	var wg sync.WaitGroup
	for i, c := range children {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got := 0
			sc := bufio.NewScanner(c.out)
			sc.Buffer(make([]byte, 64<<10), 64<<20)
			for sc.Scan() {
				var r Result
				if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
					continue // not a result line
				}
				got++
				mu.Lock()
				sum.add(r)
				report(r)
				mu.Unlock()
			}
			err := c.cmd.Wait()
			if got < len(c.keys) {
				// The process died or was killed: each key it owed is an error.
				for _, key := range c.keys[got:] {
					r := Result{Key: key, Outcome: OutcomeError, Proc: i + 1,
						Error: fmt.Sprintf("replay: process %d ended (%v) before replaying %s", i+1, err, key)}
					mu.Lock()
					sum.add(r)
					report(r)
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	return ctx.Err()
}

// childArgs is the command line that makes a child replay keys.
func (o *Options) childArgs(keys []string) []string {
	args := []string{string(o.Mode), "--cache", string(o.kind()), "--root", o.Root}
	if o.Expect != "" {
		args = append(args, "--expect", o.Expect)
	}
	if o.From != "" {
		args = append(args, "--from", o.From)
	}
	if o.Name != "" {
		args = append(args, "--name", o.Name)
	}
	if o.Atomic {
		args = append(args, "--atomic")
	}
	if o.Trace {
		args = append(args, "--trace")
	}
	return append(append(args, "--"), keys...)
}
