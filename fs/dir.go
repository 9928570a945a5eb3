package fs

import (
	"context"
	"errors"
	"fmt"
	iofs "io/fs"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"cargohold/triton"
)

// lowerRetry is how long a KEY dir that has an upper half keeps showing only
// that half after the images failed to answer for it, before asking again:
// each ask may cost a whole lookup timeout, and a compile in progress looks
// up a name in the dir per file it writes.
const lowerRetry = 30 * time.Second

type dirKind uint8

const (
	rootDir  dirKind = iota // the mount root: upper root ∪ the images' KEYs
	keyDir                  // root/KEY: upper/KEY ∪ the KEY's files in an image
	plainDir                // any other dir: upper only
)

// dirNode is a directory of the view.
type dirNode struct {
	gofs.Inode

	// Immutable after construction.
	v    *view
	kind dirKind
	key  string // keyDir only

	mu        sync.Mutex // guards the fields below; never held across a Lower call
	lowerDone bool       // lower is known; nil: no image has the KEY, or the dir is opaque
	lower     *lowerDir
	failErr   error     // why the images last failed to answer
	failedAt  time.Time // when
	// promised: the images list the KEY (Lower.Has), so the dir is shown
	// before its files are fetched, and stays shown (empty but for what
	// Triton writes) when the fetch fails.
	promised bool
}

var _ = (gofs.NodeLookuper)((*dirNode)(nil))
var _ = (gofs.NodeReaddirer)((*dirNode)(nil))
var _ = (gofs.NodeGetattrer)((*dirNode)(nil))
var _ = (gofs.NodeSetattrer)((*dirNode)(nil))
var _ = (gofs.NodeStatfser)((*dirNode)(nil))

func (v *view) newKeyDir(key string) *dirNode { return &dirNode{v: v, kind: keyDir, key: key} }

// dirPath is the dir's path in the upper layer (which may not exist for a
// KEY dir that only an image has). ok is false for a dir no longer in the tree.
func (n *dirNode) dirPath() (string, bool) {
	switch n.kind {
	case rootDir:
		return n.v.upper, true
	case keyDir:
		return filepath.Join(n.v.upper, n.key), true
	}
	return n.v.treePath(n.EmbeddedInode())
}

// lowerState returns the lower half as known so far; an error when it is
// not known (yet).
func (n *dirNode) lowerState() (*lowerDir, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.lowerDone {
		return nil, errLowerUnknown
	}
	return n.lower, nil
}

var errLowerUnknown = errors.New("fs: the images' part of this KEY dir is not known yet")

// setLower records the lower half unless it is known already. A known lower
// half changes only from "none" to an image's files (adopt). The first time
// a node gets an image's files counts as a hit, and says so (added).
func (n *dirNode) setLower(ld *lowerDir, adopt bool) (added bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.lowerDone || (adopt && n.lower == nil) {
		if ld != nil && n.lower == nil {
			n.v.stats.hit()
			added = true
		}
		n.lower, n.lowerDone = ld, true
		n.failErr = nil
	}
	return added
}

// promise marks a KEY dir the images list (Lower.Has).
func (n *dirNode) promise() {
	n.mu.Lock()
	n.promised = true
	n.mu.Unlock()
}

// shown reports whether the view shows this KEY dir without an upper half:
// the images list it, or their files for it are known.
func (n *dirNode) shown() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.promised || n.lower != nil
}

