// Package layer is the image layer format of cargohold: it builds the
// reproducible eStargz layer that holds a compile cache (package kind:
// Triton, vLLM, Inductor), indexes a layer blob over an io.ReaderAt (eStargz
// TOC, or a plain tar read in large blocks) or read whole as a stream
// (ScanTar, Index.Check), and reads and verifies one unit (a Triton KEY
// dir, a vLLM or Inductor dir) from the bytes of its span.
//
// Model: a layer holds io.<kind>.cache/<unit>/<file> entries (MCV's
// prefixes) and MCV's io.<kind>.manifest/manifest.json. An Index records
// the layer's kind (the kind of its first cache file; files of another
// kind are skipped and named) and maps each unit path (relative to the
// kind's root: a KEY for Triton) to a Dir whose files' data lie in one
// contiguous byte span [Dir.Offset, Dir.End) of the blob, so a caller
// fetches a whole unit with one ranged read and reads each file through
// Dir.Open, a stream that verifies as it goes (Dir.Read does that into
// memory, for small dirs). Files are stored as they are on disk: whoever
// installs or serves them applies the kind's rewrites (kind.RewriteOf).
//
// Trust: a digest is only as good as what vouches for it. A TOC whose
// digest is the layer descriptor's annotation vouches for the files it
// gives digests (Index.Verifiable); anything else (no annotation, files
// without digests, plain tar) is vouched for by the layer digest alone, so
// its index must come from the whole blob read as a stream whose digest the
// caller checks at the end: ScanTar for a tar, Index.Check for an eStargz
// blob, which also refuses a TOC that disagrees with the tar it indexes
// (*DisagreeError).
//
// Invariants:
//   - No HTTP and no FUSE here: callers bring an io.ReaderAt and a size.
//   - Every entry of every format passes one check (checkEntry): names with
//     "..", absolute names, links, devices, unclean names, name elements
//     over 255 bytes and control characters under a cache prefix are
//     errors (*UnsafeEntryError); entries elsewhere, and files under a
//     prefix that its kind does not take (kind.Classify), are skipped and
//     recorded, never an error.
//   - An Index is immutable after Open and JSON-serialisable; reading does
//     not mutate it, so any number of goroutines may read at once.
//   - A FileReader never ends with io.EOF on data whose known digest or
//     size disagrees, and holds a decompressor's window and a buffer, never
//     the file.
//   - BuildSource output depends only on the cache content, the file names and the
//     executable bits: fixed mtime, owners, entry order, tar format,
//     compression level and chunk size. Its gzip members are compressed on
//     GOMAXPROCS goroutines, each member alone, and written in order, so the
//     bytes are the same on any number of cores (estargz.Build, which splits
//     the tar into GOMAXPROCS parts, is not). The layout is exactly
//     estargz.Writer's: with the standard library's gzip the bytes are
//     estargz.Writer's (a test holds this); BuildSource uses klauspost/compress's
//     deflate, so its bytes also depend on that module's version.
package layer

// Prefix is the directory that holds a Triton cache inside a layer
// (kind.Triton.Prefix()).
const Prefix = "io.triton.cache/"

// MediaType is the layer's media type: eStargz is an ordinary gzip layer to
// every other client.
const MediaType = "application/vnd.oci.image.layer.v1.tar+gzip"

// Layer descriptor annotations of an eStargz layer.
const (
	AnnotationTOCDigest        = "containerd.io/snapshot/stargz/toc.digest"
	AnnotationUncompressedSize = "io.containers.estargz.uncompressed-size"
)
