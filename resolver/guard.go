package resolver

import (
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"time"
)

// ErrInsecure: a request would have gone over plain HTTP where that is not
// allowed.
var ErrInsecure = errors.New("plain HTTP refused")

// guard is the base transport under authentication: every request the
// resolver sends (pings, token exchanges, manifests, blobs, pushes,
// redirects) passes it on its way out.
//
// Plain HTTP (2026-12, ggcr v0.22.1): name.Registry.Scheme says "http" for
// loopback, localhost and RFC 1918 addresses, and transport.Ping then falls
// back from https to http for them; the Basic credentials of the keychain
// would follow in clear. So plain HTTP goes out only to loopback, or with
// Options.PlainHTTP; and never with an Authorization header to a host
// that is not loopback.
//
// Failing hosts: health (health.go) makes requests to a registry that keeps
// failing fail at once for a while.
//
// Stalls: every request without a body is watched (stall.go): no answer or
// no body bytes for timeout fails it with ErrStalled.
type guard struct {
	next      http.RoundTripper
	plainHTTP bool
	health    *health
	timeout   time.Duration
}

func (g *guard) RoundTrip(req *http.Request) (*http.Response, error) {
	if err := g.check(req); err != nil {
		if req.Body != nil {
			req.Body.Close() // RoundTrip closes the body, also on errors
		}
		return nil, err
	}
	return watch(func(req *http.Request) (*http.Response, error) {
		return g.health.roundTrip(g.next, req)
	}, req, g.timeout)
}

func (g *guard) check(req *http.Request) error {
	if req.URL.Scheme != "http" || isLoopbackHost(req.URL.Hostname()) {
		return nil
	}
	host := req.URL.Host
	switch {
	case !g.plainHTTP:
		return fmt.Errorf("%w: %s is not loopback; pass --plain-http if this registry only speaks plain HTTP (%s %s)",
			ErrInsecure, host, req.Method, req.URL.Redacted())
	case req.Header.Get("Authorization") != "":
		return fmt.Errorf("%w: not sending credentials over plain HTTP to %s, which is not loopback (%s %s); use https",
			ErrInsecure, host, req.Method, req.URL.Redacted())
	}
	return nil
}

// isLoopbackHost: localhost, *.localhost, or a loopback address literal.
func isLoopbackHost(h string) bool {
	if h == "localhost" || strings.HasSuffix(h, ".localhost") {
		return true
	}
	a, err := netip.ParseAddr(h)
	return err == nil && a.IsLoopback()
}