// ensureLower finds the lower half of a KEY dir: it fetches the KEY's files
// from the images (the first lookup or listing inside the dir) once per
// node and keeps the answer (nil: no image has the KEY). An error says the
// images could not answer (the cause is recorded); the dir then shows its
// upper half alone (empty when it has none: Triton compiles into it) and
// asks again after lowerRetry, or when a fetch that outlived its lookup
// comes in (adoptLate).
func (n *dirNode) ensureLower(ctx context.Context) (*lowerDir, error) {
	if n.kind != keyDir {
		return nil, nil
	}
	n.mu.Lock()
	if n.lowerDone {
		defer n.mu.Unlock()
		return n.lower, nil
	}
	if n.failErr != nil && time.Since(n.failedAt) < lowerRetry {
		defer n.mu.Unlock()
		return nil, n.failErr
	}
	n.mu.Unlock()

	dir, _ := n.dirPath()
	if isOpaque(dir) {
		n.setLower(nil, false)
		return n.lowerState()
	}
	ld, err := n.v.resolve(ctx, n.key)
	switch {
	case err == nil:
		n.setLower(ld, false)
	case errors.Is(err, iofs.ErrNotExist):
		if n.shown() {
			n.v.stats.miss() // listed, but no image that fits has it after all
		}
		n.setLower(nil, false)
	case ctx.Err() != nil:
		// An interrupted caller says nothing about the images: its caller
		// answers EINTR (retried by Python and Go), and the fetch goes on.
		n.v.log.Debug("fs: interrupted while fetching", "key", n.key, "err", err)
		return nil, err
	default:
		n.v.errno("fetch "+n.key, err, true) // recorded; lookups see the upper half alone
		n.mu.Lock()
		n.failErr, n.failedAt = err, time.Now()
		n.mu.Unlock()
		return nil, err
	}
	return n.lowerState()
}

// keyChild returns the KEY dir node the tree holds for key, if any.
func (n *dirNode) keyChild(key string) *dirNode {
	if n.kind != rootDir {
		return nil
	}
	ch := n.GetChild(key)
	if ch == nil {
		return nil
	}
	d, _ := ch.Operations().(*dirNode)
	if d == nil || d.kind != keyDir {
		return nil
	}
	return d
}

// lowerHas reports whether the lower layer shows name in this dir (an image
// has it and no whiteout hides it). An error says it is not known: the
// images could not answer for the KEY (or the caller was interrupted). Each
// caller decides what "unknown" means for it (see upper.go): writes go on as
// if the images had nothing, removals write a whiteout just in case, and
// only answers that must be exact (rmdir of a KEY, RENAME_NOREPLACE) fail.
func (n *dirNode) lowerHas(ctx context.Context, name string) (bool, error) {
	dir, ok := n.dirPath()
	if !ok || n.kind == plainDir || hasWhiteout(dir, name) {
		return false, nil
	}
	d := n
	if n.kind == rootDir {
		if !triton.IsKey(name) {
			return false, nil
		}
		if d = n.keyChild(name); d == nil {
			d = n.v.newKeyDir(name)
		}
	}
	ld, err := d.ensureLower(ctx)
	if err != nil {
		return false, fmt.Errorf("fs: %s: %w", filepath.Join(dir, name), err)
	}
	if ld == nil {
		return false, nil
	}
	return n.kind == rootDir || ld.files[name] != nil, nil
}

// Lookup finds name upper first, then in the images. A KEY at the root is
// answered from the images' index (Lower.Has: no fetch, as the kernel holds
// the root's lock); its files are fetched on the first lookup inside it.
func (n *dirNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if isWhiteoutName(name) {
		return nil, syscall.ENOENT
	}
	if n.kind == rootDir && n.v.onKey != nil && triton.IsKey(name) {
		n.v.onKey(name)
	}
	dir, ok := n.dirPath()
	if !ok {
		uncached(out)
		return nil, syscall.ENOENT
	}
	p := filepath.Join(dir, name)
	st, gen, err := lstatGen(p)
	if err == nil {
		return n.upperChild(ctx, name, &st, gen, out), 0
	}
	if !errors.Is(err, syscall.ENOENT) && !errors.Is(err, syscall.ENOTDIR) {
		return nil, n.v.errno("lookup "+p, err, false)
	}
	if hasWhiteout(dir, name) {
		return nil, syscall.ENOENT
	}
	switch n.kind {
	case rootDir:
		if !triton.IsKey(name) {
			return nil, syscall.ENOENT // only KEYs come from images: no need to ask
		}
		return n.lookupKey(ctx, name, out)
	case keyDir:
		ld, err := n.ensureLower(ctx)
		if err != nil {
			if errno := n.interrupted(ctx, "lookup "+p); errno != 0 {
				return nil, errno
			}
			uncached(out) // the images may have the name once they answer
			return nil, syscall.ENOENT
		}
		if ld == nil || ld.files[name] == nil {
			return nil, syscall.ENOENT
		}
		e := ld.files[name]
		n.v.lowerFileAttr(e, &out.Attr)
		out.SetEntryTimeout(lowerTTL)
		out.SetAttrTimeout(lowerTTL)
		ch := n.NewInode(ctx, &lowerFile{v: n.v, e: e}, gofs.StableAttr{Mode: syscall.S_IFREG, Ino: lowerIno(n.key, name)})
		return ch, 0
	}
	return nil, syscall.ENOENT
}

