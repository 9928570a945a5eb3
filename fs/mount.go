package fs

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// Server is a mounted view.
type Server struct {
	srv        *fuse.Server
	mountpoint string
	stats      *Stats
	cancel     context.CancelFunc
}

// Mount mounts the view at mountpoint and serves it until Unmount. ctx is the
// mount's lifetime for lookups: when it is done, lookups in flight and later
// ones answer ENOENT (the mount stays until Unmount). The upper dir is made
// when missing; PathPrefix defaults to the absolute mountpoint.
func Mount(ctx context.Context, mountpoint string, opts Options) (*Server, error) {
	mp, err := filepath.Abs(mountpoint)
	if err != nil {
		return nil, fmt.Errorf("fs: mount %s: %w", mountpoint, err)
	}
	if opts.PathPrefix == "" {
		opts.PathPrefix = mp
	}
	if opts.Upper != "" {
		if err := os.MkdirAll(opts.Upper, 0o755); err != nil {
			return nil, fmt.Errorf("fs: mount %s: upper dir: %w", mp, err)
		}
	}
	life, cancel := context.WithCancel(ctx)
	v, err := newView(life, opts)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("fs: mount %s: %w", mp, err)
	}
	// The kernel keeps upper answers for upperTTL (every change comes
	// through the mount); lower nodes set lowerTTL on their own answers,
	// and a "not there" that can change otherwise is not kept (uncached).
	ttl := upperTTL
	fo := &gofs.Options{
		EntryTimeout:    &ttl,
		AttrTimeout:     &ttl,
		NegativeTimeout: &ttl,
		Logger:          slog.NewLogLogger(v.log.Handler(), slog.LevelWarn),
		MountOptions: fuse.MountOptions{
			// Root mounts with mount(2) itself (hosts may lack fusermount3);
			// others fall back to the setuid fusermount3.
			DirectMount: true,
			FsName:      "cargohold",
			Name:        "cargohold",
			AllowOther:  opts.AllowOther,
			// The kernel checks permission bits (the view reports real
			// owners and modes); exec stays allowed for launcher .so files.
			Options: []string{"default_permissions"},
			// READDIRPLUS would look up every entry listed: a listing of
			// the root would fetch every KEY of every image.
			DisableReadDirPlus: true,
			Debug:              opts.Debug,
		},
	}
	// gofs.Mount, with each request counted on its way to the nodes.
	srv, err := fuse.NewServer(&countingFS{RawFileSystem: gofs.NewNodeFS(v.root, fo), s: v.stats}, mp, &fo.MountOptions)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("fs: mount %s: %w", mp, err)
	}
	go srv.Serve()
	if err := srv.WaitMount(); err != nil {
		cancel()
		return nil, fmt.Errorf("fs: mount %s: %w", mp, err)
	}
	return &Server{srv: srv, mountpoint: mp, stats: v.stats, cancel: cancel}, nil
}

// Unmount unmounts and waits for the requests in flight (a KEY lookup ends
// within LookupTimeout). It fails (EBUSY) while files are open on the mount;
// the view keeps serving then.
func (s *Server) Unmount() error {
	if err := s.srv.Unmount(); err != nil {
		return fmt.Errorf("fs: unmount %s: %w", s.mountpoint, err)
	}
	s.cancel()
	return nil
}

// Wait blocks until the mount is gone (Unmount, or fusermount -u).
func (s *Server) Wait() {
	s.srv.Wait()
	s.cancel()
}

// Stats returns the mount's counters.
func (s *Server) Stats() *Stats { return s.stats }

// Mountpoint is the absolute mountpoint.
func (s *Server) Mountpoint() string { return s.mountpoint }
