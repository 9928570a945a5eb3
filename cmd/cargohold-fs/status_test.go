package main

import (
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
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
