package registry

import (
	"errors"
	"testing"
)

// logDumpBytes is how much of the registry log a failed test prints.
const logDumpBytes = 32 << 10

// Start starts a registry in tb.TempDir() and stops it when tb ends,
// printing the tail of its log if tb failed. It skips tb when the binary is
// missing, or fails it when CI=true.
func Start(tb testing.TB) *Registry { tb.Helper(); return start(tb, false) }

// StartAuth is Start for a registry that needs AuthUser and AuthPassword.
func StartAuth(tb testing.TB) *Registry { tb.Helper(); return start(tb, true) }

func start(tb testing.TB, auth bool) *Registry {
	tb.Helper()
	if _, err := findRegistry(); err != nil {
		missing(tb, "docker-registry", registryHint, err)
	}
	r, err := startProcess(tb.TempDir(), auth)
	if errors.Is(err, ErrNotInstalled) {
		missing(tb, "docker-registry", registryHint, err)
	}
	if err != nil {
		tb.Fatal(err)
	}
	// Registered after TempDir's cleanup, so it runs before the directory
	// is removed.
	tb.Cleanup(func() {
		if err := r.Stop(); err != nil {
			tb.Error(err)
		}
		if tb.Failed() {
			tb.Logf("registry %s log (%s, last %d bytes):\n%s", r.Addr, r.logPath, logDumpBytes, r.LogTail(logDumpBytes))
		}
	})
	return r
}
