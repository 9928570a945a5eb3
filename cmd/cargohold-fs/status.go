package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"time"

	"cargohold/catalog"
	"cargohold/fetch"
	"cargohold/fs"
	"cargohold/store"
)

// status is what <state-dir>/status.json says about a running mount.
type status struct {
	PID        int               `json:"pid"`
	Mountpoint string            `json:"mountpoint"`
	Images     []string          `json:"images"`
	Updated    time.Time         `json:"updated"` // when it last changed (see loop for how soon it is written)
	Mounted    bool              `json:"mounted"`
	Ready      bool              `json:"index_ready"`
	Keys       int               `json:"indexed_keys"`
	FS         fs.StatsSnapshot  `json:"fs"`
	Engine     fetch.Stats       `json:"engine"`
	Catalog    catalog.Stats     `json:"catalog"`
	Store      store.Stats       `json:"store"`
	Sources    map[string]string `json:"source_errors,omitempty"`

	// The headline numbers, flat for scripts. Each failure counts once,
	// where it was recorded: a KEY lookup or read that became an errno
	// (fs), or a source refresh that failed (catalog).
	Hits      int64  `json:"hits"`
	Misses    int64  `json:"misses"`
	Fetches   int64  `json:"fetches"`
	Bytes     int64  `json:"bytes"`
	Errors    int64  `json:"errors"`
	LastError string `json:"last_error,omitempty"`
}

type statusWriter struct {
	path string
	snap func() status
	log  *slog.Logger
	srv  *http.Server
	act  *activity
	pace pace

	once sync.Once
	quit chan struct{}
	done chan struct{}
	last []byte // the last status written, without its time (loop's)
}

func startStatus(ctx context.Context, o options, metrics net.Listener, act *activity, stats *fs.Stats, eng *fetch.Engine, cat *catalog.Catalog, st *store.Store, log *slog.Logger) *statusWriter {
	mp, _ := filepath.Abs(o.mountpoint)
	snap := func() status {
		s := status{PID: os.Getpid(), Mountpoint: mp, Images: o.images, Updated: time.Now().UTC(), Mounted: true,
			FS: stats.Snapshot(), Engine: eng.Stats(), Catalog: cat.Stats(), Store: st.Stats(), Sources: errStrings(cat.Errors())}
		select {
		case <-cat.Ready():
			s.Ready = true
		default:
		}
		s.Keys = s.Catalog.Keys
		s.Hits, s.Misses = s.FS.Hits, s.FS.Misses
		s.Fetches, s.Bytes = s.Engine.Fetches, s.Engine.Bytes
		s.Errors = s.FS.LookupErrors + s.FS.IOErrors + s.Catalog.SourceFailures
		s.LastError = s.FS.LastError
		if s.LastError == "" && len(s.Sources) > 0 {
			src := slices.Min(slices.Collect(maps.Keys(s.Sources)))
			s.LastError = src + ": " + s.Sources[src]
		}
		return s
	}
	w := &statusWriter{path: filepath.Join(o.stateDir, "status.json"), snap: snap, log: log, act: act,
		pace: defaultPace, quit: make(chan struct{}), done: make(chan struct{})}
	if metrics != nil {
		w.serveMetrics(metrics)
	}
	// The first status is there before anyone is told the mount is up.
	w.writeChanged(snap())
	go w.loop(ctx)
	return w
}

// Status checks (statusWriter.pace): once a second while the mount is
// busy; after 5 checks that found nothing new, the writer waits for image
// activity (any call of the images adapter) or 30 s, so that an idle mount
// does not wake up at all in between. Changes that no image call precedes
// (upper-dir errors, hits of KEY dirs already looked up) show within 30 s
// then; /metrics is always current.
var defaultPace = pace{busy: time.Second, quiet: 5, idle: 30 * time.Second}

type pace struct {
	busy  time.Duration // between checks while something changes
	quiet int           // unchanged checks before the writer goes idle
	idle  time.Duration // between checks while idle, unless poked
}

