package fetch

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"cargohold/layer"
	"cargohold/resolver"
	"cargohold/store"
)

// Prefetch tuning. A range is read with one request into memory, so
// prefetchRanges × max(prefetchRange, prefetchMaxDir) bounds the memory
// prefetch holds.
const (
	// prefetchRange is the most bytes one ranged read covers (a dir whose
	// span alone is larger is a range of its own). Each range is committed
	// by one goroutine once read: smaller ranges spread the commit work
	// over prefetchRanges of them and get a waiting lookup its dir sooner;
	// larger ones cost fewer requests.
	prefetchRange = 2 << 20
	// prefetchGap is the most bytes between two dirs' spans that one range
	// reads through (dirs that do not fit the local GPU, or are stored
	// already) rather than splitting it in two.
	prefetchGap = 256 << 10
	// prefetchMaxDir: a dir whose span is larger is left to its lookup
	// (which reads it in pieces of spanPiece).
	prefetchMaxDir = 8 << 20
	// prefetchRanges is how many ranges are read (and held) at once, over
	// all layers; how many are committed at once is commitSlots.
	prefetchRanges = 4
	// rangePatience is how long a lookup waits for the prefetch range in
	// flight that covers its dir before fetching the dir alone.
	rangePatience = 250 * time.Millisecond
)

// commitSlots is how many prefetch commits (decompress, verify, write)
// run at once: a quarter of the CPUs, at least one, so that lookups keep
// the rest.
func commitSlots() int { return max(1, runtime.GOMAXPROCS(0)/4) }

// errBackground says a prefetch range did not deliver a dir a caller
// waited for (too slow, failed, out of budget): the caller fetches it alone.
var errBackground = errors.New("fetch: prefetch range")

// ErrPrefetchBudget ends a prefetch whose budget (the store's limit, the
// disk's free space: store.Room) is used.
var ErrPrefetchBudget = errors.New("fetch: prefetch budget used")

// span is a range of a layer that one prefetch read covers: dirs, sorted
// by offset.
type span struct {
	off, end int64
	dirs     []*layer.Dir
	content  int64 // uncompressed bytes the dirs put into the store
}

// Prefetch fetches KEY dirs keys of layer l into the content store in the
// background and returns at once: the dirs not stored yet, sorted by their
// offset in the layer, neighbours coalesced into ranges of up to
// prefetchRange bytes (gaps up to prefetchGap read through), prefetchRanges
// ranges in flight over all layers; each range is read with one ranged
// request, split into its dirs, and each dir verified and committed as a
// demand fetch would (commit), into spare room only (store.PutSpare):
// prefetch never evicts anything, and stops when the store's limit or the
// disk's free space (store.Room) is reached, or when a range fails.
//
// A Dir call for a dir that is not stored never waits for prefetch work
// that has not started: it fetches the dir at once; a range in flight that
// covers the dir serves it, unless the range takes longer than
// rangePatience or fails, and then the dir is fetched alone. Which keys to
// prefetch (those that fit the local GPU) is the caller's decision. Layers
// without random access (legacy gzip, local already) are skipped. Close
// stops prefetching.
//
// The returned channel receives how the prefetch ended and is then closed
// (callers may ignore it): nil when every dir is stored, else an error
// wrapping ErrPrefetchBudget, a failed range's error, or the Engine's
// closing.
func (e *Engine) Prefetch(l resolver.LayerRef, keys []string) <-chan error {
	res := make(chan error, 1)
	keys = slices.Clone(keys)
	started := e.life.spawn(func() {
		err := e.prefetch(e.life.ctx, l, keys)
		if err != nil && e.life.ctx.Err() == nil {
			e.log.Info("prefetch stopped", "layer", l.String(), "err", err)
		}
		res <- err
		close(res)
	})
	if !started {
		res <- errEngineClosed
		close(res)
	}
	return res
}

