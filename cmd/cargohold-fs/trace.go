package main

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
)

// accessOrderFile, in the state dir, lists the KEYs looked up at the mount's
// root in the order of their first lookup, one a line: the access order
// `cargohold -c --order` packs a workload's hot set by. Each mount starts
// it afresh; the previous mount's is kept as accessOrderFile + ".prev".
const accessOrderFile = "access-order"

// accessLog records the order in which KEYs are first looked up.
type accessLog struct {
	log *slog.Logger

	mu   sync.Mutex
	f    *os.File            // guarded by mu; nil once closed or broken
	seen map[string]struct{} // guarded by mu
}

func openAccessLog(stateDir string, log *slog.Logger) (*accessLog, error) {
	p := filepath.Join(stateDir, accessOrderFile)
	if err := os.Rename(p, p+".prev"); err != nil && !os.IsNotExist(err) {
		return nil, fmt.Errorf("access order: %w", err)
	}
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("access order: %w", err)
	}
	return &accessLog{log: log, f: f, seen: map[string]struct{}{}}, nil
}

// add records key unless it was looked up before (fs.Options.OnKeyLookup).
func (a *accessLog) add(key string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.seen[key]; ok || a.f == nil {
		return
	}
	a.seen[key] = struct{}{}
	if _, err := a.f.WriteString(key + "\n"); err != nil {
		// The mount goes on without a record; say so once.
		a.log.Warn("access order not recorded", "err", err)
		a.f.Close()
		a.f = nil
	}
}

func (a *accessLog) close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.f == nil {
		return nil
	}
	err := a.f.Close()
	a.f = nil
	return err
}
