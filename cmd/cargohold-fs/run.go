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
		if o.trace {
			return printTrace(o.stateDir)
		}
		return printStatus(o.stateDir)
	}
	if err := prepareState(o.stateDir); err != nil {
		return err
	}
	if !o.foreground && os.Getenv(daemonEnv) == "" {
		return daemonize(o.stateDir)
	}
	level, _ := cli.ParseLevel(o.logLevel)
	sink := &logSink{w: cli.Stderr}
	log := cli.NewLogger(sink, level)
	if os.Getenv("GOGC") == "" {
		// The live heap is mostly the catalog; a refresh's garbage would
		// otherwise let it grow to twice that before a collection, and
		// that peak stays resident. GOGC in the environment wins.
		debug.SetGCPercent(gcPercent)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	m, err := mount(ctx, o, log, sink)
	notifyParent(err)
	if err != nil {
		return err
	}
	log.Info("mounted", "mountpoint", m.srv.Mountpoint(), "cache", o.cache, "images", o.images, "state", o.stateDir)
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
	access *accessLog
	cancel context.CancelFunc
	status *statusWriter
	dir    *os.File // the dir under the mount: the upper dir
}

func (m *mounted) close() {
	m.cancel()
	m.status.stop()
	m.eng.Close()
	m.st.Close()
	m.dir.Close()
	m.access.close()
}

// mount assembles the data path (resolver → fetch engine → catalog → fs)
// and mounts. The catalog loads from disk at once and refreshes from the
// sources in the background, so the mount is up before any network answers.
func mount(ctx context.Context, o options, log *slog.Logger, sink *logSink) (*mounted, error) {
	rep, err := gpu.Detect(gpu.Options{Override: o.gpu})
	if err != nil {
		return nil, err
	}
	log.Info("local GPU", "targets", gpu.FormatList(rep.Targets), "source", rep.Source, "nvidia", rep.NVIDIA, "amd", rep.AMD)
	if len(rep.Targets) == 0 {
		log.Warn("no local GPU target: no image kernel will fit; the mount serves local compiles only")
	}
	mp, err := filepath.Abs(o.mountpoint)
	if err != nil {
		return nil, err
	}
	if err := clearStaleMount(mp, log); err != nil {
		return nil, err
	}
	store0 := o.store
	if store0 == "" {
		store0 = resolver.DefaultStore()
	}
	if err := checkOverlap(mp, o.stateDir, store0, o.images); err != nil {
		return nil, err
	}
	dir, err := openCacheDir(mp)
	if err != nil {
		return nil, err
	}
	moveOldUpper(o.stateDir, dir, log)
	st, err := store.Open(filepath.Join(o.stateDir, "store"), o.cacheSize)
	if err != nil {
		dir.Close()
		return nil, err
	}
	// Room for what else lives on that file system (local compiles, when
	// the cache dir shares it): the store evicts rather than fill it.
	st.KeepFree(o.minFree)
	// Lookups are bounded by --fetch-timeout (their ctx); each request by
	// --request-timeout, so that a TOC larger than a lookup may wait for is
	// still indexed in the background.
	r := resolver.New(resolver.Options{Store: o.store, PlainHTTP: o.plainHTTP, Timeout: o.reqTimeout, Logger: log})
	eng := fetch.NewEngine(r, st, o.stateDir)
	access, err := openAccessLog(o.stateDir, log)
	if err != nil {
		eng.Close()
		st.Close()
		dir.Close()
		return nil, err
	}
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
		dir.Close()
		access.close()
	}()

	// Pokes wake the status writer, which sleeps while nothing happens.
	act := newActivity()
	// Each image the mount will not serve is logged once, with why.
	var cat *catalog.Catalog
	unserved := &notServedLog{log: log, seen: map[string]string{}}
	cat, err = catalog.New(r, eng, catalog.Config{
		Sources: o.images, Kind: o.cache, Targets: rep.Targets, StateDir: o.stateDir, Refresh: o.refresh, Logger: log,
		Prefetch: o.prefetch == prefetchFitting,
		// A refresh that read new images is most of the process's peak;
		// the runtime would keep its pages (up to twice the heap it
		// left) long after. Rare, and a GC over a small heap.
		Built: debug.FreeOSMemory,
		// The status writer sleeps while nothing happens; a refresh may
		// change what it says (ready, KEYs, failing sources).
		Refreshed: func() { act.poke(); unserved.note(cat.Images()) },
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

	if o.metricsAddr != "" {
		// Opened before mounting: a busy address fails the mount rather than
		// the metrics going missing.
		if metrics, err = net.Listen("tcp", o.metricsAddr); err != nil {
			return nil, fmt.Errorf("--metrics-addr: %w", err)
		}
	}
	// On a shared (allow_other) mount of a root daemon, other users compile
	// too: the root shows open to all and sticky, and what they make is
	// theirs. A non-root daemon cannot give files away, so there others
	// can only read.
	shared := o.allowOther && os.Geteuid() == 0
	if o.allowOther && !shared {
		log.Warn("--allow-other without root: other users can read the mount, but their compiles fail (the daemon cannot give them what they make)")
	}
	stats := &fs.Stats{}
	srv, err := withFusermountCause(func() (*fs.Server, error) {
		return fs.Mount(life, mp, fs.Options{
			Upper:         upperPath(dir),
			PathPrefix:    o.pathPrefix,
			Kind:          o.cache,
			Lower:         &images{cat: cat, timeout: o.fetchTimeout, act: act},
			LookupTimeout: o.fetchTimeout,
			Logger:        log,
			Stats:         stats,
			AllowOther:    o.allowOther,
			SharedRoot:    shared,
			OnKeyLookup:   access.add,
		})
	})
	if err != nil {
		return nil, err
	}
	ok = true
	return &mounted{srv: srv, st: st, eng: eng, access: access, cancel: cancel, dir: dir,
		status: startStatus(life, o, metrics, act, stats, eng, cat, st, log, sink)}, nil
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
