package fs

import (
	"context"
	"errors"
	"fmt"
	iofs "io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"cargohold/kind"
	"cargohold/triton"
)

// lowerRetry is how long a unit dir that has an upper half keeps showing
// only that half after the images failed to answer for it, before asking
// again: each ask may cost a whole lookup timeout, and a compile in
// progress looks up a name in the dir per file it writes.
const lowerRetry = 30 * time.Second

type dirKind uint8

const (
	rootDir   dirKind = iota // the mount root: upper root ∪ the dirs the images show there
	mergedDir                // a dir the images may show (a unit, a dir above units): upper ∪ images
	plainDir                 // any other dir: upper only
)

// dirNode is a directory of the view.
type dirNode struct {
	gofs.Inode

	// Immutable after construction.
	v    *view
	kind dirKind
	rel  string // mergedDir only: its path, slash-separated, relative to the root

	mu        sync.Mutex // guards the fields below; never held across a Lower call
	lowerDone bool       // lower is known; nil: no image has the unit, it is no unit, or the dir is opaque
	lower     *lowerDir
	failErr   error     // why the images last failed to answer
	failedAt  time.Time // when
	// promised: the images show the dir (Lower.Dir), so it is shown before
	// its files are fetched, and stays shown (empty but for what the
	// framework writes) when the fetch fails.
	promised bool
	// unitKnown: unit says whether the images hold the dir as a unit (with
	// files to fetch) rather than only as a dir above units.
	unitKnown, unit bool
}

var _ = (gofs.NodeLookuper)((*dirNode)(nil))
var _ = (gofs.NodeReaddirer)((*dirNode)(nil))
var _ = (gofs.NodeGetattrer)((*dirNode)(nil))
var _ = (gofs.NodeSetattrer)((*dirNode)(nil))
var _ = (gofs.NodeStatfser)((*dirNode)(nil))

func (v *view) newMergedDir(rel string) *dirNode { return &dirNode{v: v, kind: mergedDir, rel: rel} }

// dirPath is the dir's path in the upper layer (which may not exist for a
// dir that only an image has). ok is false for a dir no longer in the tree.
func (n *dirNode) dirPath() (string, bool) {
	switch n.kind {
	case rootDir:
		return n.v.upper, true
	case mergedDir:
		return filepath.Join(n.v.upper, filepath.FromSlash(n.rel)), true
	}
	return n.v.treePath(n.EmbeddedInode())
}

// childRel is the path of name in this dir, relative to the root.
func (n *dirNode) childRel(name string) string {
	if n.kind == rootDir {
		return name
	}
	return n.rel + "/" + name
}

// mayShow reports whether the images may show a dir name in this dir: the
// dir merges both layers (an opaque dir shows its upper half alone), and
// the kind takes a dir there (kind.ClassifyDir: not a local-only dir such
// as Inductor's locks/ or a tmp dir, not a dir inside a Triton KEY). dir
// is the dir's upper path.
func (n *dirNode) mayShow(dir, name string) bool {
	return n.kindTakes(name) && (n.kind == rootDir || !isOpaque(dir))
}

// kindTakes reports whether this dir merges both layers and the kind takes
// a dir name in it (mayShow, but for the dir's opacity).
func (n *dirNode) kindTakes(name string) bool {
	if n.kind == plainDir {
		return false
	}
	ok, _ := kind.ClassifyDir(n.v.kind, n.childRel(name))
	return ok
}

// lowerDirs lists the dirs the images show right below this dir (root or
// merged). Where the kind takes no dir (inside a Triton KEY dir) the
// images are not asked: for cargohold-fs, each ask searches the catalog's
// units.
func (n *dirNode) lowerDirs() []string {
	if n.kind != rootDir && !kind.HoldsDirs(n.v.kind, n.rel) {
		return nil
	}
	return n.v.lowerDirs(n.rel)
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

// promise marks a dir the images show (Lower.Dir), a unit or not.
func (n *dirNode) promise(unit bool) {
	n.mu.Lock()
	n.promised = true
	n.unitKnown, n.unit = true, unit
	n.mu.Unlock()
}

// shown reports whether the view shows this dir without an upper half:
// the images show it, or their files for it are known.
func (n *dirNode) shown() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.promised || n.lower != nil
}

