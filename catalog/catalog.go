package catalog

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"cargohold/fetch"
	"cargohold/gpu"
	"cargohold/kind"
	"cargohold/resolver"
	"cargohold/store"
)

// DefaultRefresh is how often Run rebuilds the catalog when Config.Refresh
// is zero: tags can move.
const DefaultRefresh = 5 * time.Minute

// DefaultRetry is the first wait before Run tries again after a refresh in
// which some source failed, when Config.Retry is zero; it doubles on each
// failure, up to maxRetry (and never past the refresh interval).
const DefaultRetry = time.Second

// maxRetry caps the retry backoff: a source that comes back is indexed
// within a minute.
const maxRetry = time.Minute

// indexWorkers bounds the images resolved at once during a refresh (each
// costs a few sequential round trips on a miss).
const indexWorkers = 8

// Config configures a Catalog.
type Config struct {
	// Sources are the images to index, highest priority first; see the
	// package doc for the forms. At least one is needed.
	Sources []string
	// Kind is the cache kind the catalog serves: images of other kinds are
	// listed (ImageInfo says why) but not indexed. Default kind.Triton.
	Kind kind.Kind
	// Targets are the local GPU targets (gpu.Detect). An image whose labels
	// name none of them is not indexed; an empty list indexes only images
	// without usable labels (their fit is decided by Entry).
	Targets []gpu.Target
	// StateDir holds StateFile, the persisted catalog. Default "": nothing
	// is persisted and Load fails.
	StateDir string
	// Refresh is Run's interval. Default DefaultRefresh; negative: Run
	// refreshes once.
	Refresh time.Duration
	// Retry is Run's first wait after a refresh in which some source failed
	// (a registry down at start): it refreshes again then, doubling the wait
	// on each failure, until every source answers. Default DefaultRetry;
	// negative: failed sources wait for the next refresh.
	Retry time.Duration
	// Logger receives refresh results, per-source errors, label errors and
	// skipped locations. Default discards.
	Logger *slog.Logger
	// Prefetch: once a layer has served an Entry, its other KEY dirs that
	// fit the local targets are fetched in the background (prefetch.go).
	// Default false: strictly lazy.
	Prefetch bool
	// Built, when set, is called after a refresh that read new images, once
	// the new catalog is installed: what the refresh allocated is garbage
	// then (cargohold-fs returns it to the OS). Default none.
	Built func()
	// Refreshed, when set, is called after every refresh that installed a
	// catalog (also one where sources failed), and after Load: what the
	// catalog says may have changed (cargohold-fs writes its status on
	// change only, and is otherwise idle). Default none.
	Refreshed func()
}

// Location is one place a KEY lives: a layer of an image.
type Location struct {
	// Image is "REPO@DIGEST" for a registry image, "oci:DIR@DIGEST" for a
	// layout (or local store) image.
	Image string
	// Source is the position of the Config.Sources entry it came from.
	Source int
	// Layer is the layer holding the KEY dir (the last one, when several
	// do: later layers win).
	Layer resolver.LayerRef
	// Layers lists every layer holding the KEY dir, in layer order, when
	// there are several (Layer is the last); nil when Layer alone does.
	// Entry merges them file by file, a later layer's file winning, as
	// unpacking the image would.
	Layers []resolver.LayerRef
	// Created is the image config's creation time.
	Created time.Time
	// Kernel is the kernel's target as the image's metadata label says;
	// nil for launcher and other dirs and for images without usable labels.
	Kernel *gpu.Target
}

// ImageInfo describes one image of the catalog, for status and humans.
type ImageInfo struct {
	Ref        string       `json:"ref"`   // as listed: "REG/REPO:TAG", "oci:DIR:NAME"
	Image      string       `json:"image"` // Location.Image
	Source     int          `json:"source"`
	Created    time.Time    `json:"created"`
	Targets    []gpu.Target `json:"targets,omitempty"` // from labels
	Fits       bool         `json:"fits"`              // some KEYs indexed (or left to Entry)
	Kind       kind.Kind    `json:"kind,omitempty"`    // the image's cache kind, when known
	Why        string       `json:"why,omitempty"`     // why its units are not (all) indexed
	Keys       int          `json:"keys"`
	LabelError string       `json:"label_error,omitempty"`
	Unlabelled bool         `json:"unlabelled,omitempty"`
}

