// Package proxy is an HTTP reverse proxy for putting in front of a registry
// in tests and benchmarks, to count what a client asks for and to inject
// faults: added latency, a slow link (a rate limit on each response body),
// a bandwidth cap shared by all responses (one link), a refusing (down) or
// silent (stalled) server, bodies that stall part way, stalled large
// ranges, and corrupted response bytes.
//
// Model: one Proxy listens on 127.0.0.1 and forwards every request to one
// target, httptest-style (New, URL, Close). Requests pass through intact:
// method, path, query, Range and the Host header (so URLs the registry
// builds from Host, such as upload locations, point back at the proxy).
// Responses, redirects included, come back untouched unless a FlipByte rule
// matches. Each knob may be changed while requests are in flight; a change
// applies to requests that arrive after it.
//
// Invariants: Addr never changes, also across SetDown; Close returns only
// after every handler, connection and serving goroutine of the Proxy has
// ended, so a test can count goroutines after it.
package proxy
