// Package fs is the FUSE view that cargohold-fs mounts as a compile cache's
// root (Options.Kind, package kind: Triton's cache dir, $VLLM_CACHE_ROOT,
// TORCHINDUCTOR_CACHE_DIR): go-fuse nodes over two layers.
//
// Model. The view is an upper directory (a plain local dir: every write lands
// there and survives remounts) merged over a read-only lower layer that the
// images supply through the Lower interface, one unit at a time. A unit is
// a dir's own files, named by its path under the root (kind's model): a
// Triton KEY dir; vLLM's torch_compile_cache/<hash>/rank_0_0/backbone;
// Inductor's fxgraph/<xx>/<key>. The dirs above units (the skeleton:
// torch_compile_cache/<hash>/, fxgraph/<xx>/) have no files of their own
// in the images; a unit may have child units (an unpacked vLLM rank dir
// and its inductor_cache/ and triton_cache/<KEY>).
// cargohold-fs implements Lower with the catalog (cmd/cargohold-fs/images.go):
// Dir and Dirs answer from the catalog's index (catalog.Has, catalog.Dir);
// Entry asks catalog.Entry, which finds the image holding the unit and has
// the fetch engine read its dir (one ranged read through the resolver),
// verify it and commit it to the content store; LowerFile.Open opens the
// stored file (catalog.Open, fetching it again if it was evicted). This
// package imports none of them:
//
//	/                 upper root  ∪  Lower.Dirs("")                 (minus whiteouts)
//	/D/ (merged)      upper/D     ∪  Lower.Dirs(D) ∪ Lower.Entry(D) (minus whiteouts)
//	local-only dirs   upper only (tmp dirs, Inductor's locks/ and cache/,
//	                  dirs inside a Triton KEY: kind.ClassifyDir)
//
// A dir is merged where the kind takes a dir (kind.ClassifyDir) and its
// parent is merged and not opaque; the images are never asked about any
// other path, nor for the dirs below a dir where the kind takes none (a
// Triton KEY dir: kind.HoldsDirs). For Triton the merged dirs are the KEY
// dirs at the root, as before.
//
// Lookups go upper first. A dir that is not in the upper dir is answered
// from the images' index (Lower.Dir: no fetch), because the kernel holds
// the parent's directory lock during that lookup (Triton's
// mkdir(ROOT/KEY), vLLM's makedirs of its hash and rank dirs) and a network
// round trip there would make every cold lookup wait for the others. A
// unit's files are fetched on the first lookup or listing inside it
// (Lower.Entry; a listing of a dir above units fetches nothing), with a deadline
// (Options.LookupTimeout) bound to the FUSE request; any failure, including
// the deadline, makes the files absent (ENOENT) so that the framework
// compiles as if there were no image, into the dir it sees. An interrupted request is
// answered EINTR (Python and Go retry it): an interruption says nothing
// about the images. The fetch itself is not
// bound to the lookup: it goes on in the background (one per unit, at most
// maxOrphans nobody waits for, canceled at unmount), and a later lookup in
// the dir finds the files.
//
// Rule 1 of the mount, as this package keeps it: a unit dir that an image
// lists may be shown before its files are fetched; its files are seen only
// after the whole dir was fetched, verified and committed, with exact
// sizes; when the fetch fails or the kernel does not fit, the dir is an
// empty dir whose writes land in the upper dir (Triton's MISS: mkdir(KEY)
// gets EEXIST, which makedirs(exist_ok=True) accepts, the tmp dir and the
// rename land in upper/KEY, and rmdir(KEY) fails ENOTEMPTY).
//
// Invariants.
//   - A file of a unit from an image becomes visible only after
//     Lower.Entry returned all the unit's files and every file that holds
//     paths was read and rewritten (LowerFile.Rewrite: Triton group files
//     to <PathPrefix>/<unit's parent>, vLLM's vllm_compile_cache.py to
//     PathPrefix): sizes are exact at the first lookup and the framework
//     never sees half a unit. The dir itself may show (empty) before that.
//   - No lookup of a dir waits on the network (only, at mount start, for
//     the images' index to load).
//   - Image content is immutable: lower nodes carry long kernel timeouts
//     (lowerTTL), opens get FOPEN_KEEP_CACHE and FOPEN_NOFLUSH, reads come
//     from the content's file descriptor; rewritten files are served from
//     their rewritten bytes in memory.
//   - Every change to the upper dir comes through the mount (it is the dir
//     under the mount), and the kernel updates what it keeps for each
//     change made through it: the root and upper nodes carry long entry,
//     attribute and negative timeouts too (upperTTL), and read-only opens
//     of upper files keep the page cache with no FLUSH. A warm hit asks
//     the mount only what the kernel always asks: mkdir's lookup, each
//     file's open and release, and CPython's isatty ioctl. What the view
//     changes beyond the change the kernel asked for is invalidated
//     (notify.go: the root's attributes when a KEY dir gets its upper
//     half; a KEY dir's names when its image files come in after its
//     lookups gave up), and a "not there" that can change with no change
//     through the mount is not kept: a KEY no image lists (the catalog may
//     list it later), names in a KEY dir while the images cannot answer
//     for it.
//   - An upper node is one file: a process that looked a name up just
//     before another renamed a file over it (Triton's concurrent compiles)
//     still opens and stats the file it found (Rename keeps it for the
//     node), never the new file under the old node, never ENOENT.
//   - Nothing is written below a lower entry: writes, renames onto lower names
//     and deletions change the upper dir only. A deleted lower name is hidden
//     by a whiteout file ".wh.<name>" in the upper parent; a dir made (or
//     moved) where a lower merged dir was deleted is marked opaque by
//     ".wh..wh..opq" (the aufs format: plain empty files, no privilege
//     needed, persistent). Names with the ".wh." prefix are reserved:
//     never listed, never found, not creatable.
//   - Lower entries are dirs (units and the dirs above them) and the
//     units' regular files; they are not renamed (EXDEV: mv copies) and not
//     written in place (EROFS). A merged dir is not renamed either, even
//     one only the upper dir has (a locally compiled vLLM hash dir): its
//     node finds its upper half by its path, fixed when the node was made
//     (EXDEV: mv copies). Nothing is renamed onto a Triton KEY at the
//     root; a plain upper dir may be renamed onto a name the images do
//     not show (Inductor's bundled kernels: tmp.<uuid> onto
//     triton/<device>/<KEY>). Rmdir of a merged dir, and a rename of a dir
//     onto it, is ENOTEMPTY while either layer shows something in it.
//   - No lock is held across a call into the Lower: a slow unit blocks only
//     the lookups inside that unit's dir.
//   - errno (errno.go) is the one place where Go errors become errnos; it
//     records the cause (log and Stats) before the errno is returned.
//
// Known limits (debt):
//   - The upper dir must not change behind the mount's back (for
//     cargohold-fs, which mounts over it, only a process that held it open
//     from before the mount could do that): what the kernel keeps of it
//     (entries, attributes, "not there", pages) stays up to upperTTL, and a
//     lower file's dentry up to lowerTTL (a file put into the upper dir
//     behind the mount stays shadowed that long). Atimes shown are the
//     kernel's. Once the serving process is gone, a stat may still be
//     answered from those caches; statfs, opens and listings say ENOTCONN
//     (cargohold-fs finds a stale mount with statfs).
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
//   - A dir made by mkdir (after a lookup found no image) merges with an
//     image only after a remount; so does a dir above units that the
//     images list as a unit only after a refresh, and a plain dir renamed
//     onto a merged name (it keeps its node, and its inode number, while
//     the kernel holds it).
//   - Image content is not pinned between lookup and open: content evicted
//     meanwhile is fetched again by LowerFile.Open under the FUSE open's
//     interruption and the lookup deadline; an open that cannot get it fails
//     (EIO, or EINTR when interrupted).
package fs
