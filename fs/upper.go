package fs

import (
	"context"
	"errors"
	"fmt"
	iofs "io/fs"
	"os"
	"path/filepath"
	"strings"
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
// written into it, and returns its path. Only a merged dir can lack its
// upper half (and so can the merged dirs above it); each dir made gets the
// owner and mode the view showed for it.
func (n *dirNode) makeUpper() (string, error) {
	dir, ok := n.dirPath()
	if !ok {
		return "", fmt.Errorf("fs: dir is gone: %w", syscall.ENOENT)
	}
	if n.kind != mergedDir {
		return dir, nil
	}
	return dir, n.v.makeUpperDirs(n.rel)
}

// makeUpperDirs makes the upper dirs of the path rel, root down, where
// missing. The kernel asked for a change inside the dir, not in its
// parent: the parent's attributes it keeps are dropped (notify.go).
func (v *view) makeUpperDirs(rel string) error {
	p := v.upper
	parent := v.root.EmbeddedInode()
	for _, el := range strings.Split(rel, "/") {
		p = filepath.Join(p, el)
		err := syscall.Mkdir(p, 0o755)
		switch {
		case err == nil:
			if parent != nil {
				v.touch(parent)
			}
			if isRoot {
				if err := syscall.Lchown(p, int(v.uid), int(v.gid)); err != nil {
					return &os.PathError{Op: "chown", Path: p, Err: err}
				}
			}
		case !errors.Is(err, syscall.EEXIST):
			return &os.PathError{Op: "mkdir", Path: p, Err: err}
		}
		if parent != nil {
			parent = parent.GetChild(el)
		}
	}
	return nil
}

// interrupted answers EINTR when the caller gave up while the lower layer
// was being asked, else 0.
func (n *dirNode) interrupted(ctx context.Context, op string) syscall.Errno {
	if err := ctx.Err(); err != nil {
		return n.v.errno(op, err, false)
	}
	return 0
}

// Mkdir makes an upper dir. A name an image shows exists already (EEXIST). A
// dir made where an image's dir was deleted starts opaque, so the deleted
// files stay deleted. Where the images cannot answer for the unit, the name
// counts as absent: Triton's tmp dirs must not fail while the images are
// slow, and the new upper dir hides an image's file of that name anyway.
func (n *dirNode) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if isWhiteoutName(name) {
		return nil, syscall.EPERM
	}
	if d := n.mergedChild(name); d != nil && d.shown() {
		// The LOOKUP before this MKDIR asked the images already; a known
		// node answers without asking again.
		return nil, syscall.EEXIST
	}
	if n.kind == rootDir {
		// Only dirs come from images at the root, and the LOOKUP asked.
	} else if has, err := n.lowerHas(ctx, name); has {
		return nil, syscall.EEXIST
	} else if err != nil {
		if errno := n.interrupted(ctx, "mkdir "+name); errno != 0 {
			return nil, errno
		}
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
	// A dir made where the image's dir was deleted is opaque, so its files
	// stay deleted. Other dirs have nothing below them: no marker (it would
	// make them unremovable); a whiteout for the name stays and keeps the
	// image's file hidden once the dir is gone.
	merged := n.mayShow(dir, name)
	if merged && hasWhiteout(dir, name) {
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
	if merged {
		// MKDIR comes after a LOOKUP that found no image with the dir (or
		// it was deleted): the framework compiles into the upper half alone.
		rel := n.childRel(name)
		d := n.v.newMergedDir(rel)
		d.setLower(nil, false)
		return n.NewInode(ctx, d, gofs.StableAttr{Mode: syscall.S_IFDIR, Ino: keyIno(rel)}), 0
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

// Rmdir removes an upper dir. A merged dir is removed only when empty in
// both layers (ENOTEMPTY otherwise: a wrong success lets Python prune the
// tree).
func (n *dirNode) Rmdir(ctx context.Context, name string) syscall.Errno {
	if dir, ok := n.dirPath(); ok && !isWhiteoutName(name) && n.mayShow(dir, name) {
		return n.rmdirMerged(ctx, name)
	}
	return n.remove(ctx, name, syscall.Rmdir)
}

// remove takes name out of the view: a whiteout hides the image's entry
// (written first, so that a crash leaves the name visible rather than an
// image file back), then rm removes the upper entry. Where the images cannot
// answer for the KEY, an upper entry is removed with a whiteout just in case
// (a stray whiteout hides nothing), and a name only an image could have is
// not there, as lookups say meanwhile.
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
	if !inUpper && !inLower {
		if err != nil {
			if errno := n.interrupted(ctx, "remove "+p); errno != 0 {
				return errno
			}
		}
		return syscall.ENOENT
	}
	created := false
	if inLower || err != nil {
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

// rmdirMerged removes a merged dir that is empty in both layers: its upper
// half (holding at most whiteouts) goes, and a whiteout in the parent hides
// the image's dir, or the image's file the dir hid. An opaque upper half
// was made where an image's dir had been deleted, so its removal always
// leaves the whiteout. Where the images cannot answer for the unit, an
// empty upper half says nothing: EIO, not a wrong success (a Python
// removedirs would prune on, and the image's dir would show again).
func (n *dirNode) rmdirMerged(ctx context.Context, key string) syscall.Errno {
	rel := n.childRel(key)
	d := n.mergedChild(key)
	if d == nil { // not in the tree (no LOOKUP came first): look at both layers now
		d = n.v.newMergedDir(rel)
	}
	pdir, ok := n.dirPath()
	if !ok {
		return syscall.ENOENT
	}
	kdir, _ := d.dirPath()
	des, err := os.ReadDir(kdir)
	inUpper := err == nil
	if err != nil && !errors.Is(err, iofs.ErrNotExist) {
		return n.v.errno("rmdir "+kdir, err, false)
	}
	if !inUpper && hasWhiteout(pdir, key) {
		return syscall.ENOENT
	}
	hidden := make(map[string]bool)
	opaque := false
	for _, de := range des {
		switch name := de.Name(); {
		case !isWhiteoutName(name):
			return syscall.ENOTEMPTY
		case name == opaqueName:
			opaque = true
		default:
			hidden[name[len(whiteoutPrefix):]] = true
		}
	}
	shows := false // the images show the dir
	if !opaque {
		info, err := n.v.dir(ctx, rel)
		if err != nil {
			return n.v.errno("rmdir "+kdir, fmt.Errorf("fs: rmdir KEY %s: %w", rel, err), false)
		}
		var ld *lowerDir
		if info.Exists {
			for _, name := range d.lowerDirs() {
				shows = true
				if !hidden[name] {
					return syscall.ENOTEMPTY
				}
			}
			if ld, err = d.ensureLower(ctx); err != nil {
				return n.v.errno("rmdir "+kdir, fmt.Errorf("fs: rmdir KEY %s: %w", rel, err), false)
			}
		} else {
			// The images no longer list the dir (a refresh), but the
			// files its node holds still show.
			ld, _ = d.lowerState()
		}
		if ld != nil {
			shows = true
			for name := range ld.files {
				if !hidden[name] {
					return syscall.ENOTEMPTY
				}
			}
		}
	}
	if !inUpper && !shows {
		return syscall.ENOENT
	}
	// The dir may sit over an image's file of its name (deleted, then a
	// dir renamed there): its whiteout keeps that file deleted. Where the
	// images cannot answer for this unit, a whiteout just in case, as
	// remove writes.
	fileBelow := false
	if inUpper && !shows && !opaque && n.kind == mergedDir {
		ld, err := n.ensureLower(ctx)
		fileBelow = err != nil || (ld != nil && ld.files[key] != nil)
	}
	created := false
	if shows || opaque || fileBelow {
		if _, err := n.makeUpper(); err != nil {
			return n.v.errno("rmdir "+kdir, err, false)
		}
		if created, err = writeWhiteout(pdir, key); err != nil {
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
				removeWhiteout(pdir, key)
			}
			return n.v.errno("rmdir "+kdir, err, false)
		}
	}
	return 0
}

// Rename moves an upper entry, replacing what the target name showed in
// either layer. Image entries and merged dirs (a dir where the kind takes
// one, upper-only or not: its upper half is found by its path) do not
// move, nor does anything move onto a Triton KEY at the root (EXDEV: mv
// copies); a plain upper dir may move onto a name the images do not show
// (Inductor's tmp.<uuid> dir renamed onto triton/<device>/<KEY>); moved
// where an image's dir was deleted, it is opaque, as Mkdir makes one.
// RENAME_NOREPLACE is honoured across both layers; other flags are EINVAL.
// Where the images cannot answer for a KEY, the target counts as absent
// (Triton's rename onto KEY/file must not fail while the images are slow;
// the upper entry hides the image's anyway) except under RENAME_NOREPLACE
// (EIO), and a source leaves a whiteout just in case.
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
		if has, err := n.lowerHas(ctx, name); has {
			return syscall.EXDEV
		} else if err != nil {
			if errno := n.interrupted(ctx, "rename "+src); errno != 0 {
				return errno
			}
		}
		return syscall.ENOENT // as lookups say while the images cannot answer
	}
	isDir := st.Mode&syscall.S_IFMT == syscall.S_IFDIR
	if isDir && (!n.movesWithTree(sdir, name) || (np.kind == rootDir && triton.IsKey(newName))) {
		return syscall.EXDEV
	}
	if isDir {
		if has, _ := n.lowerHas(ctx, name); has {
			return syscall.EXDEV // its image half would stay behind
		}
	}
	dstMode, err := np.lowerMode(ctx, newName)
	dstLower := dstMode != 0
	if err != nil {
		if errno := n.interrupted(ctx, "rename "+src); errno != 0 {
			return errno
		}
		if ddir, ok := np.dirPath(); flags&unix.RENAME_NOREPLACE != 0 && ok && !exists(filepath.Join(ddir, newName)) {
			return n.v.errno("rename "+src, err, false) // "not there" would be a guess
		}
	}
	ddir, err := np.makeUpper()
	if err != nil {
		return n.v.errno("rename "+src, err, false)
	}
	dst := filepath.Join(ddir, newName)
	// Over an upper dir, an image's dir still shows its files (whatever
	// the upper half hides of them it hides by whiteouts, which the upper
	// fs counts too): only the upper entry replaced decides otherwise.
	if dstLower && (!exists(dst) || dstMode == syscall.S_IFDIR && isDirPath(dst)) {
		switch {
		case flags&unix.RENAME_NOREPLACE != 0:
			return syscall.EEXIST
		case isDir && dstMode == syscall.S_IFDIR: // an image's dir holds files
			return syscall.ENOTEMPTY
		case isDir:
			return syscall.ENOTDIR
		case dstMode == syscall.S_IFDIR:
			return syscall.EISDIR
		}
	}
	if flags&unix.RENAME_NOREPLACE == 0 {
		// A process may have looked the target up just now: its node
		// keeps its file (upperFile).
		if ch := np.GetChild(newName); ch != nil {
			if f, ok := ch.Operations().(*upperFile); ok {
				if err := f.keep(dst); err != nil {
					n.v.log.Warn("fs: rename: the file renamed over is not kept", "path", dst, "err", err)
				}
			}
		}
	}
	// A dir moved where an image's dir was deleted is opaque, as Mkdir
	// makes one there, so that the deleted files stay deleted. Marked
	// before the move: a crash leaves a marker in the source dir, never
	// the image's files back.
	marked := false
	if isDir && np.mayShow(ddir, newName) && hasWhiteout(ddir, newName) && !isOpaque(src) {
		if err := markOpaque(src); err != nil {
			return n.v.errno("rename "+src, err, false)
		}
		marked = true
	}
	undo := func() {
		if marked {
			os.Remove(filepath.Join(src, opaqueName))
		}
	}
	srcLower, err := n.lowerHas(ctx, name)
	created := false
	if srcLower || err != nil {
		if created, err = writeWhiteout(sdir, name); err != nil {
			undo()
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
		undo()
		return n.v.errno("rename "+src, err, false)
	}
	if err := removeWhiteout(ddir, newName); err != nil {
		n.v.log.Warn("fs: rename: stale whiteout", "path", dst, "err", err)
	}
	return 0
}
