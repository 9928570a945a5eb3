package fs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// upperFile is a file, symlink or other non-dir of the upper layer. Its path
// comes from the inode tree; an open handle outlives a rename over it.
//
// The node is one file: a path that holds another file (one renamed over
// it) is not this node's. A process may look a name up just before another
// renames a file over it (Triton's concurrent compiles do) and open or stat
// the node just after: Rename keeps the replaced node's file (keep) so that
// it still opens and stats, as it would on a local disk.
type upperFile struct {
	gofs.Inode
	v *view

	mu     sync.Mutex
	kept   bool // guarded by mu: keptFd holds the node's file
	keptFd int  // guarded by mu: an O_PATH descriptor, closed when the kernel forgets the node
}

var _ = (gofs.NodeGetattrer)((*upperFile)(nil))
var _ = (gofs.NodeSetattrer)((*upperFile)(nil))
var _ = (gofs.NodeOpener)((*upperFile)(nil))
var _ = (gofs.NodeReadlinker)((*upperFile)(nil))
var _ = (gofs.NodeIoctler)((*upperFile)(nil))
var _ = (gofs.NodeOnForgetter)((*upperFile)(nil))

func (n *upperFile) path() (string, bool) { return n.v.treePath(n.EmbeddedInode()) }

// mine reports whether st (and gen) is this node's file.
func (n *upperFile) mine(st *syscall.Stat_t, gen uint64) bool {
	a := n.StableAttr()
	return n.v.upperIno(st) == a.Ino && gen == a.Gen
}

// keep holds on to the node's file at p before another file is renamed
// over it. Only regular files are kept (the kernel reads symlinks itself).
func (n *upperFile) keep(p string) error {
	fd, err := unix.Open(p, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if errors.Is(err, syscall.ENOENT) {
		return nil // nothing to keep
	}
	if err != nil {
		return &os.PathError{Op: "keep", Path: p, Err: err}
	}
	st, gen, err := fstatGen(fd)
	n.mu.Lock()
	defer n.mu.Unlock()
	if err != nil || n.kept || st.Mode&syscall.S_IFMT != syscall.S_IFREG || !n.mine(&st, gen) {
		syscall.Close(fd)
		if err != nil {
			return &os.PathError{Op: "keep", Path: p, Err: err}
		}
		return nil
	}
	n.kept, n.keptFd = true, fd
	return nil
}

// withKept runs fn on the kept file's O_PATH descriptor, if there is one.
func (n *upperFile) withKept(fn func(fd int) error) (bool, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.kept {
		return false, nil
	}
	return true, fn(n.keptFd)
}

// OnForget closes the kept file: no request names the node any more.
func (n *upperFile) OnForget() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.kept {
		syscall.Close(n.keptFd)
		n.kept = false
	}
}

// Getattr stats the open file if there is one (it may have been renamed
// over), else the node's file: at its path, or the kept one.
func (n *upperFile) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	if h, ok := f.(*upperHandle); ok {
		return h.Getattr(ctx, out)
	}
	p, ok := n.path()
	if ok {
		st, gen, err := lstatGen(p)
		if err == nil && n.mine(&st, gen) {
			out.FromStat(&st)
			out.Ino = 0 // the node's own; the bridge fills it in
			return 0
		}
		if err != nil && !errors.Is(err, syscall.ENOENT) {
			return n.v.errno("getattr "+p, err, false)
		}
	}
	var st syscall.Stat_t
	kept, err := n.withKept(func(fd int) error { return syscall.Fstat(fd, &st) })
	if !kept {
		return syscall.ENOENT // the node's file is gone
	}
	if err != nil {
		return n.v.errno("getattr "+p+" (renamed over)", err, false)
	}
	out.FromStat(&st)
	out.Ino = 0
	return 0
}

// Setattr changes the open file if there is one, else the path.
func (n *upperFile) Setattr(ctx context.Context, f gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if h, ok := f.(*upperHandle); ok {
		if err := setattrFd(h.fd, in); err != nil {
			return n.v.errno("setattr "+h.path, err, false)
		}
		return h.Getattr(ctx, out)
	}
	p, ok := n.path()
	if !ok {
		return syscall.ENOENT
	}
	if err := setattrPath(p, in); err != nil {
		return n.v.errno("setattr "+p, err, false)
	}
	return n.Getattr(ctx, nil, out)
}

