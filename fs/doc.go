// Package fs is the FUSE view that cargohold-fs mounts as Triton's cache
// directory: go-fuse nodes over two layers.
//
// Model. The view is an upper directory (a plain local dir: every write lands
// there and survives remounts) merged over a read-only lower layer that the
// images supply through the Lower interface, one KEY dir at a time.
// cargohold-fs implements Lower with the catalog (cmd/cargohold-fs/images.go):
// Entry asks catalog.Entry, which finds the image holding the KEY and has
// the fetch engine read its dir (one ranged read through the resolver),
// verify it and commit it to the content store; LowerFile.Open opens the
// stored file (catalog.Open, fetching it again if it was evicted). This
// package imports none of them:
//
//	/                 upper root  ∪  Lower.Keys()         (minus whiteouts)
//	/KEY/             upper/KEY   ∪  Lower.Entry(KEY)     (minus whiteouts)
//	/KEY/tmp.../, /x  upper only
//
// Lookups go upper first. A KEY at the root that is not in the upper dir is
// answered from the images' index (Lower.Has: no fetch), because the kernel
// holds the root's directory lock during that lookup (Triton's
// mkdir(ROOT/KEY)) and a network round trip there would make every cold
// lookup wait for the others. The KEY dir's files are fetched on the first
// lookup or listing inside it (Lower.Entry), with a deadline
// (Options.LookupTimeout) bound to the FUSE request; any failure, including
// the deadline, makes the files absent (ENOENT) so that Triton compiles as
// if there were no image, into the dir it sees. An interrupted request is
// answered EINTR (Python and Go retry it): an interruption says nothing
// about the images. The fetch itself is not
// bound to the lookup: it goes on in the background (one per KEY, at most
// maxOrphans nobody waits for, canceled at unmount), and a later lookup in
// the dir finds the files.
//
// Rule 1 of the mount, as this package keeps it: a KEY dir that an image
// lists may be shown before its files are fetched; its files are seen only
// after the whole dir was fetched, verified and committed, with exact
// sizes; when the fetch fails or the kernel does not fit, the dir is an
// empty dir whose writes land in the upper dir (Triton's MISS: mkdir(KEY)
// gets EEXIST, which makedirs(exist_ok=True) accepts, the tmp dir and the
// rename land in upper/KEY, and rmdir(KEY) fails ENOTEMPTY).
//
// Invariants.
//   - A file of a KEY dir from an image becomes visible only after
//     Lower.Entry returned all the dir's files and every group file was read
//     and rewritten: sizes are exact at the first lookup and Triton never
//     sees half a dir. The dir itself may show (empty) before that.
//   - No lookup at the root waits on the network (only, at mount start, for
//     the images' index to load).
//   - Image content is immutable: lower nodes carry long kernel timeouts
//     (lowerTTL), opens get FOPEN_KEEP_CACHE, reads come from the content's
//     file descriptor; group files are served from their rewritten bytes in
//     memory. Upper nodes carry zero timeouts (correctness first).
//   - Nothing is written below a lower entry: writes, renames onto lower names
//     and deletions change the upper dir only. A deleted lower name is hidden
//     by a whiteout file ".wh.<name>" in the upper parent; a dir made where a
//     lower KEY was deleted is marked opaque by ".wh..wh..opq" (the aufs
//     format: plain empty files, no privilege needed, persistent). Names with
//     the ".wh." prefix are reserved: never listed, never found, not creatable.
//   - Lower entries are KEY dirs at the root and regular files inside them;
//     they are not renamed (EXDEV: mv copies) and not written in place
//     (EROFS). KEY dirs are not renamed either way.
//   - No lock is held across a call into the Lower: a slow KEY blocks only
//     the lookups inside that KEY dir.
//   - An upper file the kernel looked up stays openable when a rename or
//     unlink through the mount takes its name away before the open comes
//     (Triton ranks renaming over each other's files): the node keeps an
//     O_PATH fd of its file from then until the kernel forgets it.
//   - errno (errno.go) is the one place where Go errors become errnos; it
//     records the cause (log and Stats) before the errno is returned.
//
// Known limits (debt):
//   - A lower file's dentry is cached for lowerTTL, so a file put into the
//     upper dir behind the mount's back (not through it) may stay shadowed
//     that long.
//   - Lower files are not copied up for in-place writes (Triton never writes
//     in place; it renames over).
//   - A KEY dir shows its upper half alone while the images fail to answer
//     for it (retried after lowerRetry, or when a fetch that outlived its
//     lookup comes in: then the image's files show under what Triton wrote
//     meanwhile, upper first). Writes there go on as if the images had
//     nothing (Triton's MISS must not fail); removals and renames away
//     leave a whiteout just in case, so a few
//     stray whiteouts (Triton's tmp dirs) may stay behind, hiding nothing;
//     only rmdir of the KEY and RENAME_NOREPLACE onto a name the images may
//     hold answer EIO, as no exact answer exists.
//   - A KEY made by mkdir (after a lookup found no image) merges with an
//     image only after a remount.
//   - Image content is not pinned between lookup and open: content evicted
//     meanwhile is fetched again by LowerFile.Open under the FUSE open's
//     interruption and the lookup deadline; an open that cannot get it fails
//     (EIO, or EINTR when interrupted).
package fs