// Stats are a Catalog's counters.
type Stats struct {
	Images      int `json:"images"`        // images in the catalog (fitting or not)
	Keys        int `json:"keys"`          // distinct KEYs
	Locations   int `json:"locations"`     // KEY locations over all images
	LabelErrors int `json:"label_errors"`  // images whose labels are malformed (indexed whole, fit left to Entry)
	Unlabelled  int `json:"unlabelled"`    // images without labels (indexed whole, fit left to Entry)
	SourceErrs  int `json:"source_errors"` // sources whose last refresh failed (a gauge)

	Refreshes   int64         `json:"refreshes"`  // completed refreshes
	RefreshTime time.Duration `json:"refresh_ns"` // the last one's duration
	LastRefresh time.Time     `json:"last_refresh,omitzero"`
	// SourceFailures counts source refreshes that failed, once each: the
	// one place a failing source is counted.
	SourceFailures int64 `json:"source_failures"`
	LabelLies      int64 `json:"label_lies"`      // Entry found a kernel JSON that does not fit although the label said it did
	Misfits        int64 `json:"misfits"`         // Entry found a kernel JSON that does not fit in an image without usable labels
	EntryHits      int64 `json:"entry_hits"`      // Entry calls that returned files
	EntryMisses    int64 `json:"entry_misses"`    // Entry calls that returned an error
	EntryFallbacks int64 `json:"entry_fallbacks"` // locations Entry tried after a first one failed or did not fit
}

// fetcher is what the catalog needs of the fetch engine (*fetch.Engine).
type fetcher interface {
	// Units lists a layer's kind and units without keeping its index in
	// memory.
	Units(ctx context.Context, l resolver.LayerRef) (fetch.Units, error)
	Key(ctx context.Context, layers []resolver.LayerRef, key string) ([]fetch.KeyFile, error)
	Open(f fetch.KeyFile) (*store.File, error)
	Prefetch(l resolver.LayerRef, keys []string) <-chan error
}

// Catalog maps KEY -> locations over a list of image sources. Lookups read
// an immutable snapshot through an atomic pointer: they take no lock that a
// refresh holds and do no I/O.
//
// Lock order: refreshMu, verdictMu and prefetchMu are never held together.
type Catalog struct {
	// immutable after New
	r       *resolver.Resolver
	eng     fetcher
	cfg     Config
	sources []source
	log     *slog.Logger
	ready   chan struct{}

	readyOnce sync.Once
	cur       atomic.Pointer[snapshot]
	refreshMu sync.Mutex // serialises Refresh and Load

	// guarded by verdictMu: Entry's fit verdicts by layer digest + KEY
	verdictMu sync.Mutex
	verdicts  map[string]bool

	// guarded by prefetchMu: layers whose prefetch started, by digest
	prefetchMu sync.Mutex
	prefetched map[string]bool

	refreshes   atomic.Int64
	refreshNS   atomic.Int64
	lastRefresh atomic.Int64 // unix ns
	labelLies   atomic.Int64
	misfits     atomic.Int64
	hits        atomic.Int64
	misses      atomic.Int64
	fallbacks   atomic.Int64
	srcFailures atomic.Int64
}

