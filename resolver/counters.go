package resolver

import "sync/atomic"

// Counters count blob traffic. The zero value is ready; safe for concurrent
// use. Only this package counts; others read and add up.
type Counters struct {
	requests atomic.Int64
	bytes    atomic.Int64
	errors   atomic.Int64
	retries  atomic.Int64
}

// Requests is the number of blob reads sent: HTTP attempts (a retry counts
// again; token exchanges inside the transport do not) or local file reads.
func (c *Counters) Requests() int64 { return c.requests.Load() }

// Bytes is the number of body bytes received (or read from a file).
func (c *Counters) Bytes() int64 { return c.bytes.Load() }

// Errors is the number of failed attempts, retried or not.
func (c *Counters) Errors() int64 { return c.errors.Load() }

// Retries is the number of attempts that were retries.
func (c *Counters) Retries() int64 { return c.retries.Load() }

// Add adds o's counts to c.
func (c *Counters) Add(o *Counters) {
	c.requests.Add(o.Requests())
	c.bytes.Add(o.Bytes())
	c.errors.Add(o.Errors())
	c.retries.Add(o.Retries())
}

// meter counts one use of a blob into its own Counters and, when set, into
// the Resolver's shared ones.
type meter struct {
	own, shared *Counters
}

func (m meter) each(f func(*Counters)) {
	f(m.own)
	if m.shared != nil {
		f(m.shared)
	}
}

func (m meter) request() { m.each(func(c *Counters) { c.requests.Add(1) }) }
func (m meter) failed()  { m.each(func(c *Counters) { c.errors.Add(1) }) }
func (m meter) retried() { m.each(func(c *Counters) { c.retries.Add(1) }) }

func (m meter) received(n int) {
	if n > 0 {
		m.each(func(c *Counters) { c.bytes.Add(int64(n)) })
	}
}
