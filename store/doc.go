// Package store is the on-disk content store under the FUSE mount: blobs
// named by their sha256 digest, written atomically, verified before they
// become visible, bounded in size, evicted least recently used first.
//
// Layout: <dir>/sha256/<first two hex digits>/<hex>. A Put streams into a
// temp file (".tmp-*") in the final shard directory, checks the digest and
// renames it into place, so a reader never sees a partial or wrong blob. A
// Batch does that for several blobs (a KEY dir's files) and renames them
// into place together at Commit, or none of them. Fits answers, before
// anything is read or allocated, whether content of a given size could be
// put at all.
// Temp files left by a crash are removed by Open. <dir>/lock is held with
// flock(2) while the Store is open: one Store per directory, across
// processes too, which is what makes that cleanup safe.
//
// Invariants, all guarded by one mutex:
//   - Size() never exceeds the limit (when the limit is not 0). A Put that
//     cannot be made to fit by evicting unpinned entries fails with ErrFull
//     and commits nothing; it does not evict anything either. A blob larger
//     than the limit is ErrFull before it fills the disk.
//   - With KeepFree(n), a Put never writes a byte that would leave less than
//     n bytes free on the store's file system: it evicts least recently used
//     unpinned entries first, and fails with ErrFull, committing nothing,
//     when that is not enough (space.go).
//   - An entry with an open File is pinned and never evicted.
//   - PutSpare (content nobody asked for yet: prefetch) evicts nothing: it
//     fits under the limit as the store stands or fails with ErrFull. Its
//     entries sit at the back of the eviction list (mtime 0 on disk), the
//     first to go when a Put needs room, until they are opened. Room says
//     how much spare content still fits, leaving a reserve of the disk free.
//   - Sizes are content bytes (file lengths), not disk blocks.
//
// Recency: Open of a File marks its entry most recently used in memory
// (exact order while the process lives); closing the last File of an entry
// puts it back on the eviction list at the front. Across restarts recency
// comes from file mtimes, which Put sets and Open refreshes at most once a
// minute per entry (touchEvery), to keep the warm-hit path to a map lookup
// and one open(2). Content is not re-hashed at Open: the store trusts what
// it verified when it wrote it.
package store