// imageRec is what the catalog keeps of one image: immutable once built, and
// shared by every snapshot (and refresh) that sees the same memo key.
type imageRec struct {
	Memo    string              `json:"memo"` // candidate.memo
	Image   string              `json:"image"`
	Created time.Time           `json:"created"`
	Layers  []resolver.LayerRef `json:"layers"`
	Targets []gpu.Target        `json:"targets,omitempty"`
	Kernels []gpu.Target        `json:"kernels,omitempty"` // distinct fitting kernel targets; keyRec.Kernel points in
	// Earlier are the distinct sets of earlier layers (ascending indexes
	// into Layers) that also hold a KEY dir; keyRec.Earlier points in. Most
	// images have one layer, so most records have none.
	Earlier    [][]uint16 `json:"earlier,omitempty"`
	Kind       kind.Kind  `json:"kind,omitempty"` // the image's cache kind, when known
	Why        string     `json:"why,omitempty"`  // why its units are not (all) indexed
	LabelError string     `json:"label_error,omitempty"`
	Unlabelled bool       `json:"unlabelled,omitempty"`
	Fits       bool       `json:"fits"`
	Keys       []keyRec   `json:"keys,omitempty"` // sorted by Key
}

// keyRec is one KEY of an image: 24 bytes besides the KEY's own bytes
// (Earlier fits in what would be padding).
type keyRec struct {
	Key     string `json:"k"`
	Layer   uint16 `json:"l,omitempty"` // index into imageRec.Layers: the last layer holding the KEY dir
	Kernel  uint16 `json:"t,omitempty"` // 1 + index into imageRec.Kernels; 0: none
	Earlier uint16 `json:"e,omitempty"` // 1 + index into imageRec.Earlier; 0: Layer alone holds the KEY dir
}

// entry is an image as one snapshot lists it.
type entry struct {
	ref    string
	source int
	rec    *imageRec
}

// loc is one location of a KEY: 16 bytes.
type loc struct {
	e *entry
	k *keyRec
}

// snapshot is one immutable state of the catalog.
type snapshot struct {
	entries []*entry // priority order, one per image
	keys    map[string][]loc
	errs    map[string]error // by source, failed ones only
	nlocs   int
	saved   bool // StateFile holds entries (set before the snapshot is installed)

	sortOnce sync.Once
	sorted   []string // the keys of keys, sorted: built on the first Dir (only nested kinds ask)
}

// sortedKeys returns the snapshot's units in order, so that the units
// below a dir are one range of it.
func (s *snapshot) sortedKeys() []string {
	s.sortOnce.Do(func() { s.sorted = slices.Sorted(maps.Keys(s.keys)) })
	return s.sorted
}

// New returns an empty Catalog over cfg.Sources, reading images through r
// and KEY dirs through eng; call Load and Refresh (or Run) to fill it.
// Sources are parsed here, so a malformed one is an error now.
func New(r *resolver.Resolver, eng *fetch.Engine, cfg Config) (*Catalog, error) {
	return newCatalog(r, eng, cfg)
}

func newCatalog(r *resolver.Resolver, eng fetcher, cfg Config) (*Catalog, error) {
	if len(cfg.Sources) == 0 {
		return nil, fmt.Errorf("catalog: no sources")
	}
	cat := &Catalog{r: r, eng: eng, cfg: cfg, ready: make(chan struct{}), verdicts: map[string]bool{},
		prefetched: map[string]bool{}}
	cat.cfg.Targets = gpu.Dedup(slices.Clone(cfg.Targets))
	if cat.cfg.Kind == "" {
		cat.cfg.Kind = kind.Triton
	}
	if !cat.cfg.Kind.Valid() {
		return nil, fmt.Errorf("catalog: unknown cache kind %q", cfg.Kind)
	}
	if cat.cfg.Refresh == 0 {
		cat.cfg.Refresh = DefaultRefresh
	}
	if cat.cfg.Retry == 0 {
		cat.cfg.Retry = DefaultRetry
	}
	cat.log = cfg.Logger
	if cat.log == nil {
		cat.log = slog.New(slog.DiscardHandler)
	}
	for _, s := range cfg.Sources {
		src, err := parseSource(s, r.Options())
		if err != nil {
			return nil, err
		}
		cat.sources = append(cat.sources, src)
	}
	return cat, nil
}

// Ready is closed once the catalog holds a snapshot: after the first
// successful Load or the first completed Refresh (even one where every
// source failed, so that lookups fail fast instead of waiting).
func (cat *Catalog) Ready() <-chan struct{} { return cat.ready }

