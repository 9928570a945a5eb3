package proxy

import (
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync"
	"time"
)

// Proxy forwards HTTP requests to one target and injects faults.
//
// Lock order: downMu before mu.
type Proxy struct {
	// URL is "http://127.0.0.1:port", Addr "127.0.0.1:port".
	URL  string
	Addr string

	// Immutable after construction.
	target    *url.URL
	gate      *gate
	srv       *http.Server
	rp        *httputil.ReverseProxy
	tr        *http.Transport
	closing   chan struct{} // closed by Close: ends stalls and latency waits
	serveDone chan struct{} // closed when srv.Serve returns

	link link // bandwidth cap (SetBandwidth), its own lock

	closeOnce sync.Once
	downMu    sync.Mutex // serialises SetDown
	handlers  sync.WaitGroup
	conns     sync.WaitGroup // connections not yet closed or hijacked

	mu        sync.Mutex
	closed    bool
	latency   time.Duration
	rate      int64 // bytes per second of each response body; 0: no limit
	stallBody int64 // body bytes sent before a response hangs; < 0: never
	down      bool
	stall     chan struct{} // non-nil while stalled; closed on unstall
	// rangeStall is non-nil while ranges over stallOver bytes stall
	// (SetStallRanges); closed on unstall.
	rangeStall chan struct{}
	stallOver  int64
	flips      []flip
	reqs       []Req
	pending    int // requests in ServeHTTP, not yet logged
	live       map[net.Conn]struct{}
	closeErr   error
}

// New starts a proxy to target ("http://127.0.0.1:port"). Like
// httptest.NewServer it panics when it cannot, which in a test means a
// broken machine; use Listen to get the error instead.
func New(target string) *Proxy {
	p, err := Listen(target)
	if err != nil {
		panic(err)
	}
	return p
}

// Listen starts a proxy to target, an absolute http or https URL. The
// caller must Close it.
func Listen(target string) (*Proxy, error) {
	u, err := url.Parse(target)
	if err != nil {
		return nil, fmt.Errorf("proxy: target: %w", err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("proxy: target %q: want http://host:port", target)
	}
	g, err := newGate()
	if err != nil {
		return nil, err
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	// A proxy must hand the body on as sent, not decoded.
	tr.DisableCompression = true
	tr.Proxy = nil
	quiet := log.New(io.Discard, "", 0)
	p := &Proxy{
		URL:       "http://" + g.addr.String(),
		Addr:      g.addr.String(),
		target:    u,
		gate:      g,
		tr:        tr,
		closing:   make(chan struct{}),
		serveDone: make(chan struct{}),
		live:      make(map[net.Conn]struct{}),
		stallBody: -1,
	}
	p.rp = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(u)
			// Keep the client's Host: the registry builds upload
			// locations from it, and they must lead back here.
			pr.Out.Host = pr.In.Host
		},
		Transport:    tr,
		ErrorLog:     quiet,
		ErrorHandler: errorHandler,
	}
	p.srv = &http.Server{
		Handler:           p,
		ConnState:         p.connState,
		ErrorLog:          quiet,
		ReadHeaderTimeout: time.Minute,
	}
	go func() {
		defer close(p.serveDone)
		p.srv.Serve(g)
	}()
	return p, nil
}

// errorHandler answers 502 when the target fails, unless the client has
// gone, in which case nobody reads an answer.
func errorHandler(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil {
		return
	}
	http.Error(w, "proxy: "+err.Error(), http.StatusBadGateway)
}

// connState tracks connections so SetDown can drop them and Close can wait
// for them.
func (p *Proxy) connState(c net.Conn, s http.ConnState) {
	switch s {
	case http.StateNew:
		p.conns.Add(1)
		p.mu.Lock()
		p.live[c] = struct{}{}
		down := p.down
		p.mu.Unlock()
		if down {
			// Accepted just before the socket closed.
			c.Close()
		}
	case http.StateClosed, http.StateHijacked:
		p.mu.Lock()
		delete(p.live, c)
		p.mu.Unlock()
		p.conns.Done()
	}
}

