package fs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"

	"cargohold/kind"
)

// view is the state shared by every node of one mount.
//
// Lock order: dirNode.mu is never held while view.mu is taken, nor the
// other way round.
type view struct {
	// immutable after newView
	upper    string    // absolute upper dir
	upperDev uint64    // its device, mixed out of upper inode numbers
	uid, gid uint32    // owner of the upper dir, reported for lower nodes
	prefix   string    // Options.PathPrefix
	kind     kind.Kind // Options.Kind
	lower    Lower     // nil: no images
	timeout  time.Duration
	shared   bool // Options.SharedRoot
	log      *slog.Logger
	stats    *Stats
	life     context.Context // done when the mount goes away: cancels lookups
	start    time.Time       // times reported for lower nodes
	root     *dirNode
	onKey    func(string) // Options.OnKeyLookup; nil: none

	mu      sync.Mutex
	loads   map[string]*pending // guarded by mu: unit loads in flight, by path
	orphans int                 // guarded by mu: loads nobody waits for any more
}

// NewRoot returns the root node of a view, for use with go-fuse's
// fs.NewNodeFS or fs.Mount; Mount is the usual way in. The caller passes
// explicit timeouts to go-fuse: Mount's long ones (upperTTL) hold only when
// nothing changes the upper dir behind the mount; zero entry, attr and
// negative timeouts are the safe choice otherwise (lower nodes set their
// own long ones either way).
func NewRoot(opts Options) (gofs.InodeEmbedder, error) {
	v, err := newView(context.Background(), opts)
	if err != nil {
		return nil, err
	}
	return v.root, nil
}

func newView(life context.Context, opts Options) (*view, error) {
	if opts.Upper == "" {
		return nil, errors.New("fs: no upper dir")
	}
	if opts.PathPrefix == "" {
		return nil, errors.New("fs: no path prefix")
	}
	upper, err := filepath.Abs(opts.Upper)
	if err != nil {
		return nil, fmt.Errorf("fs: upper dir: %w", err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(upper, &st); err != nil {
		return nil, fmt.Errorf("fs: upper dir %s: %w", upper, err)
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFDIR {
		return nil, fmt.Errorf("fs: upper dir %s: %w", upper, syscall.ENOTDIR)
	}
	v := &view{
		upper:    upper,
		upperDev: uint64(st.Dev),
		uid:      st.Uid,
		gid:      st.Gid,
		prefix:   opts.PathPrefix,
		kind:     opts.Kind,
		lower:    opts.Lower,
		timeout:  opts.LookupTimeout,
		shared:   opts.SharedRoot,
		log:      opts.Logger,
		stats:    opts.Stats,
		life:     life,
		start:    time.Now(),
		onKey:    opts.OnKeyLookup,
		loads:    map[string]*pending{},
	}
	if v.kind == "" {
		v.kind = kind.Triton
	}
	if !v.kind.Valid() {
		return nil, fmt.Errorf("fs: cache kind %q: want triton, vllm or inductor", v.kind)
	}
	if v.timeout <= 0 {
		v.timeout = DefaultLookupTimeout
	}
	if v.log == nil {
		v.log = slog.Default()
	}
	if v.stats == nil {
		v.stats = &Stats{}
	}
	v.root = &dirNode{v: v, kind: rootDir}
	return v, nil
}

// treePath is the upper path of a node, found by walking the inode tree up to
// the root. ok is false for a node that is no longer in the tree (unlinked,
// or renamed over while open).
func (v *view) treePath(in *gofs.Inode) (string, bool) {
	var names []string
	root := v.root.EmbeddedInode()
	for in != root {
		name, parent := in.Parent()
		if parent == nil {
			return "", false
		}
		names = append(names, name)
		in = parent
	}
	p := v.upper
	for i := len(names) - 1; i >= 0; i-- {
		p = filepath.Join(p, names[i])
	}
	return p, true
}

// isRoot reports whether the daemon may give files away (chown).
var isRoot = os.Geteuid() == 0