// Lookup returns where key lives, highest priority first: by source order,
// then, within a source, newest image config first, ties broken by the
// image ref in descending order. nil when the KEY is not indexed (or the
// catalog is not ready). No I/O, no lock.
func (cat *Catalog) Lookup(key string) []Location {
	s := cat.cur.Load()
	if s == nil {
		return nil
	}
	ls := s.keys[key]
	if len(ls) == 0 {
		return nil
	}
	out := make([]Location, len(ls))
	for i, l := range ls {
		out[i] = l.location()
	}
	return out
}

func (l loc) location() Location {
	rec := l.e.rec
	out := Location{Image: rec.Image, Source: l.e.source, Layer: rec.Layers[l.k.Layer], Created: rec.Created}
	if l.k.Earlier > 0 {
		earlier := rec.Earlier[l.k.Earlier-1]
		out.Layers = make([]resolver.LayerRef, 0, len(earlier)+1)
		for _, i := range earlier {
			out.Layers = append(out.Layers, rec.Layers[i])
		}
		out.Layers = append(out.Layers, out.Layer)
	}
	if l.k.Kernel > 0 {
		t := rec.Kernels[l.k.Kernel-1]
		out.Kernel = &t
	}
	return out
}

// Has reports whether key is indexed.
func (cat *Catalog) Has(key string) bool {
	s := cat.cur.Load()
	return s != nil && len(s.keys[key]) > 0
}

