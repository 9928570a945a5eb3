package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"cargohold/catalog"
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

// TestNotServedLoggedOnce: an image the mount does not serve is logged
// with why once, again only when the reason changes; served images not
// at all.
func TestNotServedLoggedOnce(t *testing.T) {
	var buf strings.Builder
	l := &notServedLog{log: slog.New(slog.NewTextHandler(&buf, nil)), seen: map[string]string{}}
	imgs := []catalog.ImageInfo{{Ref: "r/a:v1", Why: "no target of the image (hip:gfx90a:64) fits the local GPU (cuda:90:32)"}, {Ref: "r/b:v1", Fits: true}}
	l.note(imgs)
	l.note(imgs)
	if n := strings.Count(buf.String(), "image not served"); n != 1 || !strings.Contains(buf.String(), "r/a:v1") || strings.Contains(buf.String(), "r/b:v1") {
		t.Fatalf("log after two refreshes:\n%s", buf.String())
	}
	imgs[0].Why = "a vllm cache; this catalog serves inductor caches"
	l.note(imgs)
	if n := strings.Count(buf.String(), "image not served"); n != 2 {
		t.Fatalf("a new reason is not logged:\n%s", buf.String())
	}
}
