package resolver

import (
	"errors"
	"net/http"
	"sync"
	"testing"
	"time"
)

// clockRT answers after advancing a fake clock by delay, with status code
// (or err).
type clockRT struct {
	mu    sync.Mutex
	now   time.Time
	delay time.Duration
	code  int
	err   error
	sent  int
}

func (c *clockRT) clock() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }

func (c *clockRT) advance(d time.Duration) { c.mu.Lock(); c.now = c.now.Add(d); c.mu.Unlock() }

func (c *clockRT) RoundTrip(*http.Request) (*http.Response, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sent++
	c.now = c.now.Add(c.delay)
	if c.err != nil {
		return nil, c.err
	}
	return &http.Response{StatusCode: c.code, Body: http.NoBody}, nil
}

func TestHealthBackoff(t *testing.T) {
	rt := &clockRT{now: time.Unix(1000, 0), code: 200}
	h := newHealth()
	h.now = rt.clock
	req, _ := http.NewRequest(http.MethodGet, "http://reg.example:5000/v2/", nil)
	send := func() error {
		_, err := h.roundTrip(rt, req)
		return err
	}

	// Quick errors (refused) and quick 5xx never mark the host.
	rt.err = errors.New("connection refused")
	for range 5 {
		send()
	}
	rt.err, rt.code = nil, 503
	for range 5 {
		send()
	}
	if rt.sent != 10 {
		t.Fatalf("quick failures: %d sent, want all 10", rt.sent)
	}
	// Two hung requests mark it: the next ones fail at once.
	rt.err, rt.delay = errors.New("timeout"), 2*time.Second
	send()
	send()
	n := rt.sent
	if err := send(); !errors.Is(err, ErrRegistryDown) || rt.sent != n {
		t.Fatalf("after two hung requests: %v (sent %d more)", err, rt.sent-n)
	}
	// After the back-off one probe goes out; it hangs again: longer back-off.
	rt.advance(firstDown)
	if err := send(); errors.Is(err, ErrRegistryDown) || rt.sent != n+1 {
		t.Fatalf("probe after the back-off: %v", err)
	}
	rt.advance(firstDown) // not enough: the back-off doubled
	if err := send(); !errors.Is(err, ErrRegistryDown) {
		t.Fatalf("within the doubled back-off: %v", err)
	}
	rt.advance(firstDown)
	// A probe that answers heals the host.
	rt.err, rt.delay, rt.code = nil, 0, 200
	if err := send(); err != nil {
		t.Fatalf("probe that answers: %v", err)
	}
	if err := send(); err != nil {
		t.Fatalf("healthy again: %v", err)
	}
	// Other hosts were never affected.
	other, _ := http.NewRequest(http.MethodGet, "http://other.example/v2/", nil)
	if _, err := h.roundTrip(rt, other); err != nil {
		t.Fatal(err)
	}
}

// blockRT holds every request until release, then answers 200.
type blockRT struct {
	sent    chan struct{}
	release chan struct{}
}

func (b *blockRT) RoundTrip(*http.Request) (*http.Response, error) {
	b.sent <- struct{}{}
	<-b.release
	return &http.Response{StatusCode: 200, Body: http.NoBody}, nil
}

// TestHealthHangingInFlight: requests still waiting for an answer count as
// failures while they wait (a lookup gives up on its fetch long before the
// request's timeout): with two hung in flight the next request fails at
// once; their answers heal the host.
func TestHealthHangingInFlight(t *testing.T) {
	clock := &clockRT{now: time.Unix(1000, 0)}
	h := newHealth()
	h.now = clock.clock
	rt := &blockRT{sent: make(chan struct{}, 4), release: make(chan struct{})}
	req, _ := http.NewRequest(http.MethodGet, "http://reg.example:5000/v2/x", nil)
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() { h.roundTrip(rt, req) })
		<-rt.sent
		clock.advance(hungInFlight + 100*time.Millisecond)
	}
	if _, err := h.roundTrip(rt, req); !errors.Is(err, ErrRegistryDown) {
		t.Fatalf("with two requests hung in flight: %v, want ErrRegistryDown at once", err)
	}
	close(rt.release)
	wg.Wait()
	go func() { <-rt.sent }()
	if _, err := h.roundTrip(rt, req); err != nil {
		t.Fatalf("after the hung requests answered: %v", err)
	}
}

// TestHealthSlowRangeNotHung: requests that wait long while the host
// answers others (a stalled large range) do not mark it.
func TestHealthSlowRangeNotHung(t *testing.T) {
	clock := &clockRT{now: time.Unix(1000, 0), code: 200}
	h := newHealth()
	h.now = clock.clock
	rt := &blockRT{sent: make(chan struct{}, 4), release: make(chan struct{})}
	req, _ := http.NewRequest(http.MethodGet, "http://reg.example:5000/v2/x", nil)
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() { h.roundTrip(rt, req) })
		<-rt.sent
	}
	clock.advance(10 * time.Millisecond)
	if _, err := h.roundTrip(clock, req); err != nil { // the host answers a small one
		t.Fatal(err)
	}
	clock.advance(2 * hungInFlight)
	if _, err := h.roundTrip(clock, req); err != nil {
		t.Fatalf("two slow requests while the host answers others: %v, want it sent", err)
	}
	close(rt.release)
	wg.Wait()
}
