package proxy

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"
	"time"
)

// relistenTimeout bounds how long SetDown(false) retries binding the old
// address (another socket may hold it for a moment).
const relistenTimeout = 2 * time.Second

// gate is a net.Listener whose socket can be closed and reopened on the same
// address, so that while the proxy is down clients get connection refused,
// as from a stopped registry, while http.Server keeps one Serve loop.
type gate struct {
	addr net.Addr // immutable

	mu     sync.Mutex
	l      net.Listener  // nil while down
	closed bool          // Close was called
	change chan struct{} // closed and replaced when l or closed changes
}

func newGate() (*gate, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("proxy: listen: %w", err)
	}
	return &gate{addr: l.Addr(), l: l, change: make(chan struct{})}, nil
}

// notify wakes Accept after a state change; the caller holds g.mu.
func (g *gate) notify() {
	close(g.change)
	g.change = make(chan struct{})
}

// Accept waits for a connection on the current socket, and across down
// periods for the next one.
func (g *gate) Accept() (net.Conn, error) {
	for {
		g.mu.Lock()
		l, change, closed := g.l, g.change, g.closed
		g.mu.Unlock()
		if closed {
			return nil, net.ErrClosed
		}
		if l == nil {
			<-change
			continue
		}
		c, err := l.Accept()
		if err == nil {
			return c, nil
		}
		g.mu.Lock()
		swapped := g.l != l || g.closed
		g.mu.Unlock()
		if !swapped {
			return nil, err
		}
	}
}

// down closes the socket; connecting now fails with ECONNREFUSED.
func (g *gate) down() {
	g.mu.Lock()
	l := g.l
	g.l = nil
	g.notify()
	g.mu.Unlock()
	if l != nil {
		l.Close()
	}
}

// up listens on the gate's address again.
func (g *gate) up() error {
	g.mu.Lock()
	up := g.l != nil || g.closed
	g.mu.Unlock()
	if up {
		return nil
	}
	deadline := time.Now().Add(relistenTimeout)
	var l net.Listener
	var err error
	for {
		l, err = net.Listen("tcp", g.addr.String())
		if err == nil || !errors.Is(err, syscall.EADDRINUSE) || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("proxy: relisten on %s: %w", g.addr, err)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed || g.l != nil {
		// Closed or brought up by a concurrent call meanwhile.
		l.Close()
		return nil
	}
	g.l = l
	g.notify()
	return nil
}

// Close closes the socket for good and ends Accept.
func (g *gate) Close() error {
	g.mu.Lock()
	l := g.l
	g.l = nil
	g.closed = true
	g.notify()
	g.mu.Unlock()
	if l != nil {
		return l.Close()
	}
	return nil
}

func (g *gate) Addr() net.Addr { return g.addr }