// aboveUnits reports whether the images show this dir as a dir above
// units, not as a unit: a name not there is a unit no image has.
func (n *dirNode) aboveUnits() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.promised && n.unitKnown && !n.unit
}

// isUnit reports whether the images hold this dir as a unit, asking them
// (no fetch) the first time.
func (n *dirNode) isUnit(ctx context.Context) (bool, error) {
	n.mu.Lock()
	known, unit := n.unitKnown, n.unit
	n.mu.Unlock()
	if known {
		return unit, nil
	}
	d, err := n.v.dir(ctx, n.rel)
	if err != nil {
		return false, err
	}
	n.mu.Lock()
	n.unitKnown, n.unit = true, d.Unit
	n.mu.Unlock()
	return d.Unit, nil
}

// ensureLower finds the lower half of a merged dir: for a unit, it fetches
// its files from the images (the first lookup or listing inside the dir)
// once per node and keeps the answer (nil: no image has the unit, or the
// dir is no unit). An error says the images could not answer (the cause is
// recorded); the dir then shows its upper half alone (empty when it has
// none: the framework compiles into it) and asks again after lowerRetry,
// or when a fetch that outlived its lookup comes in (adoptLate).
func (n *dirNode) ensureLower(ctx context.Context) (*lowerDir, error) {
	if n.kind != mergedDir {
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
	unit, err := n.isUnit(ctx)
	if err != nil {
		return nil, n.lowerFailed(ctx, err)
	}
	if !unit {
		n.setLower(nil, false)
		return n.lowerState()
	}
	ld, err := n.v.resolve(ctx, n.rel)
	switch {
	case err == nil:
		n.setLower(ld, false)
	case errors.Is(err, iofs.ErrNotExist):
		if n.shown() {
			n.v.stats.miss() // listed, but no image that fits has it after all
		}
		n.setLower(nil, false)
	default:
		return nil, n.lowerFailed(ctx, err)
	}
	return n.lowerState()
}

// lowerFailed records that the images could not answer for the dir, and
// returns err.
func (n *dirNode) lowerFailed(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		// An interrupted caller says nothing about the images: its caller
		// answers EINTR (retried by Python and Go), and the fetch goes on.
		n.v.log.Debug("fs: interrupted while fetching", "key", n.rel, "err", err)
		return err
	}
	n.v.errno("fetch "+n.rel, err, true) // recorded; lookups see the upper half alone
	n.mu.Lock()
	n.failErr, n.failedAt = err, time.Now()
	n.mu.Unlock()
	return err
}

// mergedChild returns the merged dir node the tree holds for name, if any.
func (n *dirNode) mergedChild(name string) *dirNode {
	if n.kind == plainDir {
		return nil
	}
	ch := n.GetChild(name)
	if ch == nil {
		return nil
	}
	d, _ := ch.Operations().(*dirNode)
	if d == nil || d.kind != mergedDir {
		return nil
	}
	return d
}

// movesWithTree reports whether the dir name in this dir (upper path dir)
// finds its upper half by its place in the tree, and so may be renamed. A
// merged dir does not: its upper half is upper/<rel>, fixed when its node
// was made, and the node the kernel keeps after a rename would still
// point at the old path. The node the tree holds decides; with none, what a
// lookup would make.
func (n *dirNode) movesWithTree(dir, name string) bool {
	if ch := n.GetChild(name); ch != nil {
		d, _ := ch.Operations().(*dirNode)
		return d == nil || d.kind != mergedDir
	}
	return !n.mayShow(dir, name)
}

// findDir returns the merged dir node the tree holds at rel, if any.
func (v *view) findDir(rel string) *dirNode {
	d := v.root
	for _, el := range strings.Split(rel, "/") {
		if d = d.mergedChild(el); d == nil {
			return nil
		}
	}
	return d
}

