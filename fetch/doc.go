// Package fetch is the lazy fetch engine: which bytes of an image layer a
// KEY dir needs, read once, verified, and kept in the content store.
//
// A "KEY dir" is a unit of any cache kind (package kind): a Triton KEY, or
// a dir path under a vLLM or Inductor root ("torch_compile_cache/<hash>/
// rank_0_0/backbone"); Engine.Units says a layer's kind and units, and
// Install applies the kind's rewrites where it installs a unit.
//
// Data path. Engine.Index indexes a layer once (layer.Open over the layer's
// ranged resolver.Blob: an eStargz TOC in two reads, an uncompressed tar in
// large blocks; one layer at a time, the TOC parsed as a stream) and caches
// the index on disk by layer digest (and the most recently used ones that
// served a lookup in memory; Engine.Keys, which the catalog uses to list an
// image's KEYs, keeps none). A gzip layer without an index is one more
// byte source: downloaded whole through resolver.Stream, decompressed into
// the store under its DiffID, and indexed and read there (legacy.go).
// Engine.Dir reads one KEY dir's span with one ranged read from its layer's
// byte source, verifies every file (layer.Dir.Read) and only then commits
// them to the store; Engine.Key merges a KEY dir spread over several layers
// of an image, a later layer's file winning; Engine.Install copies a fetched
// dir into a cache dir. Engine.Prefetch (prefetch.go) fetches the dirs a
// caller names in the background: sorted by offset, coalesced into large
// ranges, each range one ranged read split into its dirs, each dir
// verified and committed as Dir does, into the store's spare room only.
//
// Invariants.
//   - Nothing is committed to the store unless every file of the dir passed
//     its checks; a failure names the file and commits nothing.
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
