package resolver

import (
	"context"
	"fmt"
	"net/http"
	"sync"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// Resolver holds what outlives one call: options with defaults, the base
// HTTP transport, one authenticated transport per repository, and counters
// over every blob it opened. Safe for concurrent use.
type Resolver struct {
	// immutable after New
	opts     Options
	base     http.RoundTripper // opts.Transport behind the guard: what every request goes out through
	counters Counters

	mu         sync.Mutex
	transports map[string]*repoTransport // guarded by mu; key repoKey
}

// repoTransport is built once; ready closes when rt/err are set.
type repoTransport struct {
	ready chan struct{}
	rt    http.RoundTripper
	err   error
}

// New returns a Resolver for opts (zero fields take their defaults).
func New(opts Options) *Resolver {
	r := &Resolver{opts: opts.withDefaults(), transports: map[string]*repoTransport{}}
	if r.opts.Counters == nil {
		r.opts.Counters = &r.counters
	}
	r.base = &guard{next: r.opts.Transport, plainHTTP: r.opts.PlainHTTP, health: newHealth(), timeout: r.opts.Timeout}
	return r
}

// Options returns the options in effect, defaults filled in.
func (r *Resolver) Options() Options { return r.opts }

// Counters returns the counters shared by every blob of r (or
// Options.Counters when one was given).
func (r *Resolver) Counters() *Counters { return r.opts.Counters }

func repoKey(repo name.Repository) string {
	return repo.Registry.Scheme() + "://" + repo.Name()
}

// Transport returns the authenticated transport for repo (pull scope),
// building it on first use: a ping, and for bearer registries a token
// exchange, bounded by Options.Timeout. A failed build is not cached.
func (r *Resolver) Transport(ctx context.Context, repo name.Repository) (http.RoundTripper, error) {
	key := repoKey(repo)
	r.mu.Lock()
	e, ok := r.transports[key]
	if !ok {
		e = &repoTransport{ready: make(chan struct{})}
		r.transports[key] = e
	}
	r.mu.Unlock()
	if ok {
		select {
		case <-e.ready:
			// A failed build was already removed from the map, so the
			// next call tries again; this one shares its error.
			return e.rt, e.err
		case <-ctx.Done():
			return nil, fmt.Errorf("resolver: auth %s: %w", repo, ctx.Err())
		}
	}
	e.rt, e.err = r.buildTransport(ctx, repo)
	if e.err != nil {
		r.mu.Lock()
		delete(r.transports, key)
		r.mu.Unlock()
	}
	close(e.ready)
	return e.rt, e.err
}

func (r *Resolver) buildTransport(ctx context.Context, repo name.Repository) (http.RoundTripper, error) {
	ctx, cancel := context.WithTimeout(ctx, r.opts.Timeout)
	defer cancel()
	auth, err := authn.Resolve(ctx, r.opts.Keychain, repo)
	if err != nil {
		return nil, fmt.Errorf("resolver: credentials for %s: %w", repo, err)
	}
	rt, err := transport.NewWithContext(ctx, repo.Registry, auth, r.base,
		[]string{repo.Scope(transport.PullScope)})
	if err != nil {
		return nil, fmt.Errorf("resolver: auth %s: %w", repo, err)
	}
	return rt, nil
}
