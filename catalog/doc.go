// Package catalog says which image holds a KEY: it maps each Triton cache
// KEY to the image layers that hold it over a list of sources, decides which
// images fit the local GPU, persists itself, and serves a KEY dir's files
// to the mount (Entry, Open), fetched through the fetch engine.
//
// A catalog serves one cache kind (Config.Kind, default Triton; package
// kind): its "KEYs" are that kind's units (a Triton KEY, or a dir path under
// a vLLM or Inductor root). Images of another kind are listed, not indexed
// (ImageInfo.Why). Units other than Triton's fit by their image's targets;
// Triton units, nested ones included, by their kernel JSON, and only their
// group files are marked for the rewrite (KeyFile.Rewrite).
//
// Sources, highest priority first:
//
//   - REG/REPO:TAG or REG/REPO@sha256:...: one image (from the local store
//     first, as resolver.Fetch does);
//   - REG/REPO:* : every tag of the repository, listed through the
//     registry's tags API;
//   - oci:DIR: every image of a local layout (each manifest in index.json);
//     oci:DIR:REF or oci:DIR@sha256:...: one image there.
//
// Every image goes through the resolver's one resolution step
// (resolver.Identify); an image whose Memo is known from an earlier refresh
// (or the persisted catalog) costs nothing more. A new fitting image's
// layers are listed (fetch.Engine.Keys) several at once; a layer the
// manifest does not vouch for file by file (an uncompressed tar, an eStargz
// layer without the TOC digest annotation) costs a whole read then.
//
// Locations of a KEY are ordered by source, then, within a source, newest
// image config "created" first, ties broken by the image ref descending
// ("repo:v2" before "repo:v1"); an image listed twice counts once, at its
// best place. A KEY dir in several layers of an image is merged file by
// file, later layers winning, as unpacking would. Labels decide which images
// fit the local targets and which of their kernel KEYs are listed
// (launchers come with a fitting image); images with malformed or no labels
// are listed whole, and Entry checks each fetched kernel JSON, which wins
// over any label.
//
// Prefetch (Config.Prefetch): once a layer has served an Entry, the catalog
// names that layer's KEYs that fit by the image's labels (and that no other
// image serves first) to fetch.Engine.Prefetch, once per layer; the engine
// decides how (coalesced ranges, within the store's spare room). Images
// without usable labels and layers that have served nothing are not
// prefetched.
//
// Invariants.
//   - Lookups read an immutable snapshot through an atomic pointer and do no
//     I/O; a refresh builds the next snapshot beside it.
//   - A source that fails keeps what its last good refresh found; each
//     failed source refresh is logged and counted once (SourceFailures),
//     and Run refreshes again with backoff (Config.Retry) until it answers.
//   - Entry tells "no image has KEY" (fs.ErrNotExist) from "the images
//     cannot answer now" (any other error), so that the mount can count
//     the two apart; it records neither: its caller does.
//   - The catalog is persisted in its state dir (StateFile) and reloaded
//     without network.
package catalog