// lowerMode says what the lower layer shows at name in this dir (an image
// has it and no whiteout hides it): S_IFDIR, S_IFREG, or 0 for nothing. An
// error says it is not known: the images could not answer for the unit
// (or the caller was interrupted). Each caller decides what "unknown"
// means for it (see upper.go): writes go on as if the images had nothing,
// removals write a whiteout just in case, and only answers that must be
// exact (rmdir of a unit, RENAME_NOREPLACE) fail.
func (n *dirNode) lowerMode(ctx context.Context, name string) (uint32, error) {
	dir, ok := n.dirPath()
	if !ok || n.kind == plainDir || hasWhiteout(dir, name) {
		return 0, nil
	}
	if n.mayShow(dir, name) {
		d, err := n.v.dir(ctx, n.childRel(name))
		if err != nil {
			return 0, fmt.Errorf("fs: %s: %w", filepath.Join(dir, name), err)
		}
		if d.Exists {
			return syscall.S_IFDIR, nil
		}
	}
	if n.kind == rootDir {
		return 0, nil
	}
	ld, err := n.ensureLower(ctx)
	if err != nil {
		return 0, fmt.Errorf("fs: %s: %w", filepath.Join(dir, name), err)
	}
	if ld == nil || ld.files[name] == nil {
		return 0, nil
	}
	return syscall.S_IFREG, nil
}

// lowerHas reports whether the lower layer shows name in this dir (see
// lowerMode).
func (n *dirNode) lowerHas(ctx context.Context, name string) (bool, error) {
	m, err := n.lowerMode(ctx, name)
	return m != 0, err
}

// Lookup finds name upper first, then in the images. A dir the images show
// is answered from their index (Lower.Dir: no fetch, as the kernel holds
// the parent's lock); a unit's files are fetched on the first lookup
// inside it.
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
		return n.upperChild(ctx, dir, name, &st, gen, out), 0
	}
	if !errors.Is(err, syscall.ENOENT) && !errors.Is(err, syscall.ENOTDIR) {
		return nil, n.v.errno("lookup "+p, err, false)
	}
	if n.kind == plainDir || hasWhiteout(dir, name) {
		return nil, syscall.ENOENT
	}
	if e := n.knownFile(name); e != nil {
		return n.lowerFileChild(ctx, e, out), 0
	}
	asked := false
	if n.mayShow(dir, name) {
		ch, errno := n.lookupDir(ctx, name, out)
		if ch != nil || errno != syscall.ENOENT {
			return ch, errno
		}
		asked = true
	}
	if n.kind == rootDir {
		if asked {
			n.v.stats.miss()
			n.v.log.Debug("fs: no image lists the KEY", "key", name)
		}
		return nil, syscall.ENOENT // only dirs come from images at the root
	}
	ld, err := n.ensureLower(ctx)
	if err != nil {
		if errno := n.interrupted(ctx, "lookup "+p); errno != 0 {
			return nil, errno
		}
		uncached(out) // the images may have the name once they answer
		return nil, syscall.ENOENT
	}
	if ld == nil || ld.files[name] == nil {
		if asked {
			uncached(out) // a dir the images may list later (a refresh)
			if ld == nil && n.aboveUnits() {
				n.v.stats.miss() // as for a KEY at a Triton root: no image has it
			}
		}
		return nil, syscall.ENOENT
	}
	return n.lowerFileChild(ctx, ld.files[name], out), 0
}

// knownFile returns the image's file name of this unit when its files are
// known already: no need to ask the images for a dir of that name.
func (n *dirNode) knownFile(name string) *lowerEntry {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.lower == nil {
		return nil
	}
	return n.lower.files[name]
}

// lowerFileChild makes the node for an image's file of this unit.
func (n *dirNode) lowerFileChild(ctx context.Context, e *lowerEntry, out *fuse.EntryOut) *gofs.Inode {
	n.v.lowerFileAttr(e, &out.Attr)
	out.SetEntryTimeout(lowerTTL)
	out.SetAttrTimeout(lowerTTL)
	return n.NewInode(ctx, &lowerFile{v: n.v, e: e}, gofs.StableAttr{Mode: syscall.S_IFREG, Ino: lowerIno(n.rel, e.file.Name)})
}

