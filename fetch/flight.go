package fetch

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// lifetime owns an Engine's background goroutines: they run under ctx and
// Close waits for them. Lock order: flight.mu before lifetime.mu.
type lifetime struct {
	ctx    context.Context
	cancel context.CancelFunc

	mu     sync.Mutex
	closed bool           // guarded by mu
	wg     sync.WaitGroup // Add only under mu while !closed
}

func newLifetime() *lifetime {
	ctx, cancel := context.WithCancel(context.Background())
	return &lifetime{ctx: ctx, cancel: cancel}
}

// spawn runs f in a goroutine that Close waits for; false once closed.
func (l *lifetime) spawn(f func()) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		f()
	}()
	return true
}

// close cancels the lifetime and waits for every spawned goroutine.
func (l *lifetime) close() {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	l.cancel()
	l.wg.Wait()
}

// flight runs one function per key at a time and hands its result to every
// caller that asked for that key meanwhile: concurrent fetches of one KEY dir
// (or one layer index) share one set of requests.
//
// The shared work runs in its own goroutine under a context that keeps the
// first caller's values (per-call Counters) but not its cancellation: it
// ends when the Engine closes or when every caller waiting for it has given
// up (unless keep is set), so one impatient caller does not fail the others,
// and nobody waiting means nothing keeps running.
type flight[T any] struct {
	// keep: the work goes on when every caller has given up (a whole-blob
	// download that later callers can use); only the Engine's Close stops it.
	keep bool

	mu    sync.Mutex
	calls map[string]*flightCall[T] // guarded by mu
}

type flightCall[T any] struct {
	done    chan struct{} // closed when val and err are set
	val     T
	err     error
	waiters int // guarded by flight.mu
	cancel  context.CancelFunc
	// owned: claimed by background work (claim), which ends it with
	// settle; callers that give up waiting for it do not stop it.
	owned bool
	// ready, for an owned call, is closed once what is left of the work is
	// local (the bytes are in); help then lets a waiter do that part itself
	// rather than wait for the background work to get to it.
	ready <-chan struct{}
	help  func()
}

// do returns fn's result for key, running fn unless a call for key is in
// flight already. It returns ctx's error as soon as ctx ends, and
// errEngineClosed when life is closed.
func (g *flight[T]) do(ctx context.Context, life *lifetime, key string, fn func(context.Context) (T, error)) (T, error) {
	return g.doPatient(ctx, life, key, 0, fn)
}

// doPatient is do that waits at most patience (0: no bound) for a call
// claimed by background work; past it, it returns an error wrapping
// errBackground, and the caller may fetch on its own.
func (g *flight[T]) doPatient(ctx context.Context, life *lifetime, key string, patience time.Duration, fn func(context.Context) (T, error)) (T, error) {
	var zero T
	if err := ctx.Err(); err != nil {
		return zero, err
	}
	g.mu.Lock()
	if g.calls == nil {
		g.calls = map[string]*flightCall[T]{}
	}
	c, ok := g.calls[key]
	if !ok {
		fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		c = &flightCall[T]{done: make(chan struct{}), cancel: cancel}
		started := life.spawn(func() {
			stop := context.AfterFunc(life.ctx, cancel)
			defer stop()
			v, err := fn(fctx)
			cancel()
			g.settle(key, c, v, err)
		})
		if !started {
			g.mu.Unlock()
			cancel()
			return zero, errEngineClosed
		}
		g.calls[key] = c
	}
	c.waiters++
	g.mu.Unlock()

	var slow <-chan time.Time
	var ready <-chan struct{}
	if c.owned {
		ready = c.ready
		if patience > 0 {
			t := time.NewTimer(patience)
			defer t.Stop()
			slow = t.C
		}
	}
	for {
		select {
		case <-c.done:
			return c.val, c.err
		case <-ready:
			// The rest is local work: do it now if nobody has started
			// it, and wait for it without the patience meant for the
			// network.
			ready, slow = nil, nil
			if c.help != nil {
				c.help()
			}
		case <-slow:
			g.mu.Lock()
			c.waiters--
			g.mu.Unlock()
			return zero, fmt.Errorf("%w: not in within %s", errBackground, patience)
		case <-ctx.Done():
			g.mu.Lock()
			c.waiters--
			if c.waiters == 0 && !g.keep && !c.owned {
				// Nobody wants the result any more: stop the work, and let
				// the next caller start afresh rather than join a canceled
				// call.
				c.cancel()
				if g.calls[key] == c {
					delete(g.calls, key)
				}
			}
			g.mu.Unlock()
			return zero, ctx.Err()
		}
	}
}

// claim registers a call for key that the caller runs itself and ends with
// settle; nil when a call for key is in flight already. Meanwhile callers of
// do for key wait for it (doPatient: for a while, until ready is closed);
// once ready is closed, a waiter calls help (may be nil), which may do the
// rest of the work and settle the call itself.
func (g *flight[T]) claim(key string, ready <-chan struct{}, help func()) *flightCall[T] {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.calls == nil {
		g.calls = map[string]*flightCall[T]{}
	}
	if _, ok := g.calls[key]; ok {
		return nil
	}
	c := &flightCall[T]{done: make(chan struct{}), cancel: func() {}, owned: true, ready: ready, help: help}
	g.calls[key] = c
	return c
}

// settle ends a call (spawned by doPatient, or claimed) with its result.
func (g *flight[T]) settle(key string, c *flightCall[T], v T, err error) {
	g.mu.Lock()
	if g.calls[key] == c {
		delete(g.calls, key)
	}
	g.mu.Unlock()
	c.val, c.err = v, err
	close(c.done)
}