// Open opens the upper file. Every write to it comes through the mount, into
// the kernel's page cache of this node first, so a read-only open keeps the
// cached pages; and as closing changes nothing here, it needs no FLUSH.
// Opens for writing keep the kernel's defaults.
func (n *upperFile) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	// As loopback: the kernel computes append offsets itself, and
	// FMODE_EXEC is no open(2) flag.
	flags &^= syscall.O_APPEND | fuse.FMODE_EXEC
	fd, p, err := n.open(int(flags) | syscall.O_CLOEXEC)
	if err != nil {
		return nil, 0, n.v.errno("open "+p, err, false)
	}
	var fuseFlags uint32
	if flags&syscall.O_ACCMODE == syscall.O_RDONLY && flags&syscall.O_TRUNC == 0 {
		fuseFlags = fuse.FOPEN_KEEP_CACHE | fuse.FOPEN_NOFLUSH
	}
	return &upperHandle{v: n.v, fd: fd, path: p}, fuseFlags, 0
}

// open opens the node's file: at its path when that still holds it (the
// path is read again if the node moved meanwhile), else the kept file.
func (n *upperFile) open(flags int) (int, string, error) {
	p := ""
	for range 3 {
		q, ok := n.path()
		if !ok || q == p {
			break
		}
		p = q
		fd, err := syscall.Open(p, flags|syscall.O_NOFOLLOW, 0)
		if err != nil && !errors.Is(err, syscall.ENOENT) {
			return -1, p, err
		}
		if err == nil {
			st, gen, err := fstatGen(fd)
			if err == nil && n.mine(&st, gen) {
				return fd, p, nil
			}
			syscall.Close(fd)
			if err != nil {
				return -1, p, err
			}
		}
	}
	fd := -1
	kept, err := n.withKept(func(k int) (err error) {
		fd, err = syscall.Open(fmt.Sprintf("/proc/self/fd/%d", k), flags, 0)
		return err
	})
	if !kept {
		return -1, p, fmt.Errorf("fs: %s: the file is gone: %w", p, syscall.ENOENT)
	}
	return fd, p + " (renamed over)", err
}

// Readlink reads an upper symlink.
func (n *upperFile) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	p, ok := n.path()
	if !ok {
		return nil, syscall.ENOENT
	}
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		k, err := syscall.Readlink(p, buf)
		if err != nil {
			return nil, n.v.errno("readlink "+p, err, false)
		}
		if k < size {
			return buf[:k], 0
		}
	}
}

// Ioctl answers ENOTTY: Python's open() asks every file whether it is a
// terminal (TCGETS).
func (n *upperFile) Ioctl(ctx context.Context, f gofs.FileHandle, cmd uint32, arg uint64, input, output []byte) (int32, syscall.Errno) {
	return 0, syscall.ENOTTY
}

// upperHandle is an open upper file. pread/pwrite need no lock.
type upperHandle struct {
	v    *view
	fd   int
	path string // for messages; the file may have moved since
}

var _ = (gofs.FileReader)((*upperHandle)(nil))
var _ = (gofs.FileWriter)((*upperHandle)(nil))
var _ = (gofs.FileGetattrer)((*upperHandle)(nil))
var _ = (gofs.FileFsyncer)((*upperHandle)(nil))
var _ = (gofs.FileAllocater)((*upperHandle)(nil))
var _ = (gofs.FileReleaser)((*upperHandle)(nil))

func (h *upperHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	return fuse.ReadResultFd(uintptr(h.fd), off, len(dest)), 0
}

func (h *upperHandle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	k, err := syscall.Pwrite(h.fd, data, off)
	if err != nil {
		return 0, h.v.errno("write "+h.path, err, false)
	}
	return uint32(k), 0
}

func (h *upperHandle) Getattr(ctx context.Context, out *fuse.AttrOut) syscall.Errno {
	var st syscall.Stat_t
	if err := syscall.Fstat(h.fd, &st); err != nil {
		return h.v.errno("fstat "+h.path, err, false)
	}
	out.FromStat(&st)
	out.Ino = 0 // the node's own; the bridge fills it in
	return 0
}