// loop rewrites status.json when something changed (an idle mount writes
// nothing). A snapshot costs the same whatever the number of KEYs
// (counters and per-image totals).
func (w *statusWriter) loop(ctx context.Context) {
	defer close(w.done)
	t := time.NewTimer(w.pace.busy)
	defer t.Stop()
	quiet := 0
	for {
		var woken <-chan struct{}
		if quiet >= w.pace.quiet {
			woken = w.act.c // only while idle: a busy mount pokes all the time
		}
		select {
		case <-ctx.Done():
			return
		case <-w.quit:
			return
		case <-woken:
			quiet = 0
			t.Reset(w.pace.busy) // look soon, as when busy
			continue
		case <-t.C:
		}
		if w.writeChanged(w.snap()) {
			quiet = 0
		} else {
			quiet++
		}
		next := w.pace.busy
		if quiet >= w.pace.quiet {
			w.act.clear() // a poke from before counts for nothing now
			next = w.pace.idle
		}
		t.Reset(next)
	}
}

// activity carries pokes from the images adapter to the status writer.
type activity struct{ c chan struct{} }

func newActivity() *activity { return &activity{c: make(chan struct{}, 1)} }

// poke never blocks: one pending poke is enough.
func (a *activity) poke() {
	select {
	case a.c <- struct{}{}:
	default:
	}
}

func (a *activity) clear() {
	select {
	case <-a.c:
	default:
	}
}

// writeChanged writes s unless only its time differs from the last one
// written, and says whether it wrote.
func (w *statusWriter) writeChanged(s status) bool {
	s.Updated = time.Time{}
	key, _ := json.Marshal(s)
	if bytes.Equal(key, w.last) {
		return false
	}
	w.last = key
	s.Updated = time.Now().UTC()
	w.write(s)
	return true
}

// stop writes a last status saying the mount is gone.
func (w *statusWriter) stop() {
	if w == nil {
		return
	}
	w.once.Do(func() {
		close(w.quit)
		<-w.done
		s := w.snap()
		s.Mounted = false
		w.write(s)
		if w.srv != nil {
			w.srv.Close()
		}
	})
}

func (w *statusWriter) write(s status) {
	b, _ := json.MarshalIndent(s, "", "  ")
	tmp := w.path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		w.log.Warn("status file", "err", err)
		return
	}
	if err := os.Rename(tmp, w.path); err != nil {
		w.log.Warn("status file", "err", err)
	}
}

// serveMetrics serves the status as Prometheus text on ln (opened before
// mounting, so that a busy address fails the mount rather than the metrics
// going missing).
func (w *statusWriter) serveMetrics(ln net.Listener) {
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", func(rw http.ResponseWriter, _ *http.Request) {
		s := w.snap()
		rw.Header().Set("Content-Type", "text/plain; version=0.0.4")
		m := map[string]int64{
			"cargohold_fs_hits_total": s.Hits, "cargohold_fs_misses_total": s.Misses,
			"cargohold_fetches_total": s.Fetches, "cargohold_fetch_bytes_total": s.Bytes,
			"cargohold_errors_total": s.Errors, "cargohold_indexed_keys": int64(s.Keys),
			"cargohold_store_bytes": s.Store.Bytes, "cargohold_store_entries": int64(s.Store.Entries),
		}
		names := make([]string, 0, len(m))
		for n := range m {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			fmt.Fprintf(rw, "%s %d\n", n, m[n])
		}
	})
	w.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := w.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			w.log.Error("metrics endpoint", "err", err)
		}
	}()
}

func printStatus(stateDir string) error {
	b, err := os.ReadFile(filepath.Join(stateDir, "status.json"))
	if err != nil {
		return fmt.Errorf("status: no mount has written %s: %w", filepath.Join(stateDir, "status.json"), err)
	}
	_, err = os.Stdout.Write(b)
	return err
}

func errStrings(m map[string]error) map[string]string {
	if len(m) == 0 {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, err := range m {
		out[k] = err.Error()
	}
	return out
}