// Keys returns every indexed KEY, sorted.
func (cat *Catalog) Keys() []string {
	s := cat.cur.Load()
	if s == nil {
		return nil
	}
	keys := make([]string, 0, len(s.keys))
	for k := range s.keys {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// DirInfo is what the indexed units show at a dir path under the kind's
// root: the skeleton of a nested cache (vLLM's torch_compile_cache/<hash>/
// rank_0_0/, Inductor's fxgraph/<xx>/) is the set of the units' ancestors.
type DirInfo struct {
	Exists   bool     // a unit or an ancestor of one
	Unit     bool     // a unit: Entry serves its files
	Children []string // names of the dirs right below it that exist, sorted
}

// Dir says what the indexed units show at rel ("" for the root), without
// I/O: which dirs a mount's lookup or listing finds before anything is
// fetched. Triton's units are KEYs at the root: one map lookup, and the
// KEYs for the root's listing. For a nested kind the units below rel are
// one range of the sorted units: a binary search, then that range.
func (cat *Catalog) Dir(rel string) DirInfo {
	s := cat.cur.Load()
	if s == nil {
		return DirInfo{}
	}
	if cat.cfg.Kind == kind.Triton {
		if rel == "" {
			return DirInfo{Exists: len(s.keys) > 0, Children: cat.Keys()}
		}
		_, ok := s.keys[rel]
		return DirInfo{Exists: ok, Unit: ok}
	}
	var d DirInfo
	if rel == "" {
		d.Exists = len(s.keys) > 0
	} else {
		_, d.Unit = s.keys[rel]
		d.Exists = d.Unit
	}
	prefix := rel + "/"
	if rel == "" {
		prefix = ""
	}
	keys := s.sortedKeys()
	i, _ := slices.BinarySearch(keys, prefix)
	seen := map[string]bool{}
	for _, k := range keys[i:] {
		rest, ok := strings.CutPrefix(k, prefix)
		if !ok {
			break
		}
		if rest == "" {
			continue
		}
		d.Exists = true
		child, _, _ := strings.Cut(rest, "/")
		if !seen[child] {
			seen[child] = true
			d.Children = append(d.Children, child)
		}
	}
	slices.Sort(d.Children)
	return d
}

// Images lists the images of the catalog in priority order.
func (cat *Catalog) Images() []ImageInfo {
	s := cat.cur.Load()
	if s == nil {
		return nil
	}
	out := make([]ImageInfo, 0, len(s.entries))
	for _, e := range s.entries {
		out = append(out, ImageInfo{Ref: e.ref, Image: e.rec.Image, Source: e.source, Created: e.rec.Created,
			Targets: e.rec.Targets, Fits: e.rec.Fits, Kind: e.rec.Kind, Why: e.rec.Why, Keys: len(e.rec.Keys),
			LabelError: e.rec.LabelError, Unlabelled: e.rec.Unlabelled})
	}
	return out
}

// Errors returns the last refresh's error per source (by the source as
// written); sources that succeeded are absent.
func (cat *Catalog) Errors() map[string]error {
	out := map[string]error{}
	if s := cat.cur.Load(); s != nil {
		for k, v := range s.errs {
			out[k] = v
		}
	}
	return out
}

// Stats returns the catalog's counters.
func (cat *Catalog) Stats() Stats {
	st := Stats{
		Refreshes:      cat.refreshes.Load(),
		RefreshTime:    time.Duration(cat.refreshNS.Load()),
		LabelLies:      cat.labelLies.Load(),
		Misfits:        cat.misfits.Load(),
		EntryHits:      cat.hits.Load(),
		EntryMisses:    cat.misses.Load(),
		EntryFallbacks: cat.fallbacks.Load(),
		SourceFailures: cat.srcFailures.Load(),
	}
	if ns := cat.lastRefresh.Load(); ns != 0 {
		st.LastRefresh = time.Unix(0, ns)
	}
	if s := cat.cur.Load(); s != nil {
		st.Images, st.Keys, st.Locations, st.SourceErrs = len(s.entries), len(s.keys), s.nlocs, len(s.errs)
		for _, e := range s.entries {
			if e.rec.LabelError != "" {
				st.LabelErrors++
			}
			if e.rec.Unlabelled {
				st.Unlabelled++
			}
		}
	}
	return st
}

// Run refreshes now and then every Config.Refresh until ctx ends (once
// when Refresh is negative). After a refresh in which a source failed it
// tries again sooner, with backoff (Config.Retry), until every source
// answers. Errors are logged; the catalog keeps serving. Call Load first:
// lookups then answer from the persisted catalog while the first refresh
// runs.
func (cat *Catalog) Run(ctx context.Context) {
	retry := cat.cfg.Retry
	for {
		err := cat.Refresh(ctx)
		if err != nil && ctx.Err() == nil {
			// Each failure was logged and counted where it happened.
			cat.log.Debug("refresh", "err", err)
		}
		if cat.cfg.Refresh < 0 {
			return
		}
		wait := cat.cfg.Refresh
		var se *SourceError
		if errors.As(err, &se) && retry > 0 {
			wait = min(retry, wait)
			cat.log.Info("retrying failed image sources", "in", wait)
			retry = min(2*retry, maxRetry)
		} else {
			retry = cat.cfg.Retry
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// install makes s the current snapshot and the catalog ready.
func (cat *Catalog) install(s *snapshot) {
	cat.cur.Store(s)
	cat.readyOnce.Do(func() { close(cat.ready) })
}

// Refresh rebuilds the catalog from the sources and installs it. An image
// whose manifest digest is already known costs its manifest GET and nothing
// more (a digest-pinned ref or a layout entry: nothing); a new image costs
// its config and, when it fits, the KEY lists of its layers
// (fetch.Engine.Keys: layer indexes cached on disk by layer digest, none
// kept in memory).
//
// A source that fails keeps what the last good refresh found for it (the
// whole source when it could not be listed, the image when one tag failed);
// its error is recorded (Errors) and logged, and the other sources are
// indexed. Refresh installs what it built even when some sources failed
// and returns their errors joined; a ctx that ends first installs nothing.
// The new catalog is persisted (StateDir) before it is installed.
func (cat *Catalog) Refresh(ctx context.Context) error {
	cat.refreshMu.Lock()
	defer cat.refreshMu.Unlock()
	start := time.Now()
	prev := cat.cur.Load()

	b := &builder{cat: cat, memo: map[string]*imageRec{}, inflight: map[string]*build{}}
	if prev != nil {
		for _, e := range prev.entries {
			b.memo[e.rec.Memo] = e.rec
		}
	}
	results, srcErrs := b.run(ctx)
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("catalog: refresh: %w", err)
	}

	var entries []*entry
	errs := map[string]error{}
	for i, src := range cat.sources {
		kept := func(keep func(*entry) bool) {
			if prev == nil {
				return
			}
			for _, e := range prev.entries {
				if e.source == i && keep(e) {
					entries = append(entries, &entry{ref: e.ref, source: i, rec: e.rec})
				}
			}
		}
		if err := srcErrs[i]; err != nil {
			errs[src.raw] = err
			kept(func(*entry) bool { return true })
			continue
		}
		var failed []error
		for _, res := range results[i] {
			if res.err != nil {
				failed = append(failed, res.err)
				kept(func(e *entry) bool { return e.ref == res.ref })
				continue
			}
			entries = append(entries, &entry{ref: res.ref, source: i, rec: res.rec})
		}
		if len(failed) > 0 {
			errs[src.raw] = errors.Join(failed...)
		}
	}
	s := newSnapshot(entries, errs, prev)

	var errList []error
	for i, src := range cat.sources {
		if err := errs[src.raw]; err != nil {
			cat.srcFailures.Add(1)
			cat.log.Warn("image source failed; keeping its last good images", "source", src.raw, "priority", i, "err", err)
			errList = append(errList, &SourceError{Source: src.raw, Err: err})
		}
	}
	if !s.saved {
		if err := cat.save(s); err != nil {
			cat.log.Warn("catalog not persisted", "dir", cat.cfg.StateDir, "err", err)
			errList = append(errList, err)
		} else {
			s.saved = true
		}
	}
	cat.install(s)
	if b.built.Load() > 0 && cat.cfg.Built != nil {
		cat.cfg.Built()
	}
	if cat.cfg.Refreshed != nil {
		cat.cfg.Refreshed()
	}
	d := time.Since(start)
	cat.refreshes.Add(1)
	cat.refreshNS.Store(int64(d))
	cat.lastRefresh.Store(time.Now().UnixNano())
	cat.log.Info("catalog refreshed", "images", len(s.entries), "keys", len(s.keys), "locations", s.nlocs,
		"failedSources", len(errs), "took", d)
	return errors.Join(errList...)
}

// SourceError is a source that could not be (fully) indexed.
type SourceError struct {
	Source string
	Err    error
}

func (e *SourceError) Error() string { return fmt.Sprintf("catalog: source %s: %v", e.Source, e.Err) }
func (e *SourceError) Unwrap() error { return e.Err }

// newSnapshot orders entries by priority, drops repeated images (an image
// reached through two tags or two sources counts once, at its best
// priority) and builds the KEY map; when prev lists the same images (a
// refresh that found nothing new), its KEY map is reused: a quiet refresh
// costs nothing per KEY.
func newSnapshot(entries []*entry, errs map[string]error, prev *snapshot) *snapshot {
	slices.SortStableFunc(entries, func(a, b *entry) int {
		if c := cmp.Compare(a.source, b.source); c != 0 {
			return c
		}
		if c := b.rec.Created.Compare(a.rec.Created); c != 0 {
			return c
		}
		return cmp.Compare(b.ref, a.ref)
	})
	s := &snapshot{errs: errs}
	seen := map[string]bool{}
	n := 0
	for _, e := range entries {
		if seen[e.rec.Image] {
			continue
		}
		seen[e.rec.Image] = true
		s.entries = append(s.entries, e)
		if e.rec.Fits {
			n += len(e.rec.Keys)
		}
	}
	if prev != nil && slices.EqualFunc(prev.entries, s.entries, func(a, b *entry) bool { return *a == *b }) {
		s.entries, s.keys, s.nlocs, s.saved = prev.entries, prev.keys, prev.nlocs, prev.saved
		return s
	}
	s.keys = make(map[string][]loc, n)
	for _, e := range s.entries {
		if !e.rec.Fits {
			continue
		}
		for j := range e.rec.Keys {
			k := &e.rec.Keys[j]
			s.keys[k.Key] = append(s.keys[k.Key], loc{e: e, k: k})
			s.nlocs++
		}
	}
	return s
}
