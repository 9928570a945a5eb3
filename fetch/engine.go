package fetch

import (
	"context"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"

	digest "github.com/opencontainers/go-digest"
	"golang.org/x/sync/semaphore"

	"cargohold/internal/userdir"
	"cargohold/kind"
	"cargohold/resolver"
	"cargohold/store"
)

// KeyFile is one file of a fetched unit (a KEY dir, or a vLLM or Inductor
// dir), stored in the content store under Digest. Files are stored as the
// image holds them (group files with the build host's absolute child
// paths, or relative in images of older cargohold); whoever serves or
// installs them applies the kind's rewrites (kind.RewriteOf).
type KeyFile struct {
	Name   string
	Size   int64
	Mode   os.FileMode // permission bits only
	Digest digest.Digest
	// Rewrite is what whoever serves the file changes in it (set by the
	// catalog, which knows the kind: kind.RewriteOf); RewriteNone from
	// the engine itself.
	Rewrite kind.Rewrite `json:"-"`
}

// Stats are an Engine's counters since NewEngine. They count work, not
// failures: a failed call is recorded once, by whoever turns it into an
// errno or an exit code.
type Stats struct {
	// Fetches is Dir calls that read a KEY dir (one request, or the local
	// copy of a legacy gzip layer); Hits those answered from the content
	// store without reading anything.
	Fetches int64 `json:"fetches"`
	Hits    int64 `json:"hits"`
	// Indexes is layer indexes built from blob reads, IndexCacheHits those
	// loaded from the disk cache.
	Indexes        int64 `json:"indexes"`
	IndexCacheHits int64 `json:"index_cache_hits"`
	// Downloads is whole-blob reads: legacy gzip layers downloaded into
	// the store, and layers read whole to check their index (Index).
	Downloads int64 `json:"downloads"`
	// Requests and Bytes are the blob reads and bytes received on behalf of
	// the Engine (retries included); Retries the retried attempts.
	Requests int64 `json:"requests"`
	Bytes    int64 `json:"bytes"`
	Retries  int64 `json:"retries"`
	// PrefetchRanges is ranged reads made by Prefetch, PrefetchDirs the KEY
	// dirs they committed, PrefetchSkipped the dirs left out because the
	// budget (store limit, disk space) was used or a range failed.
	PrefetchRanges  int64 `json:"prefetch_ranges"`
	PrefetchDirs    int64 `json:"prefetch_dirs"`
	PrefetchSkipped int64 `json:"prefetch_skipped"`
}

// Engine fetches single KEY dirs out of image layers: it indexes a layer
// once (layer.Open over the layer's ranged Blob, or the local tar of a
// legacy gzip layer), caches the index on disk by layer digest, and reads a
// KEY dir with one ranged read over its span, verifying every file before
// putting it into the content store.
//
// Lock order: flight.mu, then lifetime.mu; Engine.mu is never held with
// either.
type Engine struct {
	// immutable after NewEngine
	res   *resolver.Resolver
	st    *store.Store
	state string
	log   *slog.Logger
	life  *lifetime

	indexes flight[*indexed]
	dirs    flight[[]KeyFile]
	// downloads keep running when every caller has given up (keep): a big
	// legacy layer takes longer than one lookup waits, and every lookup in
	// it misses until it is in. Close stops them.
	downloads flight[struct{}]
	traffic   resolver.Counters
	// prefetchSem holds a token per prefetch range in flight, commitSem
	// one per prefetch commit running.
	prefetchSem chan struct{}
	commitSem   chan struct{}
	loading     chan struct{}       // a token per layer index being loaded (loadIndex), indexSlots at most
	parsing     *semaphore.Weighted // TOC bytes being parsed into indexes at once, tocBudget at most (loadIndex)

	mu       sync.Mutex
	reserved int64     // guarded by mu: store bytes that prefetch ranges in flight will put
	idx      *indexLRU // guarded by mu: the layer indexes kept in memory
	stats    Stats     // guarded by mu; traffic fields filled in by Stats
}

// NewEngine returns an Engine reading blobs through r and storing files in
// st. Layer indexes are cached in stateDir/layers/<digest>.json (the
// resolver's Options.LayerIndexes most recently used ones also in memory).
func NewEngine(r *resolver.Resolver, st *store.Store, stateDir string) *Engine {
	// Digests older versions learnt from unverified bytes: never read again.
	if old, _ := filepath.Glob(filepath.Join(stateDir, "layers", "*.keys")); len(old) > 0 {
		for _, p := range old {
			os.RemoveAll(p)
		}
	}
	return &Engine{
		res:         r,
		st:          st,
		state:       stateDir,
		log:         r.Options().Logger,
		life:        newLifetime(),
		downloads:   flight[struct{}]{keep: true},
		prefetchSem: make(chan struct{}, prefetchRanges),
		commitSem:   make(chan struct{}, commitSlots()),
		idx:         newIndexLRU(r.Options().LayerIndexes),
		loading:     make(chan struct{}, indexSlots),
		parsing:     semaphore.NewWeighted(tocBudget),
	}
}

// Close cancels fetches in progress and waits for them to end. The store
// and the Resolver stay open: they are the caller's.
func (e *Engine) Close() error {
	e.life.close()
	return nil
}

// errEngineClosed answers calls after Close.
var errEngineClosed = fmt.Errorf("fetch: engine: %w", fs.ErrClosed)

// Stats returns a snapshot of the counters.
func (e *Engine) Stats() Stats {
	e.mu.Lock()
	s := e.stats
	e.mu.Unlock()
	s.Requests = e.traffic.Requests()
	s.Bytes = e.traffic.Bytes()
	s.Retries = e.traffic.Retries()
	return s
}

// Open opens a fetched file's content in the store (pinning it until
// Close). An evicted file is an error matching fs.ErrNotExist: fetch its
// dir again.
func (e *Engine) Open(f KeyFile) (*store.File, error) { return e.st.Open(f.Digest) }

func (e *Engine) bump(f func(*Stats)) {
	e.mu.Lock()
	f(&e.stats)
	e.mu.Unlock()
}

// countersKey carries per-call Counters in a context.
type countersKey struct{}

// WithCounters returns ctx carrying c: Engine calls made with it add the
// requests and bytes they cause to c (as well as to the Engine's and the
// Resolver's counters). A call that joins a fetch another caller started
// adds nothing; the traffic is counted once, for the caller that started it.
func WithCounters(ctx context.Context, c *resolver.Counters) context.Context {
	return context.WithValue(ctx, countersKey{}, c)
}

// account adds one blob use's traffic to the Engine and to ctx's Counters.
// The Resolver's counters saw it live already.
func (e *Engine) account(ctx context.Context, c *resolver.Counters) {
	e.traffic.Add(c)
	if cc, _ := ctx.Value(countersKey{}).(*resolver.Counters); cc != nil {
		cc.Add(c)
	}
}

// DefaultStateDir is where lazy fetching keeps its state (content store,
// layer indexes) unless told otherwise:
// ${XDG_CACHE_HOME:-$HOME/.cache}/cargohold, or the per-user runtime dir's
// cargohold without $HOME; an error when the user has neither (never a
// shared or relative fallback).
func DefaultStateDir() (string, error) { return userdir.Cache("cargohold") }

// StoreDir is the content store inside a state dir: stateDir/store.
func StoreDir(stateDir string) string { return filepath.Join(stateDir, "store") }