// ServeHTTP applies the knobs, forwards r and logs it.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	p.mu.Lock()
	if p.closed || p.down {
		p.mu.Unlock()
		// Drops the connection without a response, as a dying server does.
		panic(http.ErrAbortHandler)
	}
	p.handlers.Add(1)
	p.pending++
	latency, stall, rate, stallBody, offs := p.latency, p.stall, p.rate, p.stallBody, offsetsFor(p.flips, r.URL.Path)
	if stall == nil && p.rangeStall != nil && rangeLen(r.Header.Get("Range")) > p.stallOver {
		stall = p.rangeStall
	}
	p.mu.Unlock()
	defer p.handlers.Done()

	rw := &writer{ResponseWriter: w, flips: offs, link: &p.link, closing: p.closing, gone: r.Context().Done()}
	if rate > 0 || stallBody >= 0 {
		rw.out = &paced{w: w, rate: rate, stall: stallBody, ctx: r.Context(), closing: p.closing}
	}
	defer func() {
		p.finish(Req{
			Method:   r.Method,
			Path:     r.URL.Path,
			Range:    r.Header.Get("Range"),
			Status:   rw.status,
			Bytes:    rw.n,
			Flipped:  rw.flipped,
			Duration: time.Since(start),
		})
	}()
	// A request given up on ends without a response: a handler that
	// returned normally would have net/http answer 200 with no body.
	if stall != nil {
		select {
		case <-stall:
		case <-p.closing:
			panic(http.ErrAbortHandler)
		case <-r.Context().Done():
			panic(http.ErrAbortHandler)
		}
	}
	if latency > 0 {
		t := time.NewTimer(latency)
		defer t.Stop()
		select {
		case <-t.C:
		case <-p.closing:
			panic(http.ErrAbortHandler)
		case <-r.Context().Done():
			panic(http.ErrAbortHandler)
		}
	}
	select {
	case <-p.closing:
		panic(http.ErrAbortHandler)
	default:
	}
	p.rp.ServeHTTP(rw, r)
}

// SetLatency adds d before each request that arrives from now on is
// forwarded; 0 removes it.
func (p *Proxy) SetLatency(d time.Duration) {
	p.mu.Lock()
	p.latency = d
	p.mu.Unlock()
}

// SetDown(true) makes the proxy look like a stopped server: its socket is
// closed, so connecting fails with connection refused, and open
// connections are dropped. SetDown(false) listens on the same address
// again; its error says the address could not be had back.
func (p *Proxy) SetDown(down bool) error {
	p.downMu.Lock()
	defer p.downMu.Unlock()
	p.mu.Lock()
	if p.closed || p.down == down {
		p.mu.Unlock()
		return nil
	}
	p.down = down
	var drop []net.Conn
	if down {
		for c := range p.live {
			drop = append(drop, c)
		}
	}
	p.mu.Unlock()
	if !down {
		return p.gate.up()
	}
	p.gate.down()
	for _, c := range drop {
		c.Close()
	}
	return nil
}

// SetStall(true) makes requests that arrive from now on wait without an
// answer until SetStall(false), Close, or the client gives up; after
// SetStall(false) they are forwarded as usual.
func (p *Proxy) SetStall(stall bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case stall && p.stall == nil:
		p.stall = make(chan struct{})
	case !stall && p.stall != nil:
		close(p.stall)
		p.stall = nil
	}
}

// FlipByte corrupts the body byte at offset (counted from the start of the
// body as sent, so a 206 answer is corrupted at that offset of the range)
// in every 2xx response to a request whose path contains pathSubstring.
// Rules add up; ClearFaults removes them.
func (p *Proxy) FlipByte(pathSubstring string, offset int64) {
	p.mu.Lock()
	p.flips = append(p.flips, flip{substr: pathSubstring, offset: offset})
	p.mu.Unlock()
}

// ClearFaults removes latency, rate, stalls, body stall, the bandwidth cap
// and FlipByte rules and brings the proxy up if it is down.
func (p *Proxy) ClearFaults() error {
	p.SetLatency(0)
	p.SetRate(0)
	p.SetStallBody(-1)
	p.SetStall(false)
	p.SetStallRanges(0)
	p.SetBandwidth(0)
	p.mu.Lock()
	p.flips = nil
	p.mu.Unlock()
	return p.SetDown(false)
}

// Close stops the proxy: stalled and waiting requests end without an
// answer, connections close, and Close returns once every goroutine the
// proxy started has ended. Calling it again returns the first result.
func (p *Proxy) Close() error {
	p.closeOnce.Do(func() {
		p.downMu.Lock()
		p.mu.Lock()
		// Stalled requests end on p.closing, without being forwarded.
		p.closed = true
		p.mu.Unlock()
		p.downMu.Unlock()
		close(p.closing)

		err := p.srv.Close()
		<-p.serveDone
		p.handlers.Wait()
		p.conns.Wait()
		// Handlers are done, so no connection to the target is in use.
		p.tr.CloseIdleConnections()
		if errors.Is(err, net.ErrClosed) {
			err = nil
		}
		p.closeErr = err
	})
	return p.closeErr
}

// Target returns the URL requests are forwarded to.
func (p *Proxy) Target() string { return p.target.String() }
