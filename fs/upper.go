package fs

import (
	"context"
	"errors"
	"fmt"
	iofs "io/fs"
	"os"
	"path/filepath"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"cargohold/triton"
)

// The operations that change the view. Every one of them writes the upper
// layer only; lower names are hidden by whiteouts (whiteout.go).

var _ = (gofs.NodeMkdirer)((*dirNode)(nil))
var _ = (gofs.NodeCreater)((*dirNode)(nil))
var _ = (gofs.NodeSymlinker)((*dirNode)(nil))
var _ = (gofs.NodeUnlinker)((*dirNode)(nil))
var _ = (gofs.NodeRmdirer)((*dirNode)(nil))
var _ = (gofs.NodeRenamer)((*dirNode)(nil))

// makeUpper makes sure the dir exists in the upper layer before something is
// written into it, and returns its path. Only a KEY dir can lack its upper
// half; it gets the owner and mode the view showed for it.
func (n *dirNode) makeUpper() (string, error) {
	dir, ok := n.dirPath()
	if !ok {
		return "", fmt.Errorf("fs: dir is gone: %w", syscall.ENOENT)
	}
	if n.kind != keyDir {
		return dir, nil
	}
	err := syscall.Mkdir(dir, 0o755)
	switch {
	case err == nil:
		if isRoot {
			if err := syscall.Lchown(dir, int(n.v.uid), int(n.v.gid)); err != nil {
				return "", &os.PathError{Op: "chown", Path: dir, Err: err}
			}
		}
	case !errors.Is(err, syscall.EEXIST):
		return "", &os.PathError{Op: "mkdir", Path: dir, Err: err}
	}
	return dir, nil
}

// Mkdir makes an upper dir. A name an image shows exists already (EEXIST). A
// KEY made where an image's KEY was deleted starts opaque, so the deleted
// files stay deleted.
func (n *dirNode) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if isWhiteoutName(name) {
		return nil, syscall.EPERM
	}
	if n.kind == rootDir {
		// The LOOKUP before this MKDIR asked the images already; a known
		// node answers without asking again.
		if d := n.keyChild(name); d != nil {
			if ld, _ := d.lowerState(); ld != nil {
				return nil, syscall.EEXIST
			}
		}
	} else if has, err := n.lowerHas(ctx, name); err != nil {
		return nil, n.v.errno("mkdir "+name, err, false)
	} else if has {
		return nil, syscall.EEXIST
	}
	dir, err := n.makeUpper()
	if err != nil {
		return nil, n.v.errno("mkdir "+name, err, false)
	}
	p := filepath.Join(dir, name)
	if err := syscall.Mkdir(p, mode&07777); err != nil {
		return nil, n.v.errno("mkdir "+p, err, false)
	}
	if err := chownCaller(ctx, p); err != nil {
		n.v.log.Warn("fs: mkdir: chown", "path", p, "err", err)
	}
	opaque := hasWhiteout(dir, name)
	if opaque {
		if err := markOpaque(p); err != nil {
			syscall.Rmdir(p)
			return nil, n.v.errno("mkdir "+p, err, false)
		}
		if err := removeWhiteout(dir, name); err != nil {
			n.v.log.Warn("fs: mkdir: stale whiteout", "path", p, "err", err)
		}
	}
	st, gen, err := lstatGen(p)
	if err != nil {
		return nil, n.v.errno("mkdir "+p, err, false)
	}
	out.Attr.FromStat(&st)
	if n.kind == rootDir && triton.IsKey(name) {
		// MKDIR comes after a LOOKUP that found no image with KEY (or the
		// KEY was deleted): Triton compiles into the upper half alone.
		d := n.v.newKeyDir(name)
		d.setLower(nil, false)
		return n.NewInode(ctx, d, gofs.StableAttr{Mode: syscall.S_IFDIR, Ino: keyIno(name)}), 0
	}
	return n.NewInode(ctx, &dirNode{v: n.v, kind: plainDir}, gofs.StableAttr{Mode: syscall.S_IFDIR, Ino: n.v.upperIno(&st), Gen: gen}), 0
}

