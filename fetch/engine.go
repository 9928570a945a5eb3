package resolver

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	digest "github.com/opencontainers/go-digest"

	"cargohold/layer"
	"cargohold/store"
)

// LayerRef locates one layer without needing its manifest again; it is
// persistable as JSON.
type LayerRef struct {
	Repo      string        `json:"repo,omitempty"`   // registry repository (name.Repository.Name()), "" for local
	Layout    string        `json:"layout,omitempty"` // local OCI layout dir, "" for registry
	Desc      v1.Descriptor `json:"desc"`             // digest, size, media type, annotations
	TOCDigest string        `json:"toc_digest,omitempty"`
	DiffID    v1.Hash       `json:"diff_id"` // uncompressed digest from the config (legacy gzip store key)
}

// String names the layer for errors and logs: repo@digest or layout@digest.
func (l LayerRef) String() string {
	where := l.Repo
	if where == "" {
		where = l.Layout
	}
	return where + "@" + l.Desc.Digest.String()
}

func (l LayerRef) check() error {
	switch {
	case l.Desc.Digest.Algorithm != "sha256" || len(l.Desc.Digest.Hex) != 64:
		return fmt.Errorf("resolver: layer %s: not a sha256 digest", l)
	case l.Desc.Size < 0:
		return fmt.Errorf("resolver: layer %s: unknown size", l)
	case (l.Repo == "") == (l.Layout == ""):
		return fmt.Errorf("resolver: layer %s: want exactly one of repo and layout", l)
	}
	return nil
}

// LayerRef returns the LayerRef of layer i; the zero LayerRef (which Index
// refuses) when there is no layer i.
func (im *Image) LayerRef(i int) LayerRef {
	if i < 0 || i >= len(im.Layers) {
		return LayerRef{}
	}
	l := im.Layers[i]
	ref := LayerRef{Desc: l.Desc, TOCDigest: l.TOCDigest}
	if im.Local {
		ref.Layout = im.Layout
	} else {
		ref.Repo = im.Repo.Name()
	}
	if im.Config != nil && i < len(im.Config.RootFS.DiffIDs) {
		ref.DiffID = im.Config.RootFS.DiffIDs[i]
	}
	return ref
}

// KeyFile is one file of a fetched KEY dir, stored in the content store
// under Digest. Group files are stored as the image holds them (child paths
// relative, triton.ImageRoot); whoever serves them rewrites them.
type KeyFile struct {
	Name   string
	Size   int64
	Mode   os.FileMode // permission bits only
	Digest digest.Digest
	Group  bool // triton.IsGroupFile(Name)
}

// EngineStats are an Engine's counters since NewEngine.
type EngineStats struct {
	// Fetches is FetchDir calls that read a KEY dir (one request, or the
	// local copy of a legacy gzip layer); Hits those answered from the
	// content store without reading anything.
	Fetches int64 `json:"fetches"`
	Hits    int64 `json:"hits"`
	// Indexes is layer indexes built from blob reads, IndexCacheHits those
	// loaded from the disk cache.
	Indexes        int64 `json:"indexes"`
	IndexCacheHits int64 `json:"index_cache_hits"`
	// Downloads is whole-blob downloads of legacy gzip layers.
	Downloads int64 `json:"downloads"`
	// Requests and Bytes are the blob reads and bytes received on behalf of
	// the Engine (retries included); Retries the retried attempts.
	Requests int64 `json:"requests"`
	Bytes    int64 `json:"bytes"`
	Retries  int64 `json:"retries"`
	// Errors is Index and FetchDir calls that failed, a KEY absent from a
	// layer not counted. LastError is the latest one's message.
	Errors      int64     `json:"errors"`
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
}

// Engine fetches single KEY dirs out of image layers: it indexes a layer
// once (eStargz TOC, uncompressed tar in large blocks, or a legacy gzip
// downloaded whole), caches the index on disk by layer digest, and reads a
// KEY dir with one ranged request over its span, verifying every file before
// putting it into the content store.
//
// Lock order: flight.mu, then lifetime.mu; Engine.mu is never held with
// either.
type Engine struct {
	// immutable after NewEngine
	res   *Resolver
	st    *store.Store
	state string
	life  *lifetime

	indexes flight[*layer.Index]
	dirs    flight[[]KeyFile]
	// downloads keep running when every caller has given up (keep): a big
	// legacy layer takes longer than one lookup waits, and every lookup in
	// it misses until it is in. Close stops them.
	downloads flight[struct{}]
	traffic   Counters

	mu    sync.Mutex
	idx   *indexLRU            // guarded by mu: the layer indexes kept in memory
	known map[string][]KeyFile // guarded by mu: dirs whose digests were learnt by fetching, by dirKey
	stats EngineStats          // guarded by mu; traffic fields filled in by Stats
}

