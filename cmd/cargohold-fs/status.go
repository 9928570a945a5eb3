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
	"cargohold/internal/userdir"
	"cargohold/kind"
	"cargohold/store"
)

// status is what <state-dir>/status.json says about a running mount.
type status struct {
	PID        int       `json:"pid"`
	Mountpoint string    `json:"mountpoint"`
	Kind       kind.Kind `json:"cache"` // the kind the mount is the root of
	Images     []string  `json:"images"`
	// NotServed names the images whose units are not (all) served, and why
	// (another kind; no target fits the local GPU).
	NotServed map[string]string `json:"not_served,omitempty"`
	Updated   time.Time         `json:"updated"` // when it last changed (see loop for how soon it is written)
	Mounted   bool              `json:"mounted"`
	Ready     bool              `json:"index_ready"`
	Keys      int               `json:"indexed_keys"`
	FS        fs.StatsSnapshot  `json:"fs"`
	Engine    fetch.Stats       `json:"engine"`
	Catalog   catalog.Stats     `json:"catalog"`
	Store     store.Stats       `json:"store"`
	Sources   map[string]string `json:"source_errors,omitempty"`

	// The headline numbers, flat for scripts. Each failure counts once,
	// where it was recorded: a KEY lookup or read that became an errno
	// (fs), or a source refresh that failed (catalog).
	Hits      int64  `json:"hits"`
	Misses    int64  `json:"misses"`
	Fetches   int64  `json:"fetches"`
	Bytes     int64  `json:"bytes"`
	Errors    int64  `json:"errors"`
	LastError string `json:"last_error,omitempty"`

	// Writes of this file and of the log that failed (a full disk), and
	// the last cause: counted, never silent.
	StatusWriteErrors int64  `json:"status_write_errors"`
	LogWriteErrors    int64  `json:"log_write_errors"`
	LastWriteError    string `json:"last_write_error,omitempty"`
}

// statusWriter writes status.json when something changed, at its pace. Lock order: statusWriter.mu
// before logSink.mu (write logs while holding mu).
type statusWriter struct {
	path string
	snap func() status
	log  *slog.Logger
	srv  *http.Server
	act  *activity
	pace pace

	mu       sync.Mutex
	errs     int64 // guarded by mu: failed writes of the status file
	lastErr  error // guarded by mu
	failing  bool  // guarded by mu: the last write failed (logged once per streak)
	failedAt int64 // guarded by mu: errs when the streak began

	once sync.Once
	quit chan struct{}
	done chan struct{}
	last []byte // the last status written, without its time (loop's)
}

func startStatus(ctx context.Context, o options, metrics net.Listener, act *activity, stats *fs.Stats, eng *fetch.Engine, cat *catalog.Catalog, st *store.Store, log *slog.Logger, sink *logSink) *statusWriter {
	mp, _ := filepath.Abs(o.mountpoint)
	w := &statusWriter{path: filepath.Join(o.stateDir, statusName), log: log, act: act,
		pace: defaultPace, quit: make(chan struct{}), done: make(chan struct{})}
	w.snap = func() status {
		s := status{PID: os.Getpid(), Mountpoint: mp, Kind: o.cache, Images: o.images, Updated: time.Now().UTC(), Mounted: true,
			FS: stats.Snapshot(), Engine: eng.Stats(), Catalog: cat.Stats(), Store: st.Stats(), Sources: errStrings(cat.Errors()),
			NotServed: notServed(cat.Images())}
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
		var lastLog, lastStatus error
		s.LogWriteErrors, lastLog = sink.stats()
		s.StatusWriteErrors, lastStatus = w.writeErrors()
		if lastStatus != nil {
			s.LastWriteError = "status: " + lastStatus.Error()
		} else if lastLog != nil {
			s.LastWriteError = "log: " + lastLog.Error()
		}
		return s
	}
	if metrics != nil {
		w.serveMetrics(metrics)
	}
	// The first status is there before anyone is told the mount is up.
	w.writeChanged(w.snap())
	go w.loop(ctx)
	return w
}

// notServed maps the images whose units are not (all) served to why.
func notServed(imgs []catalog.ImageInfo) map[string]string {
	var m map[string]string
	for _, im := range imgs {
		if im.Why == "" {
			continue
		}
		if m == nil {
			m = map[string]string{}
		}
		m[im.Ref] = im.Why
	}
	return m
}

// notServedLog logs each image the mount does not serve, once per reason.
type notServedLog struct {
	log  *slog.Logger
	mu   sync.Mutex
	seen map[string]string // guarded by mu: image ref → the reason logged
}

func (l *notServedLog) note(imgs []catalog.ImageInfo) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for ref, why := range notServed(imgs) {
		if l.seen[ref] != why {
			l.seen[ref] = why
			l.log.Info("image not served", "image", ref, "why", why)
		}
	}
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

// write replaces the status file. A failure (a full disk) is counted and
// logged once per streak with its cause; the loop tries again each second,
// and the first write that works again is logged too.
func (w *statusWriter) write(s status) {
	b, _ := json.MarshalIndent(s, "", "  ")
	tmp := w.path + ".tmp"
	err := writeFile(tmp, append(b, '\n'))
	if err == nil {
		if err = os.Rename(tmp, w.path); err != nil {
			os.Remove(tmp)
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case err != nil:
		w.errs++
		w.lastErr = err
		if !w.failing {
			w.failing, w.failedAt = true, w.errs
			w.log.Warn("status file not written; retrying every second", "path", w.path, "err", err)
		}
	case w.failing:
		w.failing = false
		w.log.Info("status file written again", "path", w.path, "failed_writes", w.errs-w.failedAt+1)
	}
}

// writeErrors are the failed status writes so far and the last cause.
func (w *statusWriter) writeErrors() (int64, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.errs, w.lastErr
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
			"cargohold_status_write_errors_total": s.StatusWriteErrors, "cargohold_log_write_errors_total": s.LogWriteErrors,
		}
		names := make([]string, 0, len(m))
		for n := range m {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			fmt.Fprintf(rw, "%s %d\n", n, m[n])
		}
		ops := slices.Sorted(maps.Keys(s.FS.Requests))
		for _, op := range ops {
			fmt.Fprintf(rw, "cargohold_fuse_requests_total{op=%q} %d\n", op, s.FS.Requests[op])
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
	p := filepath.Join(stateDir, statusName)
	b, err := os.ReadFile(p)
	if err != nil {
		return fmt.Errorf("status: no mount has written %s: %w", p, err)
	}
	_, err = os.Stdout.Write(b)
	return err
}

// printTrace prints the KEYs of the running (or last) mount in the order
// of their first lookup.
func printTrace(stateDir string) error {
	b, err := os.ReadFile(filepath.Join(stateDir, accessOrderFile))
	if err != nil {
		return fmt.Errorf("status --trace: no mount has recorded %s: %w", filepath.Join(stateDir, accessOrderFile), err)
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

// writeFile replaces path's content, never through a symlink.
func writeFile(path string, b []byte) error {
	f, err := userdir.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