// upperChild makes the node for an upper entry in dir (n's upper path).
func (n *dirNode) upperChild(ctx context.Context, dir, name string, st *syscall.Stat_t, gen uint64, out *fuse.EntryOut) *gofs.Inode {
	out.Attr.FromStat(st)
	mode := st.Mode & syscall.S_IFMT
	if mode == syscall.S_IFDIR && n.mayShow(dir, name) {
		// The node the tree holds, merged or a plain dir renamed here
		// (it finds its upper half by its place): a new node under the
		// name would cut a process inside the held one off its dir.
		if ch := n.GetChild(name); ch != nil {
			if _, ok := ch.Operations().(*dirNode); ok {
				return ch
			}
		}
		rel := n.childRel(name)
		return n.NewInode(ctx, n.v.newMergedDir(rel), gofs.StableAttr{Mode: syscall.S_IFDIR, Ino: keyIno(rel)})
	}
	var node gofs.InodeEmbedder = &upperFile{v: n.v}
	if mode == syscall.S_IFDIR {
		node = &dirNode{v: n.v, kind: plainDir}
	}
	return n.NewInode(ctx, node, gofs.StableAttr{Mode: mode, Ino: n.v.upperIno(st), Gen: gen})
}

// lookupDir answers a dir the upper layer does not have from the images'
// index: no fetch here, so that no lookup holds the parent's lock across a
// network round trip (Triton's mkdir(ROOT/KEY) takes the root's). The dir
// is shown at once; a unit's files come with the first lookup inside it.
// ENOENT (not kept by the kernel) when the images do not show it.
func (n *dirNode) lookupDir(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	rel := n.childRel(name)
	d := n.mergedChild(name)
	if d == nil || !d.shown() {
		// Not kept by the kernel: the images may list the dir later (a
		// refresh), and the next lookup must ask again.
		info, err := n.v.dir(ctx, rel)
		if err != nil {
			uncached(out)
			return nil, n.v.errno("lookup "+rel, err, true)
		}
		if !info.Exists {
			uncached(out)
			return nil, syscall.ENOENT
		}
		if d = n.mergedChild(name); d == nil {
			d = n.v.newMergedDir(rel)
		}
		d.promise(info.Unit)
	}
	n.v.lowerDirAttr(&out.Attr)
	out.SetEntryTimeout(lowerTTL)
	out.SetAttrTimeout(lowerTTL)
	return n.NewInode(ctx, d, gofs.StableAttr{Mode: syscall.S_IFDIR, Ino: keyIno(rel)}), 0
}

// Readdir lists both layers: upper entries, then the images' names that are
// neither shadowed nor whited out. Listing a dir asks the images for the
// dirs below it (no fetch); listing a unit asks for its files.
func (n *dirNode) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	dir, ok := n.dirPath()
	if !ok {
		return nil, syscall.ENOENT
	}
	des, err := os.ReadDir(dir)
	if err != nil && !(n.kind == mergedDir && errors.Is(err, iofs.ErrNotExist)) {
		return nil, n.v.errno("readdir "+dir, err, false)
	}
	merged := n.kind == rootDir || (n.kind == mergedDir && !isOpaque(dir))
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
		if de.IsDir() && merged && n.kindTakes(name) {
			e.Ino = keyIno(n.childRel(name)) // what a lookup makes, unless the tree holds a node (upperChild)
			if ch := n.GetChild(name); ch != nil {
				e.Ino = ch.StableAttr().Ino
			}
		}
		list = append(list, e)
	}
	add := func(name string, mode uint32, ino uint64) {
		if !seen[name] && !hidden[name] && plainName(name) {
			seen[name] = true
			list = append(list, fuse.DirEntry{Name: name, Mode: mode, Ino: ino})
		}
	}
	if merged {
		for _, name := range n.lowerDirs() {
			if plainName(name) && n.kindTakes(name) {
				add(name, syscall.S_IFDIR, keyIno(n.childRel(name)))
			}
		}
	}
	if n.kind == mergedDir {
		ld, err := n.ensureLower(ctx)
		if err != nil {
			if errno := n.interrupted(ctx, "readdir "+dir); errno != 0 {
				return nil, errno
			}
		}
		if ld != nil {
			for name := range ld.files {
				add(name, syscall.S_IFREG, lowerIno(n.rel, name))
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
	if n.kind == mergedDir && errors.Is(err, syscall.ENOENT) && n.shown() {
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
	if n.kind == mergedDir && !exists(dir) {
		return n.v.errno("setattr "+dir, fmt.Errorf("fs: setattr KEY %s: %w", n.rel, ErrReadOnly), false)
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