// NewEngine returns an Engine reading blobs through r and storing files in
// st. Layer indexes are cached in stateDir/layers/<digest>.json (the
// Options.LayerIndexes most recently used ones also in memory), and digests
// learnt by fetching (tar bodies the index skipped) in
// stateDir/layers/<digest>.keys/<KEY>.json.
func NewEngine(r *Resolver, st *store.Store, stateDir string) *Engine {
	return &Engine{
		res:       r,
		st:        st,
		state:     stateDir,
		life:      newLifetime(),
		downloads: flight[struct{}]{keep: true},
		idx:       newIndexLRU(r.opts.LayerIndexes),
		known:     map[string][]KeyFile{},
	}
}

// Close cancels fetches in progress and waits for them to end. The store
// and the Resolver stay open: they are the caller's.
func (e *Engine) Close() error {
	e.life.close()
	return nil
}

// errEngineClosed answers calls after Close.
var errEngineClosed = fmt.Errorf("resolver: engine: %w", fs.ErrClosed)

// Stats returns a snapshot of the counters.
func (e *Engine) Stats() EngineStats {
	e.mu.Lock()
	s := e.stats
	e.mu.Unlock()
	s.Requests = e.traffic.Requests.Load()
	s.Bytes = e.traffic.Bytes.Load()
	s.Retries = e.traffic.Retries.Load()
	return s
}

// recordErr counts a failed call; a KEY that is not there is an answer,
// not a failure.
func (e *Engine) recordErr(err error) {
	if err == nil || errors.Is(err, fs.ErrNotExist) {
		return
	}
	e.mu.Lock()
	e.stats.Errors++
	e.stats.LastError = err.Error()
	e.stats.LastErrorAt = time.Now()
	e.mu.Unlock()
	e.res.opts.Logger.Warn("lazy fetch failed", "err", err)
}

func (e *Engine) bump(f func(*EngineStats)) {
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
func WithCounters(ctx context.Context, c *Counters) context.Context {
	return context.WithValue(ctx, countersKey{}, c)
}

// account adds one blob's traffic to the Engine and to ctx's Counters. The
// Resolver's counters saw it live already (Options.Counters).
func (e *Engine) account(ctx context.Context, c *Counters) {
	req, bytes, errs, retries := c.Requests.Load(), c.Bytes.Load(), c.Errors.Load(), c.Retries.Load()
	e.traffic.add(nil, req, bytes, errs, retries)
	if cc, _ := ctx.Value(countersKey{}).(*Counters); cc != nil {
		cc.add(nil, req, bytes, errs, retries)
	}
}

// meteredBlob is a layer blob whose own counters cover this use only.
type meteredBlob interface {
	Blob
	ContextReaderAt
	Counters() *Counters
}

// openBlob opens l's blob for ranged reads: one RegistryBlob per use, over
// the repository's shared transport, so its counters are this use's.
func (e *Engine) openBlob(ctx context.Context, l LayerRef) (meteredBlob, error) {
	if l.Layout != "" {
		return OpenFileBlob(l.Layout, l.Desc, e.res.opts)
	}
	repo, err := e.repo(l)
	if err != nil {
		return nil, err
	}
	rt, err := e.res.Transport(ctx, repo)
	if err != nil {
		return nil, err
	}
	return NewRegistryBlob(ctx, rt, repo, l.Desc, e.res.opts)
}

func (e *Engine) repo(l LayerRef) (name.Repository, error) {
	repo, err := name.NewRepository(l.Repo, nameOpts(e.res.opts)...)
	if err != nil {
		return name.Repository{}, fmt.Errorf("resolver: layer %s: %w: %w", l, ErrInvalidRef, err)
	}
	return repo, nil
}

// DefaultStateDir is where lazy fetching keeps its state (content store,
// layer indexes) unless told otherwise:
// ${XDG_CACHE_HOME:-$HOME/.cache}/cargohold.
func DefaultStateDir() string {
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			home = "."
		}
		cache = filepath.Join(home, ".cache")
	}
	return filepath.Join(cache, "cargohold")
}

// StoreDir is the content store inside a state dir: stateDir/store.
func StoreDir(stateDir string) string { return filepath.Join(stateDir, "store") }
