package fs

import (
	"context"
	"io"
	"log/slog"
	"os"
	"time"
)

// Lower is the read-only, image-backed side of the view.
type Lower interface {
	// Has reports whether an image that fits lists KEY, without fetching
	// anything: the answer to a lookup of KEY at the root, where the
	// kernel holds the root's lock. It may wait (within ctx) until the
	// images' index is first loaded; an error says it could not tell.
	Has(ctx context.Context, key string) (bool, error)
	// Entry makes KEY's dir available locally (fetched and verified) and
	// lists its files. It returns an error wrapping fs.ErrNotExist (io/fs)
	// when no fitting image has KEY. It may block on the network; ctx
	// carries the lookup's deadline and interruption until the lookup gives
	// up, then the mount's lifetime (the fetch outlives the lookup).
	Entry(ctx context.Context, key string) ([]LowerFile, error)
	// Keys lists the KEYs the images hold, without network (for readdir of
	// the root).
	Keys() []string
}

// LowerFile is one file of a KEY dir from an image.
type LowerFile struct {
	Name  string      // a plain file name
	Size  int64       // exact size of the content
	Mode  os.FileMode // permission bits (exec bits matter for launcher .so files); no type bits
	Group bool        // a group file: served with its child paths rewritten to Options.PathPrefix
	// Open opens verified content; Close releases it. Nothing pins the
	// content between Entry and Open: content evicted meanwhile is the
	// Lower's to fetch again, under ctx, which carries the FUSE open's
	// interruption and a deadline of Options.LookupTimeout (for group
	// files, read at lookup: the lookup's).
	Open func(ctx context.Context) (Content, error)
}

// Content is opened image content. Fd is a descriptor whose bytes from offset
// 0 are the content (reads are served from it with pread/splice); an Fd of
// ^uintptr(0) makes reads go through ReadAt instead. *os.File satisfies it.
type Content interface {
	io.ReaderAt
	Fd() uintptr
	Close() error
}

// DefaultLookupTimeout is the default of Options.LookupTimeout.
const DefaultLookupTimeout = 5 * time.Second

// Options configures the view. The zero value of each field means its
// documented default.
type Options struct {
	// Upper is the dir that takes every write and keeps the whiteouts; it
	// survives remounts. Required. Mount creates it when missing. Nothing
	// may change it but the mount while mounted: the kernel keeps what the
	// mount said of it (cargohold-fs uses the dir under the mount).
	Upper string
	// PathPrefix is the path Triton sees the cache at; group files' child
	// paths are rewritten to PathPrefix/KEY/file. Default (Mount): the
	// absolute mountpoint. NewRoot requires it.
	PathPrefix string
	// Lower supplies the images' KEY dirs. Default nil: no images, the view
	// is the upper dir alone.
	Lower Lower
	// LookupTimeout bounds how long one lookup waits for a KEY dir from the
	// Lower, group rewrite included (the load itself goes on in the
	// background, see pending). Default DefaultLookupTimeout (5s).
	LookupTimeout time.Duration
	// OnKeyLookup, when set, is called with each KEY name looked up at the
	// root, whatever the answer, in the order the lookups come (the
	// kernel's dentry cache keeps repeats away for a while). It runs on the
	// lookup's path and must be quick. Default none.
	OnKeyLookup func(key string)
	// Logger receives failures with their cause. Default slog.Default().
	Logger *slog.Logger
	// Stats receives the counters. Default: a fresh Stats (Server.Stats).
	Stats *Stats
	// AllowOther lets users other than the mounting one use the mount
	// (FUSE allow_other; needs user_allow_other or root). Permission bits
	// are checked by the kernel (default_permissions). Default false.
	AllowOther bool
	// SharedRoot shows the root dir as sticky and writable by all (01777,
	// like /tmp), whatever the upper dir's mode, so that on an AllowOther
	// mount other users can make their KEY dirs and compile; a daemon
	// running as root gives each new entry to its maker. Default false.
	SharedRoot bool
	// Debug logs every FUSE request (go-fuse debug output). Default false.
	Debug bool
}
