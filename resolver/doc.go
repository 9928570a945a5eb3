// Package resolver is where image bytes live, and cargohold's only HTTP
// client: it turns references into manifests, configs and layer
// descriptors, reads layer blobs by byte range or whole, and saves and
// pushes images. It knows nothing of KEYs, caches or FUSE.
//
// Model. An image reference (ParseRef) is one of
//
//   - oci:/path/to/layout[:REF] (or oci:/path@sha256:...): an explicit OCI
//     image layout; REF is matched against the annotation
//     org.opencontainers.image.ref.name as written (skopeo's convention).
//   - a registry reference (localhost:5000/repo:tag, repo@sha256:...): looked
//     up first in the local store, an OCI image layout (Options.Store, default
//     DefaultStore()) where images are named by that annotation holding the
//     normalised reference (StoreName), and only then in the registry.
//
// One resolution step: Identify turns a Ref into a Pending image, whose Memo
// names its content ("REPO@DIGEST", "oci:DIR@DIGEST") before anything else
// is read, and whose Open reads manifest and config into an Image. Fetch is
// Identify then Open; ListLayout and TagRef list the images of a layout or a
// repository's tags for the same step.
//
// Two doors to a layer's bytes, both keyed by its LayerRef (Image.LayerRef):
// Blob for ranged reads (RegistryBlob issues its own GET
// /v2/<repo>/blobs/<digest> with a closed Range header, as ggcr has no ranged
// reads; FileBlob reads a blob file of a local layout), Stream for the whole
// blob with its size and digest checked at the end. Each use has its own
// Counters and adds to the Resolver's.
//
// Invariants.
//   - Options are defaulted once, by New; a negative count means none.
//   - One authenticated transport per repository and Resolver, shared by the
//     manifest fetches and every blob of that repository (token refresh on
//     401 happens inside it).
//   - Every request without a body is watched (stall.go): no answer, or no
//     body byte, for Options.Timeout fails it with ErrStalled; a long body
//     that moves is never cut. Failures of a ranged GET that may pass
//     (network errors, stalls, 5xx, 429, short bodies) are retried a bounded
//     number of times; protocol violations and other 4xx are not.
//   - A ReadAt either fills exactly the bytes asked for (up to the blob end,
//     then io.EOF) or returns an error; it never returns bytes of a response
//     that does not match the range asked for.
//   - Plain HTTP goes only to loopback, or with Options.PlainHTTP to other
//     hosts, and then never with credentials (guard.go): an RFC 1918
//     registry does not fall back to http on its own.
//   - A registry host whose requests hang (no answer for 500ms or more, twice
//     in a row) is remembered: its requests fail at once with
//     ErrRegistryDown for a back-off of 1s doubling to 30s, then one probe
//     goes out; an answer heals it (health.go).
//   - The local store's index.json names each reference at most once; it is
//     replaced atomically under a file lock.
package resolver
