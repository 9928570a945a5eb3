package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// TestStatusWrittenOnChange: an idle mount does not rewrite status.json;
// a changed counter is written, with a new time.
func TestStatusWrittenOnChange(t *testing.T) {
	hits := int64(0)
	w := &statusWriter{path: filepath.Join(t.TempDir(), "status.json"), log: slog.New(slog.DiscardHandler),
		snap: func() status { return status{PID: 1, Mounted: true, Hits: hits, Updated: time.Now().UTC()} }}
	read := func() (status, time.Time) {
		t.Helper()
		b, err := os.ReadFile(w.path)
		if err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(w.path)
		if err != nil {
			t.Fatal(err)
		}
		var s status
		if err := json.Unmarshal(b, &s); err != nil {
			t.Fatal(err)
		}
		return s, fi.ModTime()
	}
	w.writeChanged(w.snap())
	first, mtime := read()
	for range 3 {
		time.Sleep(20 * time.Millisecond)
		w.writeChanged(w.snap())
	}
	if again, m := read(); !again.Updated.Equal(first.Updated) || !m.Equal(mtime) {
		t.Fatalf("unchanged status rewritten: updated %v -> %v", first.Updated, again.Updated)
	}
	hits = 1
	w.writeChanged(w.snap())
	if s, _ := read(); s.Hits != 1 || !s.Updated.After(first.Updated) {
		t.Fatalf("changed status: %+v, first written %v", s, first.Updated)
	}
}

// TestStatusIdleWakesOnActivity: a busy mount's changes are written at the
// busy pace; once quiet, the writer sleeps through changes until image
// activity pokes it, then writes within the busy pace.
func TestStatusIdleWakesOnActivity(t *testing.T) {
	var hits atomic.Int64
	w := &statusWriter{path: filepath.Join(t.TempDir(), "status.json"), log: slog.New(slog.DiscardHandler),
		act: newActivity(), pace: pace{busy: 10 * time.Millisecond, quiet: 3, idle: time.Hour},
		quit: make(chan struct{}), done: make(chan struct{}),
		snap: func() status { return status{PID: 1, Hits: hits.Load(), Updated: time.Now().UTC()} }}
	written := func() int64 {
		b, err := os.ReadFile(w.path)
		if err != nil {
			return -1
		}
		var s status
		if err := json.Unmarshal(b, &s); err != nil {
			t.Fatal(err)
		}
		return s.Hits
	}
	waitFor := func(n int64, within time.Duration) bool {
		for deadline := time.Now().Add(within); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			if written() == n {
				return true
			}
		}
		return false
	}
	go w.loop(context.Background())
	defer close(w.quit)
	hits.Store(1)
	if !waitFor(1, time.Second) {
		t.Fatal("busy: change not written")
	}
	time.Sleep(100 * time.Millisecond) // 3 quiet checks: idle now
	hits.Store(2)
	if waitFor(2, 200*time.Millisecond) {
		t.Fatal("idle writer woke up without activity")
	}
	w.act.poke()
	if !waitFor(2, time.Second) {
		t.Fatal("poked idle writer did not write the change")
	}
}
