package main

import (
	"fmt"
	"io"
	"sync"
)

// logSink is the daemon's log output (its log file, when detached). A
// write that fails (a full disk) is counted and its cause kept for
// status.json and the metrics; the next write that works first says how
// many lines were lost and why. Writes never fail for the logger.
type logSink struct {
	w io.Writer

	mu     sync.Mutex
	errs   int64 // guarded by mu: failed writes, ever
	lost   int64 // guarded by mu: lines lost since the last write that worked
	last   error // guarded by mu: the last failure
	failed bool  // guarded by mu: the last write failed
}

func (s *logSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lost > 0 {
		note := fmt.Sprintf("WARNING log: %d lines lost while the log could not be written: %v\n", s.lost, s.last)
		if _, err := s.w.Write([]byte(note)); err == nil {
			s.lost = 0
		}
	}
	if _, err := s.w.Write(p); err != nil {
		s.errs++
		s.lost++
		s.last = err
		s.failed = true
		return len(p), nil
	}
	s.failed = false
	return len(p), nil
}

// stats are the failed writes so far and the last cause.
func (s *logSink) stats() (errs int64, last error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.errs, s.last
}