// Create makes and opens an upper file.
func (n *dirNode) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	if isWhiteoutName(name) {
		return nil, nil, 0, syscall.EPERM
	}
	dir, err := n.makeUpper()
	if err != nil {
		return nil, nil, 0, n.v.errno("create "+name, err, false)
	}
	p := filepath.Join(dir, name)
	fd, err := syscall.Open(p, int(flags)&^syscall.O_APPEND|syscall.O_CREAT|syscall.O_CLOEXEC, mode&07777)
	if err != nil {
		return nil, nil, 0, n.v.errno("create "+p, err, false)
	}
	if err := chownCaller(ctx, p); err != nil {
		n.v.log.Warn("fs: create: chown", "path", p, "err", err)
	}
	if err := removeWhiteout(dir, name); err != nil { // the new file shadows the image's
		n.v.log.Warn("fs: create: stale whiteout", "path", p, "err", err)
	}
	st, gen, err := lstatGen(p)
	if err != nil {
		syscall.Close(fd)
		return nil, nil, 0, n.v.errno("create "+p, err, false)
	}
	out.Attr.FromStat(&st)
	ch := n.NewInode(ctx, &upperFile{v: n.v}, gofs.StableAttr{Mode: syscall.S_IFREG, Ino: n.v.upperIno(&st), Gen: gen})
	return ch, &upperHandle{v: n.v, fd: fd, path: p}, 0, 0
}

// Symlink makes an upper symlink.
func (n *dirNode) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if isWhiteoutName(name) {
		return nil, syscall.EPERM
	}
	dir, err := n.makeUpper()
	if err != nil {
		return nil, n.v.errno("symlink "+name, err, false)
	}
	p := filepath.Join(dir, name)
	if err := syscall.Symlink(target, p); err != nil {
		return nil, n.v.errno("symlink "+p, err, false)
	}
	if err := chownCaller(ctx, p); err != nil {
		n.v.log.Warn("fs: symlink: chown", "path", p, "err", err)
	}
	if err := removeWhiteout(dir, name); err != nil {
		n.v.log.Warn("fs: symlink: stale whiteout", "path", p, "err", err)
	}
	st, gen, err := lstatGen(p)
	if err != nil {
		return nil, n.v.errno("symlink "+p, err, false)
	}
	out.Attr.FromStat(&st)
	return n.NewInode(ctx, &upperFile{v: n.v}, gofs.StableAttr{Mode: syscall.S_IFLNK, Ino: n.v.upperIno(&st), Gen: gen}), 0
}

// Unlink removes the upper file and hides the image's file of that name.
func (n *dirNode) Unlink(ctx context.Context, name string) syscall.Errno {
	return n.remove(ctx, name, syscall.Unlink)
}

// Rmdir removes an upper dir. A KEY dir is removed only when empty in both
// layers (ENOTEMPTY otherwise: a wrong success lets Python prune the tree).
func (n *dirNode) Rmdir(ctx context.Context, name string) syscall.Errno {
	if n.kind == rootDir && triton.IsKey(name) && !isWhiteoutName(name) {
		return n.rmdirKey(ctx, name)
	}
	return n.remove(ctx, name, syscall.Rmdir)
}

// remove takes name out of the view: a whiteout hides the image's entry
// (written first, so that a crash leaves the name visible rather than an
// image file back), then rm removes the upper entry.
func (n *dirNode) remove(ctx context.Context, name string, rm func(string) error) syscall.Errno {
	if isWhiteoutName(name) {
		return syscall.ENOENT
	}
	dir, ok := n.dirPath()
	if !ok {
		return syscall.ENOENT
	}
	p := filepath.Join(dir, name)
	inUpper := exists(p)
	inLower, err := n.lowerHas(ctx, name)
	if err != nil {
		return n.v.errno("remove "+p, err, false)
	}
	if !inUpper && !inLower {
		return syscall.ENOENT
	}
	created := false
	if inLower {
		if _, err := n.makeUpper(); err != nil {
			return n.v.errno("remove "+p, err, false)
		}
		if created, err = writeWhiteout(dir, name); err != nil {
			return n.v.errno("remove "+p, err, false)
		}
	}
	if inUpper {
		if err := rm(p); err != nil {
			if created {
				removeWhiteout(dir, name)
			}
			return n.v.errno("remove "+p, err, false)
		}
	}
	return 0
}

