package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"syscall"
	"time"

	"cargohold/catalog"
	"cargohold/fetch"
	"cargohold/fs"
	"cargohold/gpu"
	"cargohold/internal/cli"
	"cargohold/resolver"
	"cargohold/store"
)

func run(o options) error {
	if o.status {
		return printStatus(o.stateDir)
	}
	if !o.foreground && os.Getenv(daemonEnv) == "" {
		return daemonize(o.stateDir)
	}
	level, _ := cli.ParseLevel(o.logLevel)
	log := cli.NewLogger(cli.Stderr, level)
	if os.Getenv("GOGC") == "" {
		// The live heap is mostly the catalog; a refresh's garbage would
		// otherwise let it grow to twice that before a collection, and
		// that peak stays resident. GOGC in the environment wins.
		debug.SetGCPercent(gcPercent)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	m, err := mount(ctx, o, log)
	notifyParent(err)
	if err != nil {
		return err
	}
	log.Info("mounted", "mountpoint", m.srv.Mountpoint(), "images", o.images, "state", o.stateDir)
	done := make(chan struct{})
	go func() { m.srv.Wait(); close(done) }()
	select {
	case <-ctx.Done():
		log.Info("unmounting", "mountpoint", m.srv.Mountpoint())
		if err := unmount(m.srv); err != nil {
			m.close()
			return err
		}
		<-done
	case <-done:
		log.Warn("unmounted from outside", "mountpoint", m.srv.Mountpoint())
	}
	m.close()
	return nil
}

// gcPercent is cargohold-fs's GOGC unless the environment sets one.
const gcPercent = 50

// mounted is the running stack, closed in reverse order of assembly.
type mounted struct {
	srv    *fs.Server
	st     *store.Store
	eng    *fetch.Engine
	cancel context.CancelFunc
	status *statusWriter
}

func (m *mounted) close() {
	m.cancel()
	m.status.stop()
	m.eng.Close()
	m.st.Close()
}

// mount assembles the data path (resolver → fetch engine → catalog → fs)
// and mounts. The catalog loads from disk at once and refreshes from the
// sources in the background, so the mount is up before any network answers.
func mount(ctx context.Context, o options, log *slog.Logger) (*mounted, error) {
	rep, err := gpu.Detect(gpu.Options{Override: o.gpu})
	if err != nil {
		return nil, err
	}
	log.Info("local GPU", "targets", gpu.FormatList(rep.Targets), "source", rep.Source, "nvidia", rep.NVIDIA, "amd", rep.AMD)
	if len(rep.Targets) == 0 {
		log.Warn("no local GPU target: no image kernel will fit; the mount serves local compiles only")
	}
	if err := os.MkdirAll(o.stateDir, 0o755); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	st, err := store.Open(filepath.Join(o.stateDir, "store"), o.cacheSize)
	if err != nil {
		return nil, err
	}
	r := resolver.New(resolver.Options{Store: o.store, PlainHTTP: o.plainHTTP, Timeout: o.fetchTimeout, Logger: log})
	eng := fetch.NewEngine(r, st, o.stateDir)
	life, cancel := context.WithCancel(ctx)
	var metrics net.Listener
	ok := false
	defer func() {
		if ok {
			return
		}
		if metrics != nil {
			metrics.Close()
		}
		cancel()
		eng.Close()
		st.Close()
	}()

	cat, err := catalog.New(r, eng, catalog.Config{
		Sources: o.images, Targets: rep.Targets, StateDir: o.stateDir, Refresh: o.refresh, Logger: log,
		// A refresh that read new images is most of the process's peak;
		// the runtime would keep its pages (up to twice the heap it
		// left) long after. Rare, and a GC over a small heap.
		Built: debug.FreeOSMemory,
	})
	if err != nil {
		return nil, err
	}
	if err := cat.Load(); err != nil {
		log.Info("no usable persisted catalog; waiting for the first refresh", "err", err)
	} else {
		debug.FreeOSMemory() // the decoded file's garbage, as after a refresh (Built)
	}
	go cat.Run(life)

	if err := clearStaleMount(o.mountpoint, log); err != nil {
		return nil, err
	}
	if o.metricsAddr != "" {
		// Opened before mounting: a busy address fails the mount rather than
		// the metrics going missing.
		if metrics, err = net.Listen("tcp", o.metricsAddr); err != nil {
			return nil, fmt.Errorf("--metrics-addr: %w", err)
		}
	}
	stats := &fs.Stats{}
	act := newActivity()
	srv, err := fs.Mount(life, o.mountpoint, fs.Options{
		Upper:         filepath.Join(o.stateDir, "upper"),
		PathPrefix:    o.pathPrefix,
		Lower:         &images{cat: cat, timeout: o.fetchTimeout, act: act},
		LookupTimeout: o.fetchTimeout,
		Logger:        log,
		Stats:         stats,
		AllowOther:    o.allowOther,
	})
	if err != nil {
		return nil, err
	}
	ok = true
	return &mounted{srv: srv, st: st, eng: eng, cancel: cancel,
		status: startStatus(life, o, metrics, act, stats, eng, cat, st, log)}, nil
}

// unmount retries while the mount is busy (a process with its cwd inside),
// then detaches lazily so the process can still exit.
func unmount(srv *fs.Server) error {
	var err error
	for i := 0; i < 10; i++ {
		if err = srv.Unmount(); err == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	if derr := syscall.Unmount(srv.Mountpoint(), syscall.MNT_DETACH); derr == nil {
		return nil
	}
	return err
}
