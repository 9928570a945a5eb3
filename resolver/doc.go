// Package resolver is cargohold's only HTTP client: it turns image references
// into manifests, configs and layer descriptors, reads layer blobs by byte
// range, and saves and pushes images.
//
// Model. An image reference is one of
//
//   - oci:/path/to/layout[:REF] (or oci:/path@sha256:...): an explicit OCI
//     image layout; REF is matched against the annotation
//     org.opencontainers.image.ref.name as written (skopeo's convention).
//   - a registry reference (localhost:5000/repo:tag, repo@sha256:...): looked
//     up first in the local store, an OCI image layout (Options.Store, default
//     DefaultStore()) where images are named by that annotation holding the
//     normalised reference (StoreName), and only then in the registry.
//
// The KEY index (Index) maps each Triton cache KEY to the image layers that
// hold it (a KEY dir in several layers of an image is merged file by file,
// later layers winning, as unpacking would), over a list of sources,
// highest priority first:
//
//   - REG/REPO:TAG or REG/REPO@sha256:...: one image (from the local store
//     first, as Fetch does);
//   - REG/REPO:* : every tag of the repository, listed through the
//     registry's tags API;
//   - oci:DIR: every image of a local layout (each manifest in index.json);
//     oci:DIR:REF or oci:DIR@sha256:...: one image there.
//
// Locations of a KEY are ordered by source, then, within a source, newest
// image config "created" first, ties broken by the image ref descending
// ("repo:v2" before "repo:v1"); an image listed twice counts once, at its
// best place. Labels decide which images fit the local targets and which of
// their kernel KEYs are indexed (launchers come with a fitting image);
// images with malformed or no labels are indexed whole, and Index.Entry
// checks each fetched kernel JSON, which wins over any label. A source that
// fails keeps what its last good refresh found. Lookups read an immutable
// snapshot through an atomic pointer and do no I/O; the index is persisted
// in its state dir and reloaded without network.
//
// Manifests, configs, tags and pushes go through go-containerregistry.
// Layer bytes are read through Blob, an io.ReaderAt: RegistryBlob issues its
// own GET /v2/<repo>/blobs/<digest> with a closed Range header (ggcr has no
// ranged reads), FileBlob reads a blob file of a local layout.
//
// Invariants.
//   - One authenticated transport per repository and Resolver, shared by the
//     manifest fetches and every blob of that repository (token refresh on
//     401 happens inside it).
//   - Every ranged GET attempt carries a deadline (Options.Timeout); failures
//     that may pass (network errors, 5xx, 429, short bodies) are retried a
//     bounded number of times; protocol violations and other 4xx are not.
//   - A ReadAt either fills exactly the bytes asked for (up to the blob end,
//     then io.EOF) or returns an error; it never returns bytes of a response
//     that does not match the range asked for.
//   - The local store's index.json names each reference at most once; it is
//     replaced atomically under a file lock.
package resolver