// upperChild makes the node for an upper entry.
func (n *dirNode) upperChild(ctx context.Context, name string, st *syscall.Stat_t, gen uint64, out *fuse.EntryOut) *gofs.Inode {
	out.Attr.FromStat(st)
	mode := st.Mode & syscall.S_IFMT
	if n.kind == rootDir && mode == syscall.S_IFDIR && triton.IsKey(name) {
		if d := n.keyChild(name); d != nil {
			return d.EmbeddedInode()
		}
		return n.NewInode(ctx, n.v.newKeyDir(name), gofs.StableAttr{Mode: syscall.S_IFDIR, Ino: keyIno(name)})
	}
	var node gofs.InodeEmbedder = &upperFile{v: n.v}
	if mode == syscall.S_IFDIR {
		node = &dirNode{v: n.v, kind: plainDir}
	}
	return n.NewInode(ctx, node, gofs.StableAttr{Mode: mode, Ino: n.v.upperIno(st), Gen: gen})
}

// lookupKey answers a KEY the upper dir does not have from the images'
// index: no fetch here, so that no lookup holds the root's lock across a
// network round trip (Triton's mkdir(ROOT/KEY) takes it). The dir is
// shown at once; its files come with the first lookup inside it.
func (n *dirNode) lookupKey(ctx context.Context, key string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	d := n.keyChild(key)
	if d == nil || !d.shown() {
		// Not kept by the kernel: the images may list the KEY later (a
		// refresh), and the next lookup must ask again.
		has, err := n.v.has(ctx, key)
		if err != nil {
			uncached(out)
			return nil, n.v.errno("lookup "+key, err, true)
		}
		if !has {
			n.v.stats.miss()
			n.v.log.Debug("fs: no image lists the KEY", "key", key)
			uncached(out)
			return nil, syscall.ENOENT
		}
		if d = n.keyChild(key); d == nil {
			d = n.v.newKeyDir(key)
		}
		d.promise()
	}
	n.v.lowerDirAttr(&out.Attr)
	out.SetEntryTimeout(lowerTTL)
	out.SetAttrTimeout(lowerTTL)
	return n.NewInode(ctx, d, gofs.StableAttr{Mode: syscall.S_IFDIR, Ino: keyIno(key)}), 0
}

