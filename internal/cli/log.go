// Package cli holds what both commands share at their edge: log setup and the
// terminal progress bar. No product logic lives here.
package cli

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
)

// ParseLevel reads -l/--log-level: debug, info, warning (or warn), error.
func ParseLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug, nil
	case "info", "":
		return slog.LevelInfo, nil
	case "warning", "warn":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("log level %q: want debug, info, warning or error", s)
}

// NewLogger writes "LEVEL message key=value ..." lines, one per record, to w.
func NewLogger(w io.Writer, level slog.Level) *slog.Logger {
	return slog.New(&handler{w: w, level: level, mu: &sync.Mutex{}})
}

type handler struct {
	w     io.Writer
	level slog.Level
	mu    *sync.Mutex
	attrs []slog.Attr
}

func (h *handler) Enabled(_ context.Context, l slog.Level) bool { return l >= h.level }

func (h *handler) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	lv := r.Level.String()
	if r.Level == slog.LevelWarn {
		lv = "WARNING"
	}
	fmt.Fprintf(&b, "%-7s %s", lv, r.Message)
	add := func(a slog.Attr) bool {
		v := a.Value.String()
		if strings.ContainsAny(v, " \t\"") {
			v = fmt.Sprintf("%q", v)
		}
		fmt.Fprintf(&b, " %s=%s", a.Key, v)
		return true
	}
	for _, a := range h.attrs {
		add(a)
	}
	r.Attrs(add)
	b.WriteByte('\n')
	h.mu.Lock()
	defer h.mu.Unlock()
	_, err := io.WriteString(h.w, b.String())
	return err
}

func (h *handler) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	c.attrs = append(append([]slog.Attr{}, h.attrs...), as...)
	return &c
}

func (h *handler) WithGroup(string) slog.Handler { return h }

// Stderr is where logs and progress go.
var Stderr io.Writer = os.Stderr
