// Package fetch is the lazy fetch engine: which bytes of an image layer a
// KEY dir needs, read once, verified, and kept in the content store.
//
// A "KEY dir" is a unit of any cache kind (package kind): a Triton KEY, or
// a dir path under a vLLM or Inductor root ("torch_compile_cache/<hash>/
// rank_0_0/backbone"); Engine.Units says a layer's kind and units, and
// Install applies the kind's rewrites where it installs a unit.
//
// Data path. Engine.Index indexes a layer once and caches the index on disk
// by layer digest (and the most recently used ones that served a lookup in
// memory; Engine.Units, which the catalog uses to list an image's KEYs,
// keeps none), indexSlots layers at a time (large TOCs one at a time:
// tocBudget), from bytes the manifest vouches for only: an eStargz TOC
// checked against the layer's TOC digest
// annotation and giving every file a digest costs two ranged reads; any
// other layer (eStargz without that annotation or without file digests,
// uncompressed tar) is read whole once as a stream whose layer digest is
// checked at its end, and its index taken from that stream (layer.ScanTar,
// layer.Index.Check: a TOC that disagrees with its tar is refused). A gzip
// layer without an index is one more byte source: downloaded whole through
// resolver.Stream, decompressed into the store under its DiffID, and
// indexed and read there (legacy.go). Engine.Dir checks that a KEY dir's
// uncompressed size fits the store (store.Fits) before anything is read,
// then reads its span with one ranged read (pieces of spanPiece for a
// larger span) and streams every file through the decompressor and its
// verification (layer.Dir.Open) into a store.Batch, committed once all
// passed; Engine.Key merges a KEY dir spread over several layers of an
// image, a later layer's file winning; Engine.Install copies a fetched dir
// into a cache dir. Engine.Prefetch (prefetch.go) fetches the dirs a caller
// names in the background: sorted by offset, coalesced into large ranges,
// each range one ranged read split into its dirs, each dir verified and
// committed as Dir does, into the store's spare room only.
//
// Invariants.
//   - Every byte committed to the store was checked against a digest that
//     chains to the manifest (TOC digest annotation, or the layer digest of
//     a whole read); nothing unverified is kept on disk, indexes included.
//   - Nothing is committed to the store unless every file of the dir passed
//     its checks; a failure names the file and commits nothing.
//   - A fetch holds at most spanPiece bytes of span and a decompressor in
//     memory, whatever its files' sizes; a prefetch range at most
//     max(prefetchRange, prefetchMaxDir). ctx ends reads, decompression and
//     writes alike.
//   - Concurrent calls for one layer index or one KEY dir share one fetch
//     (flight); the shared work ends when its last caller gives up or the
//     Engine closes (legacy downloads run on until Close).
//   - A Dir call never waits for prefetch work that has not started; it
//     waits for a prefetch range in flight that covers its dir at most
//     rangePatience for the bytes, then fetches the dir alone; once the
//     range's bytes are in, it commits its dir itself rather than wait for
//     the range's commits (which run commitSlots at once, leaving CPU to
//     lookups).
//   - Prefetch evicts nothing (store.PutSpare) and stops when the store's
//     spare room (store.Room) is used; what a lookup fetched or has open
//     stays.
//   - Stats count work (fetches, hits, indexes, traffic), not failures: a
//     failed call is returned, and recorded once by whoever turns it into an
//     errno or an exit code.
//   - No FUSE here; HTTP only through the resolver's two doors.
package fetch
