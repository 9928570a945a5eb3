package proxy

import (
	"strconv"
	"strings"
	"sync"
	"time"
)

// linkChunk is the most body bytes written at once under a bandwidth cap,
// so that concurrent responses share the link in turns.
const linkChunk = 32 << 10

// link is a bandwidth cap shared by every response the proxy sends, as one
// network link of that speed: each body write takes its turn and the time
// its bytes need at the rate.
type link struct {
	mu   sync.Mutex
	rate int64     // bytes per second; 0: no cap
	next time.Time // when the link is free again
}

// wait blocks until n bytes may go; false when closing or gone closed
// first.
func (l *link) wait(n int, closing, gone <-chan struct{}) bool {
	l.mu.Lock()
	if l.rate <= 0 {
		l.mu.Unlock()
		return true
	}
	start := time.Now()
	if l.next.After(start) {
		start = l.next
	}
	l.next = start.Add(time.Duration(float64(n) / float64(l.rate) * float64(time.Second)))
	until := l.next
	l.mu.Unlock()
	t := time.NewTimer(time.Until(until))
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-closing:
		return false
	case <-gone:
		return false
	}
}

// SetBandwidth caps the response body bytes the proxy sends, over all
// requests together, at bytesPerSec (0 removes the cap), from the next
// body write on.
func (p *Proxy) SetBandwidth(bytesPerSec int64) {
	p.link.mu.Lock()
	p.link.rate = max(bytesPerSec, 0)
	p.link.next = time.Time{}
	p.link.mu.Unlock()
}

// SetStallRanges(n) makes requests that arrive from now on with a Range
// header asking for more than n bytes wait without an answer, as SetStall
// does, until SetStallRanges(0), Close, or the client gives up; smaller
// ranges and requests without a Range pass. Tests use it to hold large
// (prefetch) reads while single KEY dirs are served.
func (p *Proxy) SetStallRanges(n int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case n > 0 && p.rangeStall == nil:
		p.rangeStall = make(chan struct{})
	case n <= 0 && p.rangeStall != nil:
		close(p.rangeStall)
		p.rangeStall = nil
	}
	p.stallOver = max(n, 0)
}

// rangeLen is the length a "bytes=a-b" Range header asks for; 0 for any
// other header.
func rangeLen(h string) int64 {
	spec, ok := strings.CutPrefix(h, "bytes=")
	if !ok {
		return 0
	}
	a, b, ok := strings.Cut(spec, "-")
	if !ok || strings.Contains(spec, ",") {
		return 0
	}
	first, err1 := strconv.ParseInt(a, 10, 64)
	last, err2 := strconv.ParseInt(b, 10, 64)
	if err1 != nil || err2 != nil || last < first {
		return 0
	}
	return last - first + 1
}
