package fs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// upperFile is a file, symlink or other non-dir of the upper layer. Its path
// comes from the inode tree; an open handle outlives a rename over it. A
// rename or unlink through the mount that takes its name away first keeps an
// O_PATH fd of it (keep), so that an open of the node the kernel looked up
// before still opens that file, as on a local file system (Triton ranks
// compiling one kernel rename over each other's files while others open
// them); the fd is closed when the kernel forgets the node.
type upperFile struct {
	gofs.Inode
	v *view

	mu   sync.Mutex
	kept int // guarded by mu: the O_PATH fd, when held
	held bool
}

var _ = (gofs.NodeGetattrer)((*upperFile)(nil))
var _ = (gofs.NodeSetattrer)((*upperFile)(nil))
var _ = (gofs.NodeOpener)((*upperFile)(nil))
var _ = (gofs.NodeReadlinker)((*upperFile)(nil))
var _ = (gofs.NodeIoctler)((*upperFile)(nil))
var _ = (gofs.NodeOnForgetter)((*upperFile)(nil))

func (n *upperFile) path() (string, bool) { return n.v.treePath(n.EmbeddedInode()) }

// keep holds an O_PATH fd of the file at p, its path now, before a rename
// or unlink takes the name away from it. A failure only loses the fallback.
func (n *upperFile) keep(p string) {
	fd, err := syscall.Open(p, unix.O_PATH|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.held {
		syscall.Close(fd)
		return
	}
	n.kept, n.held = fd, true
}

// OnForget closes the kept fd: the kernel will not ask for the node again.
func (n *upperFile) OnForget() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.held {
		syscall.Close(n.kept)
		n.held = false
	}
}

// openKept reopens the kept file (through /proc/self/fd, which reaches an
// unlinked file too); ok is false when none is kept.
func (n *upperFile) openKept(flags int) (fd int, ok bool, err error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.held {
		return -1, false, nil
	}
	// No O_NOFOLLOW: the magic link is the file itself.
	fd, err = syscall.Open("/proc/self/fd/"+strconv.Itoa(n.kept), flags&^syscall.O_NOFOLLOW, 0)
	return fd, true, err
}

// statKept stats the kept file; kept is false when none is kept.
func (n *upperFile) statKept(st *syscall.Stat_t) (kept bool, err error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.held {
		return false, nil
	}
	return true, syscall.Fstat(n.kept, st)
}

// Getattr stats the open file if there is one (it may have been renamed
// over), else the path.
func (n *upperFile) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	if h, ok := f.(*upperHandle); ok {
		return h.Getattr(ctx, out)
	}
	var st syscall.Stat_t
	p, ok := n.path()
	if kept, err := n.statKept(&st); kept { // the file the node stands for, wherever its name went
		if err != nil {
			return n.v.errno("getattr "+p, err, false)
		}
	} else if !ok {
		return syscall.ENOENT
	} else if err := syscall.Lstat(p, &st); err != nil {
		return n.v.errno("getattr "+p, err, false)
	}
	out.FromStat(&st)
	out.Ino = 0 // the node's own; the bridge fills it in
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

// Open opens the upper file. Its content may change (other processes write
// through the mount), so the kernel's page cache is not kept.
func (n *upperFile) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	p, _ := n.path()
	// As loopback: the kernel computes append offsets itself, and
	// FMODE_EXEC is no open(2) flag.
	flags &^= syscall.O_APPEND | fuse.FMODE_EXEC
	oflags := int(flags) | syscall.O_NOFOLLOW | syscall.O_CLOEXEC
	// A file renamed over or unlinked since the kernel looked it up is
	// opened through its kept fd: the name may hold another file now.
	fd, kept, err := n.openKept(oflags)
	if !kept {
		if p == "" {
			return nil, 0, syscall.ENOENT
		}
		fd, err = syscall.Open(p, oflags, 0)
	}
	if err != nil {
		return nil, 0, n.v.errno("open "+p, err, false)
	}
	if p == "" {
		p = "(a file renamed over or removed)"
	}
	return &upperHandle{v: n.v, fd: fd, path: p}, 0, 0
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

func (n *lowerFile) name() string { return filepath.Join(n.e.key, n.e.file.Name) }

func (n *lowerFile) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.v.lowerFileAttr(n.e, &out.Attr)
	out.SetTimeout(lowerTTL)
	return 0
}

func (n *lowerFile) Setattr(ctx context.Context, f gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	return n.v.errno("setattr "+n.name(), fmt.Errorf("fs: setattr %s: %w", n.name(), ErrReadOnly), false)
}

// Open opens image content for reading, keeping the kernel's page cache
// (the content never changes). Content evicted since the lookup is fetched
// again by the Lower, under this request's interruption and the lookup
// deadline.
func (n *lowerFile) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if flags&syscall.O_ACCMODE != syscall.O_RDONLY || flags&syscall.O_TRUNC != 0 {
		return nil, 0, n.v.errno("open "+n.name(), fmt.Errorf("fs: open %s for writing: %w", n.name(), ErrReadOnly), false)
	}
	if n.e.file.Group {
		return &lowerHandle{v: n.v, name: n.name(), data: n.e.data, group: true}, fuse.FOPEN_KEEP_CACHE, 0
	}
	octx, cancel := n.v.bound(ctx)
	defer cancel()
	c, err := n.e.file.Open(octx)
	if err != nil {
		return nil, 0, n.v.errno("open "+n.name(), &imagesError{fmt.Errorf("fs: open %s: %w", n.name(), err)}, false)
	}
	return &lowerHandle{v: n.v, name: n.name(), c: c}, fuse.FOPEN_KEEP_CACHE, 0
}

func (n *lowerFile) Ioctl(ctx context.Context, f gofs.FileHandle, cmd uint32, arg uint64, input, output []byte) (int32, syscall.Errno) {
	return 0, syscall.ENOTTY
}

// lowerHandle is open image content, or a group file's rewritten bytes.
type lowerHandle struct {
	v     *view
	name  string
	c     Content // nil for a group file
	data  []byte
	group bool
}

var _ = (gofs.FileReader)((*lowerHandle)(nil))
var _ = (gofs.FileReleaser)((*lowerHandle)(nil))

func (h *lowerHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if h.group {
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
