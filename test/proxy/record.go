package proxy

import (
	"strings"
	"testing"
	"time"
)

// Req is one request the proxy answered or gave up on.
type Req struct {
	Method string
	Path   string // URL path, without the query
	Range  string // the request's Range header, "" when absent
	// Status is the status sent to the client; 0 when none was (the client
	// went away while the request stalled or waited, or the proxy closed).
	Status int
	// Bytes is the count of response body bytes written to the client.
	Bytes int64
	// Flipped reports that a FlipByte rule corrupted a byte of the body.
	Flipped bool
	// Duration runs from the request's arrival to the end of its handler,
	// added latency included.
	Duration time.Duration
}

// IsBlob reports whether r addressed a blob (/v2/<name>/blobs/<digest>),
// uploads excluded.
func (r Req) IsBlob() bool {
	return strings.Contains(r.Path, "/blobs/") && !strings.Contains(r.Path, "/blobs/uploads/")
}

// IsManifest reports whether r addressed a manifest
// (/v2/<name>/manifests/<reference>).
func (r Req) IsManifest() bool { return strings.Contains(r.Path, "/manifests/") }

// finish logs r, a request that was pending.
func (p *Proxy) finish(r Req) {
	p.mu.Lock()
	p.reqs = append(p.reqs, r)
	p.pending--
	p.mu.Unlock()
}

// Pending returns how many requests have arrived and not finished: those
// stalled, waiting out latency, or being forwarded. Tests use it to know a
// request has reached the proxy.
func (p *Proxy) Pending() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pending
}

// Requests returns a copy of the log of finished requests, in the order
// they finished.
func (p *Proxy) Requests() []Req {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]Req(nil), p.reqs...)
}

// Count returns how many logged requests satisfy keep; a nil keep counts
// all.
func (p *Proxy) Count(keep func(Req) bool) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, r := range p.reqs {
		if keep == nil || keep(r) {
			n++
		}
	}
	return n
}

// BytesSent returns the response body bytes written to clients over all
// logged requests.
func (p *Proxy) BytesSent() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	var n int64
	for _, r := range p.reqs {
		n += r.Bytes
	}
	return n
}

// Reset empties the request log. Knobs keep their settings.
func (p *Proxy) Reset() {
	p.mu.Lock()
	p.reqs = nil
	p.mu.Unlock()
}

// Settle waits (up to 10s) until no request is in flight, so that counts
// read next are final; it fails tb otherwise.
func (p *Proxy) Settle(tb testing.TB) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for p.Pending() != 0 {
		if time.Now().After(deadline) {
			tb.Fatalf("proxy: %d requests still pending", p.Pending())
		}
		time.Sleep(2 * time.Millisecond)
	}
}