// Readdir lists both layers: upper entries, then the images' names that are
// neither shadowed nor whited out. Listing the root asks the images for their
// KEYs only (no fetch); listing a KEY dir may ask for the KEY's files.
func (n *dirNode) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	dir, ok := n.dirPath()
	if !ok {
		return nil, syscall.ENOENT
	}
	des, err := os.ReadDir(dir)
	if err != nil && !(n.kind == keyDir && errors.Is(err, iofs.ErrNotExist)) {
		return nil, n.v.errno("readdir "+dir, err, false)
	}
	var list []fuse.DirEntry
	seen := make(map[string]bool, len(des))
	hidden := make(map[string]bool)
	for _, de := range des {
		name := de.Name()
		if isWhiteoutName(name) {
			if name != opaqueName {
				hidden[name[len(whiteoutPrefix):]] = true
			}
			continue
		}
		seen[name] = true
		e := fuse.DirEntry{Name: name, Mode: typeMode(de.Type())}
		if n.kind == rootDir && de.IsDir() && triton.IsKey(name) {
			e.Ino = keyIno(name)
		}
		list = append(list, e)
	}
	add := func(name string, mode uint32, ino uint64) {
		if !seen[name] && !hidden[name] && plainName(name) {
			seen[name] = true
			list = append(list, fuse.DirEntry{Name: name, Mode: mode, Ino: ino})
		}
	}
	switch n.kind {
	case rootDir:
		if n.v.lower != nil {
			for _, key := range n.v.lower.Keys() {
				if triton.IsKey(key) {
					add(key, syscall.S_IFDIR, keyIno(key))
				}
			}
		}
	case keyDir:
		ld, err := n.ensureLower(ctx)
		if err != nil {
			if errno := n.interrupted(ctx, "readdir "+dir); errno != 0 {
				return nil, errno
			}
		}
		if ld != nil {
			for name := range ld.files {
				add(name, syscall.S_IFREG, lowerIno(n.key, name))
			}
		}
	}
	sort.Slice(list, func(i, j int) bool { return list[i].Name < list[j].Name })
	return gofs.NewListDirStream(list), 0
}

// typeMode converts a dir entry's type to S_IF* bits.
func typeMode(t iofs.FileMode) uint32 {
	switch {
	case t&iofs.ModeDir != 0:
		return syscall.S_IFDIR
	case t&iofs.ModeSymlink != 0:
		return syscall.S_IFLNK
	case t&iofs.ModeNamedPipe != 0:
		return syscall.S_IFIFO
	case t&iofs.ModeSocket != 0:
		return syscall.S_IFSOCK
	case t&iofs.ModeCharDevice != 0:
		return syscall.S_IFCHR
	case t&iofs.ModeDevice != 0:
		return syscall.S_IFBLK
	}
	return syscall.S_IFREG
}

// Getattr reports the upper dir, or for a KEY dir only an image has, a
// read-only dir owned like the upper root.
func (n *dirNode) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	dir, ok := n.dirPath()
	if !ok {
		return syscall.ENOENT
	}
	var st syscall.Stat_t
	var err error
	if n.kind == rootDir {
		err = syscall.Stat(dir, &st)
	} else {
		err = syscall.Lstat(dir, &st)
	}
	if err == nil {
		out.FromStat(&st)
		out.Ino = 0 // the node's own (a KEY dir's is made up); the bridge fills it in
		if n.kind == rootDir && n.v.shared {
			out.Mode = out.Mode&^0o7777 | 0o1777
		}
		return 0
	}
	if n.kind == keyDir && errors.Is(err, syscall.ENOENT) && n.shown() {
		n.v.lowerDirAttr(&out.Attr)
		out.SetTimeout(lowerTTL)
		return 0
	}
	return n.v.errno("getattr "+dir, err, false)
}

// Setattr changes the upper dir; a KEY dir only an image has is read-only.
func (n *dirNode) Setattr(ctx context.Context, f gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	dir, ok := n.dirPath()
	if !ok {
		return syscall.ENOENT
	}
	if n.kind == keyDir && !exists(dir) {
		return n.v.errno("setattr "+dir, fmt.Errorf("fs: setattr KEY %s: %w", n.key, ErrReadOnly), false)
	}
	if err := setattrPath(dir, in); err != nil {
		return n.v.errno("setattr "+dir, err, false)
	}
	return n.Getattr(ctx, f, out)
}

// Statfs reports the upper dir's file system.
func (n *dirNode) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	var s syscall.Statfs_t
	if err := syscall.Statfs(n.v.upper, &s); err != nil {
		return n.v.errno("statfs", err, false)
	}
	out.FromStatfsT(&s)
	return 0
}