func (h *upperHandle) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	return h.v.errno("fsync "+h.path, syscall.Fsync(h.fd), false)
}

func (h *upperHandle) Allocate(ctx context.Context, off, size uint64, mode uint32) syscall.Errno {
	return h.v.errno("fallocate "+h.path, unix.Fallocate(h.fd, mode, int64(off), int64(size)), false)
}

func (h *upperHandle) Release(ctx context.Context) syscall.Errno {
	return h.v.errno("close "+h.path, syscall.Close(h.fd), false)
}

// lowerOpen are the open flags of image content.
const lowerOpen = fuse.FOPEN_KEEP_CACHE | fuse.FOPEN_NOFLUSH

// lowerFile is a file of a KEY dir from an image: immutable, read-only.
type lowerFile struct {
	gofs.Inode
	v *view
	e *lowerEntry
}

var _ = (gofs.NodeGetattrer)((*lowerFile)(nil))
var _ = (gofs.NodeSetattrer)((*lowerFile)(nil))
var _ = (gofs.NodeOpener)((*lowerFile)(nil))
var _ = (gofs.NodeIoctler)((*lowerFile)(nil))

func (n *lowerFile) name() string { return filepath.Join(n.e.rel, n.e.file.Name) }

func (n *lowerFile) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.v.lowerFileAttr(n.e, &out.Attr)
	out.SetTimeout(lowerTTL)
	return 0
}

func (n *lowerFile) Setattr(ctx context.Context, f gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	return n.v.errno("setattr "+n.name(), fmt.Errorf("fs: setattr %s: %w", n.name(), ErrReadOnly), false)
}

// Open opens image content for reading, keeping the kernel's page cache
// (the content never changes) and with no FLUSH at close (nothing to
// flush). Content evicted since the lookup is fetched again by the Lower,
// under this request's interruption and the lookup deadline.
func (n *lowerFile) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if flags&syscall.O_ACCMODE != syscall.O_RDONLY || flags&syscall.O_TRUNC != 0 {
		return nil, 0, n.v.errno("open "+n.name(), fmt.Errorf("fs: open %s for writing: %w", n.name(), ErrReadOnly), false)
	}
	if n.e.mem {
		return &lowerHandle{v: n.v, name: n.name(), data: n.e.data}, lowerOpen, 0
	}
	octx, cancel := n.v.bound(ctx)
	defer cancel()
	c, err := n.e.file.Open(octx)
	if err != nil {
		return nil, 0, n.v.errno("open "+n.name(), &imagesError{fmt.Errorf("fs: open %s: %w", n.name(), err)}, false)
	}
	return &lowerHandle{v: n.v, name: n.name(), c: c}, lowerOpen, 0
}

func (n *lowerFile) Ioctl(ctx context.Context, f gofs.FileHandle, cmd uint32, arg uint64, input, output []byte) (int32, syscall.Errno) {
	return 0, syscall.ENOTTY
}

// lowerHandle is open image content, or a rewritten file's bytes (a group
// file, vLLM's cache file).
type lowerHandle struct {
	v    *view
	name string
	c    Content // nil for a rewritten file: data holds it
	data []byte
}

var _ = (gofs.FileReader)((*lowerHandle)(nil))
var _ = (gofs.FileReleaser)((*lowerHandle)(nil))

func (h *lowerHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if h.c == nil {
		if off >= int64(len(h.data)) {
			return fuse.ReadResultData(nil), 0
		}
		return fuse.ReadResultData(h.data[off:min(int64(len(h.data)), off+int64(len(dest)))]), 0
	}
	if fd := h.c.Fd(); fd != ^uintptr(0) {
		return fuse.ReadResultFd(fd, off, len(dest)), 0
	}
	k, err := h.c.ReadAt(dest, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, h.v.errno("read "+h.name, fmt.Errorf("fs: read %s at %d: %w", h.name, off, err), false)
	}
	return fuse.ReadResultData(dest[:k]), 0
}

func (h *lowerHandle) Release(ctx context.Context) syscall.Errno {
	if h.c == nil {
		return 0
	}
	if err := h.c.Close(); err != nil {
		return h.v.errno("close "+h.name, fmt.Errorf("fs: close %s: %w", h.name, err), false)
	}
	return 0
}
