package resolver

import (
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"
)

// ErrRegistryDown: the registry host failed its last requests and is not
// asked again until its back-off ends; the request failed without being
// sent.
var ErrRegistryDown = errors.New("registry failing")

const (
	// downAfter consecutive failed requests mark a host as failing.
	downAfter = 2
	// firstDown is the first back-off of a failing host; it doubles with
	// each failed probe up to maxDown.
	firstDown = time.Second
	maxDown   = 30 * time.Second
	// hungAfter: a request that waited this long and got no answer (or a
	// 5xx) counts as a failure of the host: it hung.
	hungAfter = 500 * time.Millisecond
	// hungInFlight: a request still waiting for its answer this long, with
	// no other request to its host answered since it was sent, counts as
	// a failure while it waits. Longer than hungAfter: it is not over yet.
	hungInFlight = 1500 * time.Millisecond
)

// health remembers registry hosts that keep hanging, so that a hung
// registry costs the lookup deadline once, not once per KEY: while a
// host backs off, its requests fail at once with ErrRegistryDown. When the
// back-off ends one request goes through as a probe (the others still fail
// fast); an answer makes the host healthy again.
//
// A request still waiting for its answer after hungInFlight, with nothing
// else from its host answered meanwhile, counts as a failure while it
// waits: a lookup gives up on its fetch long before the request's own
// timeout (the fetch goes on for a later lookup), and the next lookups must
// not each wait for the same hung host. (A host that answers other requests
// is not hung, however long one large range takes.) While such a request is
// pending the host stays failing; its answer heals the host, its failure
// starts the back-off.
type health struct {
	now func() time.Time

	mu       sync.Mutex
	hosts    map[string]*hostHealth          // guarded by mu
	inflight map[string]map[uint64]time.Time // guarded by mu: requests sent, by host, id -> start
	answered map[string]time.Time            // guarded by mu: when each host last answered a request
	nextID   uint64                          // guarded by mu
}

type hostHealth struct {
	fails   int           // consecutive failed requests
	wait    time.Duration // current back-off
	until   time.Time     // no requests before this
	probing bool          // a probe is in flight
	last    error         // the last failure
}

func newHealth() *health {
	return &health{now: time.Now, hosts: map[string]*hostHealth{}, inflight: map[string]map[uint64]time.Time{},
		answered: map[string]time.Time{}}
}

// admit says whether a request to host may go out; probe is set when it is
// the one request let through after a back-off. A request that goes out
// is registered in flight under id until finish.
func (h *health) admit(host string) (id uint64, probe bool, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := h.now()
	hung := 0
	for _, start := range h.inflight[host] {
		if now.Sub(start) >= hungInFlight && !h.answered[host].After(start) {
			hung++
		}
	}
	hh := h.hosts[host]
	fails := hung
	if hh != nil {
		fails += hh.fails
	}
	switch {
	case fails < downAfter:
	case hung > 0:
		return 0, false, fmt.Errorf("%w: %s: %d requests without an answer for %v or more", ErrRegistryDown, host, hung, hungInFlight)
	case now.Before(hh.until) || hh.probing:
		left := max(hh.until.Sub(now), 0).Round(100 * time.Millisecond)
		return 0, false, fmt.Errorf("%w: %s: %d failed requests in a row (last: %v); asked again in %v", ErrRegistryDown, host, hh.fails, hh.last, left)
	default:
		hh.probing = true
		probe = true
	}
	h.nextID++
	if h.inflight[host] == nil {
		h.inflight[host] = map[uint64]time.Time{}
	}
	h.inflight[host][h.nextID] = now
	return h.nextID, probe, nil
}

// finish takes request id of host out of flight.
func (h *health) finish(host string, id uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.inflight[host], id)
	if len(h.inflight[host]) == 0 {
		delete(h.inflight, host)
	}
}

// done records how a request that went out ended.
func (h *health) done(host string, probe bool, ok bool, cause error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	hh := h.hosts[host]
	if ok {
		delete(h.hosts, host)
		h.answered[host] = h.now()
		return
	}
	if hh == nil {
		hh = &hostHealth{}
		h.hosts[host] = hh
	}
	if probe {
		hh.probing = false
	}
	hh.fails++
	hh.last = cause
	if hh.fails < downAfter {
		return
	}
	switch {
	case hh.wait == 0:
		hh.wait = firstDown
	case probe:
		hh.wait = min(2*hh.wait, maxDown)
	}
	hh.until = h.now().Add(hh.wait)
}

// roundTrip sends req through next, unless its host is backing off, and
// records the outcome. A request that got no answer for hungAfter or more
// (a timeout, a dial that hung, a caller that gave up waiting) or a 5xx
// that took as long is a failure of the host; any other answer is health;
// a quick error (connection refused, a caller that gave up at once) says
// too little either way: those fail fast anyway, and the caller's own
// retries handle them.
func (h *health) roundTrip(next http.RoundTripper, req *http.Request) (*http.Response, error) {
	host := req.URL.Host
	id, probe, err := h.admit(host)
	if err != nil {
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, err
	}
	start := h.now()
	resp, err := next.RoundTrip(req)
	h.finish(host, id)
	slow := h.now().Sub(start) >= hungAfter
	switch {
	case err != nil && slow:
		h.done(host, probe, false, err)
	case err != nil:
		h.settle(host, probe)
	case resp.StatusCode >= 500 && slow:
		h.done(host, probe, false, fmt.Errorf("HTTP %d after %v", resp.StatusCode, h.now().Sub(start).Round(time.Millisecond)))
	default:
		h.done(host, probe, true, nil)
	}
	return resp, err
}

// settle ends a probe that told nothing: the next request probes again.
func (h *health) settle(host string, probe bool) {
	if !probe {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if hh := h.hosts[host]; hh != nil {
		hh.probing = false
	}
}
