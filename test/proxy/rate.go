package proxy

import (
	"context"
	"net/http"
	"time"
)

// SetRate limits each response body that starts from now on to about
// bytesPerSec (a slow link); 0 removes the limit. A response already
// being sent keeps the rate it started with.
func (p *Proxy) SetRate(bytesPerSec int64) {
	p.mu.Lock()
	p.rate = bytesPerSec
	p.mu.Unlock()
}

// SetStallBody makes each response body that starts from now on stop
// after its first n bytes, as a server that hangs mid-body, until the
// client goes or the proxy closes; n < 0 removes the rule. A body shorter
// than n is sent whole.
func (p *Proxy) SetStallBody(n int64) {
	p.mu.Lock()
	p.stallBody = n
	p.mu.Unlock()
}

// paced writes a body at a fixed rate, in pieces of a twentieth of a
// second, flushing each; it stops when the client or the proxy goes.
type paced struct {
	w       http.ResponseWriter
	rate    int64 // bytes per second; 0: no limit
	stall   int64 // bytes to send before hanging; < 0: never hang
	sent    int64
	ctx     context.Context
	closing <-chan struct{}
}

func (pw *paced) Write(p []byte) (int, error) {
	piece := len(p)
	if pw.rate > 0 {
		piece = max(int(pw.rate/20), 1)
	}
	n := 0
	for n < len(p) {
		k := min(piece, len(p)-n)
		if pw.stall >= 0 {
			if pw.sent >= pw.stall {
				return n, pw.hang()
			}
			k = int(min(int64(k), pw.stall-pw.sent))
		}
		m, err := pw.w.Write(p[n : n+k])
		n += m
		pw.sent += int64(m)
		if err != nil {
			return n, err
		}
		if f, ok := pw.w.(http.Flusher); ok {
			f.Flush()
		}
		if pw.rate == 0 {
			continue
		}
		t := time.NewTimer(time.Duration(int64(k) * int64(time.Second) / pw.rate))
		select {
		case <-t.C:
		case <-pw.ctx.Done():
			t.Stop()
			return n, pw.ctx.Err()
		case <-pw.closing:
			t.Stop()
			return n, http.ErrAbortHandler
		}
	}
	return n, nil
}

// hang waits for the client or the proxy to go.
func (pw *paced) hang() error {
	select {
	case <-pw.ctx.Done():
		return pw.ctx.Err()
	case <-pw.closing:
		return http.ErrAbortHandler
	}
}
