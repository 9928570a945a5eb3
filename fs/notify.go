package fs

import (
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// The kernel keeps the view's answers (upperTTL, lowerTTL) and updates them
// itself for every change made through the mount: the entries a create,
// mkdir, unlink, rmdir or rename names, the attributes of the dirs it
// changes, a file's size and times after a write or truncate, its pages.
// What is left to the view:
//
//   - answers that can change with no change through the mount are not
//     kept: a KEY at the root that no image lists (a catalog refresh may
//     add it), names in a KEY dir while the images cannot answer for it
//     (uncached);
//   - a change of the view's beyond the one the kernel asked for: the
//     parent's attributes when a merged dir gets its upper half (touch), the
//     names of a KEY dir whose image files come in after its lookups gave
//     up (adoptLate).
//
// An entry notification takes the dir's lock in the kernel, which a request
// in that dir may hold while it waits for the view's answer: entries are
// only ever invalidated outside a request. An inode notification takes no
// such lock.

// uncached answers ENOENT without the kernel keeping it: go-fuse turns an
// ENOENT into a negative entry for NegativeTimeout only when the node set
// no entry timeout of its own, so any timeout set here keeps it an error.
func uncached(out *fuse.EntryOut) {
	out.SetEntryTimeout(time.Nanosecond)
}

// notifyNames drops the kernel's entries (a negative one, above all) for
// names of the KEY dir d. Outside requests only (see above).
func (d *dirNode) notifyNames(names []string) {
	for _, name := range names {
		d.NotifyEntry(name)
	}
}

// touch drops the kernel's attributes of a dir whose upper half got an
// entry the kernel did not make (a merged dir's upper half made below it).
func (v *view) touch(in *gofs.Inode) {
	in.NotifyContent(-1, 0) // attributes only; no pages, no lock
}
