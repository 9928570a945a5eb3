package fs

import (
	"context"
	"io"
	"log/slog"
	"os"
	"time"

	"cargohold/kind"
)

// Lower is the read-only, image-backed side of the view. A path rel is
// slash-separated and relative to the kind's root ("" is the root): a
// Triton KEY, or a dir of a nested cache (vLLM's
// torch_compile_cache/<hash>/rank_0_0/backbone, Inductor's
// fxgraph/<xx>/<key>).
type Lower interface {
	// Dir says what the images show at the dir path rel, without fetching
	// anything: the answer to a lookup of a dir, where the kernel holds
	// the parent's lock. It may wait (within ctx) until the images' index
	// is first loaded; an error says it could not tell.
	Dir(ctx context.Context, rel string) (LowerDir, error)
	// Entry makes unit rel available locally (fetched and verified) and
	// lists its files. It returns an error wrapping fs.ErrNotExist (io/fs)
	// when no fitting image has the unit. It may block on the network; ctx
	// carries the lookup's deadline and interruption until the lookup gives
	// up, then the mount's lifetime (the fetch outlives the lookup).
	Entry(ctx context.Context, rel string) ([]LowerFile, error)
	// Dirs lists the names of the dirs the images show right below rel,
	// without network (for readdir).
	Dirs(rel string) []string
}

// LowerDir is what the images show at a dir path.
type LowerDir struct {
	Exists bool // a unit, or a dir above units
	Unit   bool // a unit: Entry serves its files
}

// LowerFile is one file of a unit from an image.
type LowerFile struct {
	Name string      // a plain file name
	Size int64       // exact size of the content
	Mode os.FileMode // permission bits (exec bits matter for launcher .so files); no type bits
	// Rewrite is what the view changes in the file where it serves it
	// (kind.Rewrite.Apply with Options.PathPrefix as the root): a Triton
	// group file's child paths, vLLM's vllm_compile_cache.py paths. Such
	// files are read at lookup and served from memory.
	Rewrite kind.Rewrite
	// Open opens verified content; Close releases it. Nothing pins the
	// content between Entry and Open: content evicted meanwhile is the
	// Lower's to fetch again, under ctx, which carries the FUSE open's
	// interruption and a deadline of Options.LookupTimeout (for rewritten
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
	// PathPrefix is the path the framework sees the cache root at; group
	// files' child paths are rewritten to PathPrefix/<unit>/file, vLLM's
	// cache file paths to PathPrefix/torch_compile_cache/.... Default
	// (Mount): the absolute mountpoint. NewRoot requires it.
	PathPrefix string
	// Kind is the cache kind the view is the root of (package kind): it
	// says which dirs the images may show (kind.ClassifyDir) and which are
	// local-only (never asked of the images: Inductor's locks/ and
	// cache/, tmp dirs). Default kind.Triton.
	Kind kind.Kind
	// Lower supplies the images' units. Default nil: no images, the view
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