// prefetch plans l's ranges and reads them, prefetchRanges at once.
func (e *Engine) prefetch(ctx context.Context, l resolver.LayerRef, keys []string) error {
	ix, err := e.index(ctx, l, true)
	if err != nil {
		return err
	}
	if ix.src != fromBlob {
		return nil
	}
	var todo []*layer.Dir
	for _, k := range keys {
		d := ix.Dirs[k]
		if d == nil || d.End <= d.Offset || d.End-d.Offset > prefetchMaxDir {
			continue // not there, nothing to read, or left to its lookup
		}
		if _, ok := e.stored(d); !ok {
			todo = append(todo, d)
		}
	}
	slices.SortFunc(todo, func(a, b *layer.Dir) int { return cmp.Compare(a.Offset, b.Offset) })
	ranges := coalesce(todo)
	start := time.Now()
	e.log.Debug("prefetch", "layer", l.String(), "dirs", len(todo), "ranges", len(ranges))

	var wg sync.WaitGroup
	var stop atomic.Pointer[error]
	stopWith := func(err error) { stop.CompareAndSwap(nil, &err) }
	defer wg.Wait()
	for i, r := range ranges {
		select {
		case e.prefetchSem <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
		if p := stop.Load(); p != nil {
			<-e.prefetchSem
			e.skipped(ranges[i:])
			return *p
		}
		r, reserved, err := e.reserve(r)
		if err != nil && reserved == 0 {
			<-e.prefetchSem
			e.skipped(ranges[i:])
			return err
		}
		wg.Go(func() {
			defer func() { <-e.prefetchSem }()
			err := e.readRange(ctx, l, ix, r)
			e.mu.Lock()
			e.reserved -= reserved
			e.mu.Unlock()
			if err != nil {
				stopWith(err)
			}
		})
		if err != nil { // the budget ends with this range, cut short
			e.skipped(ranges[i+1:])
			stopWith(err)
			break
		}
	}
	wg.Wait()
	if p := stop.Load(); p != nil {
		return *p
	}
	e.log.Info("prefetch done", "layer", l.String(), "dirs", len(todo), "ranges", len(ranges), "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// coalesce groups dirs (sorted by offset) into ranges.
func coalesce(dirs []*layer.Dir) []span {
	var out []span
	for _, d := range dirs {
		if n := len(out); n > 0 {
			cur := &out[n-1]
			if d.Offset-cur.end <= prefetchGap && max(cur.end, d.End)-cur.off <= prefetchRange {
				cur.dirs = append(cur.dirs, d)
				cur.end = max(cur.end, d.End)
				cur.content += dirContent(d)
				continue
			}
		}
		out = append(out, span{off: d.Offset, end: d.End, dirs: []*layer.Dir{d}, content: dirContent(d)})
	}
	return out
}

// reserve takes r's content out of the prefetch budget: the store's room
// less what ranges in flight will put. A range that does not fit whole is
// cut after its last dir that does, and the error (wrapping
// ErrPrefetchBudget) says the budget ends with it; an error with reserved
// 0 says nothing of r is to be read.
func (e *Engine) reserve(r span) (_ span, reserved int64, _ error) {
	room, err := e.st.Room()
	if err != nil {
		return r, 0, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	room -= e.reserved
	if r.content <= room {
		e.reserved += r.content
		return r, r.content, nil
	}
	cut := span{off: r.off, end: r.off}
	for _, d := range r.dirs {
		if cut.content+dirContent(d) > room {
			break
		}
		cut.dirs = append(cut.dirs, d)
		cut.content += dirContent(d)
		cut.end = max(cut.end, d.End)
	}
	e.stats.PrefetchSkipped += int64(len(r.dirs) - len(cut.dirs))
	err = fmt.Errorf("%w: %d bytes of room left", ErrPrefetchBudget, max(room, 0))
	if len(cut.dirs) == 0 {
		return r, 0, err
	}
	e.reserved += cut.content
	return cut, cut.content, err
}

// skipped counts the dirs of ranges not read.
func (e *Engine) skipped(rs []span) {
	n := 0
	for _, r := range rs {
		n += len(r.dirs)
	}
	e.bump(func(s *Stats) { s.PrefetchSkipped += int64(n) })
}

// readRange reads r with one ranged request and commits its dirs. Dirs a
// demand fetch has in flight already are left to it; the others are
// claimed first, so that a lookup of one of them waits for this range (for
// a while: rangePatience) instead of fetching it again, and once the bytes
// are in, commits its dir itself (help) rather than wait for the range's
// commits, which take a commit token each (commitSem) so that prefetch
// leaves CPU to lookups.
func (e *Engine) readRange(ctx context.Context, l resolver.LayerRef, ix *indexed, r span) error {
	rr := &rangeRead{e: e, ctx: ctx, l: l, r: r, ready: make(chan struct{}), taken: make([]bool, len(r.dirs)),
		claims: make([]*flightCall[[]KeyFile], len(r.dirs))}
	for i, d := range r.dirs {
		rr.claims[i] = e.dirs.claim(dirKey(l, d.Key), rr.ready, func() { rr.commitIfFree(i) })
		rr.taken[i] = rr.claims[i] == nil // a demand fetch has it
	}
	start := time.Now()
	buf := make([]byte, r.end-r.off)
	if err := e.readSpan(ctx, l, ix.src, buf, r.off); err != nil {
		rr.abandon(err)
		return err
	}
	e.bump(func(s *Stats) { s.PrefetchRanges++ })
	rr.buf = buf
	close(rr.ready)
	for i := range r.dirs {
		select {
		case e.commitSem <- struct{}{}:
		case <-ctx.Done():
			rr.abandon(ctx.Err())
			return ctx.Err()
		}
		err := rr.commitIfFree(i)
		<-e.commitSem
		if err != nil {
			rr.abandon(err)
			return err
		}
	}
	e.log.Debug("prefetched range", "layer", l.String(), "off", r.off, "bytes", r.end-r.off, "dirs", len(r.dirs),
		"took", time.Since(start).Round(time.Millisecond))
	return nil
}

// rangeRead is one prefetch range being committed, by the range itself in
// layer order and by lookups that wait for one of its dirs (help): whoever
// takes a dir first commits it and settles its claim.
type rangeRead struct {
	e      *Engine
	ctx    context.Context // the prefetch's: commits stop with it
	l      resolver.LayerRef
	r      span
	claims []*flightCall[[]KeyFile] // nil where a demand fetch had the dir
	ready  chan struct{}            // closed once buf is read
	buf    []byte                   // set before ready is closed

	mu    sync.Mutex
	taken []bool // guarded by mu
}

// take marks dir i as someone's to commit; false when it was already.
func (rr *rangeRead) take(i int) bool {
	rr.mu.Lock()
	defer rr.mu.Unlock()
	if rr.taken[i] {
		return false
	}
	rr.taken[i] = true
	return true
}

// commitIfFree commits dir i unless someone else has it, and settles its
// claim. The error is for the range (a budget or integrity failure ends the
// prefetch); the claim gets it wrapped in errBackground, so that a waiting
// lookup fetches the dir alone.
func (rr *rangeRead) commitIfFree(i int) error {
	if !rr.take(i) {
		return nil
	}
	d := rr.r.dirs[i]
	key := dirKey(rr.l, d.Key)
	var files []KeyFile
	var err error
	if d.Offset < rr.r.off || d.End > rr.r.end {
		err = fmt.Errorf("span [%d,%d) outside its range [%d,%d)", d.Offset, d.End, rr.r.off, rr.r.end)
	} else {
		files, err = rr.e.commit(rr.ctx, d, memAt{buf: rr.buf, off: rr.r.off}, true)
	}
	if err != nil {
		if errors.Is(err, store.ErrFull) {
			err = fmt.Errorf("%w: %w", ErrPrefetchBudget, err)
		}
		err = fmt.Errorf("KEY %s: %w", d.Key, err)
		rr.e.dirs.settle(key, rr.claims[i], nil, fmt.Errorf("%w: %w", errBackground, err))
		return err
	}
	rr.e.dirs.settle(key, rr.claims[i], files, nil)
	rr.e.bump(func(s *Stats) { s.PrefetchDirs++ })
	return nil
}

// abandon settles every dir nobody has taken with why.
func (rr *rangeRead) abandon(why error) {
	for i, d := range rr.r.dirs {
		if rr.take(i) {
			rr.e.dirs.settle(dirKey(rr.l, d.Key), rr.claims[i], nil, fmt.Errorf("%w: %w", errBackground, why))
		}
	}
}
