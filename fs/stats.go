package fs

import (
	"sync/atomic"
	"time"
)

// Stats counts what the view answered. The zero value is ready; it is safe
// for concurrent use.
type Stats struct {
	hits         atomic.Int64 // KEY dirs whose files an image served (once per dir node)
	misses       atomic.Int64 // KEY lookups no image lists, and listed KEYs no fitting image has after all
	lookupErrors atomic.Int64 // KEY lookups and fetches that failed (error, timeout): answered ENOENT
	ioErrors     atomic.Int64 // other failures answered EIO
	last         atomic.Pointer[lastError]
	requests     [numOps]atomic.Int64 // FUSE requests by kind (requests.go)
}

type lastError struct {
	msg string
	at  time.Time
}

// StatsSnapshot is a copy of the counters, as written to status.json.
type StatsSnapshot struct {
	Hits          int64     `json:"hits"`
	Misses        int64     `json:"misses"`
	LookupErrors  int64     `json:"lookup_errors"`
	IOErrors      int64     `json:"io_errors"`
	LastError     string    `json:"last_error,omitempty"`
	LastErrorTime time.Time `json:"last_error_time,omitzero"`
	// Requests counts the FUSE requests the kernel sent, by kind
	// ("LOOKUP", "GETATTR", "OPEN", …); kinds never sent are left out.
	Requests map[string]int64 `json:"requests,omitempty"`
}

// Snapshot copies the counters. A nil Stats gives zeros.
func (s *Stats) Snapshot() StatsSnapshot {
	if s == nil {
		return StatsSnapshot{}
	}
	out := StatsSnapshot{
		Hits:         s.hits.Load(),
		Misses:       s.misses.Load(),
		LookupErrors: s.lookupErrors.Load(),
		IOErrors:     s.ioErrors.Load(),
	}
	if l := s.last.Load(); l != nil {
		out.LastError, out.LastErrorTime = l.msg, l.at
	}
	for op := range numOps {
		if n := s.requests[op].Load(); n > 0 {
			if out.Requests == nil {
				out.Requests = make(map[string]int64)
			}
			out.Requests[opNames[op]] = n
		}
	}
	return out
}

func (s *Stats) hit()             { s.hits.Add(1) }
func (s *Stats) request(op reqOp) { s.requests[op].Add(1) }
func (s *Stats) miss()            { s.misses.Add(1) }

func (s *Stats) lookupError(err error) {
	s.lookupErrors.Add(1)
	s.setLast(err)
}

func (s *Stats) ioError(err error) {
	s.ioErrors.Add(1)
	s.setLast(err)
}

func (s *Stats) setLast(err error) {
	s.last.Store(&lastError{msg: err.Error(), at: time.Now()})
}