// rmdirKey removes a KEY dir that is empty in both layers: its upper half
// (holding at most whiteouts) goes, and a whiteout in the root hides the
// image's KEY.
func (n *dirNode) rmdirKey(ctx context.Context, key string) syscall.Errno {
	d := n.keyChild(key)
	if d == nil { // not in the tree (no LOOKUP came first): look at both layers now
		d = n.v.newKeyDir(key)
	}
	kdir, _ := d.dirPath()
	des, err := os.ReadDir(kdir)
	inUpper := err == nil
	if err != nil && !errors.Is(err, iofs.ErrNotExist) {
		return n.v.errno("rmdir "+kdir, err, false)
	}
	if !inUpper && hasWhiteout(n.v.upper, key) {
		return syscall.ENOENT
	}
	hidden := make(map[string]bool)
	for _, de := range des {
		if !isWhiteoutName(de.Name()) {
			return syscall.ENOTEMPTY
		}
		if de.Name() != opaqueName {
			hidden[de.Name()[len(whiteoutPrefix):]] = true
		}
	}
	ld, err := d.ensureLower(ctx)
	if err != nil {
		return n.v.errno("rmdir "+kdir, fmt.Errorf("fs: rmdir KEY %s: %w", key, err), false)
	}
	if ld != nil {
		for name := range ld.files {
			if !hidden[name] {
				return syscall.ENOTEMPTY
			}
		}
	}
	if !inUpper && ld == nil {
		return syscall.ENOENT
	}
	created := false
	if ld != nil {
		if created, err = writeWhiteout(n.v.upper, key); err != nil {
			return n.v.errno("rmdir "+kdir, err, false)
		}
	}
	if inUpper {
		for _, de := range des {
			if err := os.Remove(filepath.Join(kdir, de.Name())); err != nil && !errors.Is(err, iofs.ErrNotExist) {
				return n.v.errno("rmdir "+kdir, err, false)
			}
		}
		if err := syscall.Rmdir(kdir); err != nil {
			if created {
				removeWhiteout(n.v.upper, key)
			}
			return n.v.errno("rmdir "+kdir, err, false)
		}
	}
	return 0
}

// Rename moves an upper entry, replacing what the target name showed in
// either layer. Image entries and KEY dirs do not move (EXDEV: mv copies).
// RENAME_NOREPLACE is honoured across both layers; other flags are EINVAL.
func (n *dirNode) Rename(ctx context.Context, name string, newParent gofs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	np, ok := newParent.(*dirNode)
	if !ok || np.v != n.v {
		return syscall.EXDEV
	}
	if flags&^unix.RENAME_NOREPLACE != 0 {
		return syscall.EINVAL
	}
	if isWhiteoutName(name) || isWhiteoutName(newName) {
		return syscall.EPERM
	}
	sdir, ok := n.dirPath()
	if !ok {
		return syscall.ENOENT
	}
	src := filepath.Join(sdir, name)
	var st syscall.Stat_t
	if err := syscall.Lstat(src, &st); err != nil {
		if !errors.Is(err, syscall.ENOENT) {
			return n.v.errno("rename "+src, err, false)
		}
		if has, err := n.lowerHas(ctx, name); err != nil {
			return n.v.errno("rename "+src, err, false)
		} else if has {
			return syscall.EXDEV
		}
		return syscall.ENOENT
	}
	isDir := st.Mode&syscall.S_IFMT == syscall.S_IFDIR
	if isDir && ((n.kind == rootDir && triton.IsKey(name)) || (np.kind == rootDir && triton.IsKey(newName))) {
		return syscall.EXDEV
	}
	dstLower, err := np.lowerHas(ctx, newName)
	if err != nil {
		return n.v.errno("rename "+src, err, false)
	}
	ddir, err := np.makeUpper()
	if err != nil {
		return n.v.errno("rename "+src, err, false)
	}
	dst := filepath.Join(ddir, newName)
	if dstLower && !exists(dst) {
		switch {
		case flags&unix.RENAME_NOREPLACE != 0:
			return syscall.EEXIST
		case isDir: // image entries under a KEY are files
			return syscall.ENOTDIR
		case np.kind == rootDir: // and at the root they are dirs
			return syscall.EISDIR
		}
	}
	srcLower, err := n.lowerHas(ctx, name)
	if err != nil {
		return n.v.errno("rename "+src, err, false)
	}
	created := false
	if srcLower {
		if created, err = writeWhiteout(sdir, name); err != nil {
			return n.v.errno("rename "+src, err, false)
		}
	}
	if flags != 0 {
		err = unix.Renameat2(unix.AT_FDCWD, src, unix.AT_FDCWD, dst, uint(flags))
	} else {
		err = syscall.Rename(src, dst)
	}
	if err != nil {
		if created {
			removeWhiteout(sdir, name)
		}
		return n.v.errno("rename "+src, err, false)
	}
	if err := removeWhiteout(ddir, newName); err != nil {
		n.v.log.Warn("fs: rename: stale whiteout", "path", dst, "err", err)
	}
	return 0
}
