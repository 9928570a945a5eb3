package resolver

import (
	"fmt"
	"maps"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// TOCDigestAnnotation is the eStargz layer annotation holding the TOC digest.
const TOCDigestAnnotation = "containerd.io/snapshot/stargz/toc.digest"

// Layer is one layer of an Image, in manifest order.
type Layer struct {
	Desc v1.Descriptor
	// TOCDigest is the layer's TOCDigestAnnotation, "" when absent (not
	// eStargz, or built by a tool that does not annotate).
	TOCDigest string
}

// Image is a resolved image: its manifest, config and layer descriptors,
// and where its blobs are read from. Fields are read-only after it is
// opened. Its layers' bytes are reached through Resolver.Blob and
// Resolver.Stream with LayerRef(i).
type Image struct {
	// Ref is the reference as the caller wrote it.
	Ref string
	// Digest is the image manifest digest (after picking from an index).
	Digest   v1.Hash
	Manifest *v1.Manifest
	Config   *v1.ConfigFile
	// Labels are the config labels; never nil.
	Labels map[string]string
	Layers []Layer
	// Local is true when the image came from an OCI layout (the local store
	// or an oci: reference); Layout is then that directory.
	Local  bool
	Layout string
	// Repo is the registry repository of a registry image.
	Repo name.Repository

	img v1.Image
}

// V1 returns the go-containerregistry image. For a registry image its lazy
// reads run under the ctx it was opened with.
func (im *Image) V1() v1.Image { return im.img }

// Name is how the image is named in locations and logs: "REPO@DIGEST" for a
// registry image, "oci:DIR@DIGEST" for a layout (or local store) image.
func (im *Image) Name() string {
	if im.Local {
		return LayoutPrefix + im.Layout + "@" + im.Digest.String()
	}
	return im.Repo.Name() + "@" + im.Digest.String()
}

// LayerRef locates one layer without needing its manifest again; it is
// persistable as JSON. It is the key of both doors to a layer's bytes
// (Resolver.Blob, Resolver.Stream).
type LayerRef struct {
	Repo      string        `json:"repo,omitempty"`   // registry repository (name.Repository.Name()), "" for local
	Layout    string        `json:"layout,omitempty"` // local OCI layout dir, "" for registry
	Desc      v1.Descriptor `json:"desc"`             // digest, size, media type, annotations
	TOCDigest string        `json:"toc_digest,omitempty"`
	DiffID    v1.Hash       `json:"diff_id"` // uncompressed digest from the config
}

// String names the layer for errors and logs: repo@digest or layout@digest.
func (l LayerRef) String() string {
	where := l.Repo
	if where == "" {
		where = l.Layout
	}
	return where + "@" + l.Desc.Digest.String()
}

// Validate rejects a LayerRef that cannot name a blob: not sha256, no size,
// or not exactly one of registry and layout.
func (l LayerRef) Validate() error {
	switch {
	case l.Desc.Digest.Algorithm != "sha256" || len(l.Desc.Digest.Hex) != 64:
		return fmt.Errorf("resolver: layer %s: not a sha256 digest", l)
	case l.Desc.Size < 0:
		return fmt.Errorf("resolver: layer %s: unknown size", l)
	case (l.Repo == "") == (l.Layout == ""):
		return fmt.Errorf("resolver: layer %s: want exactly one of repo and layout", l)
	}
	return nil
}

// LayerRef returns the LayerRef of layer i; the zero LayerRef (which
// Validate refuses) when there is no layer i.
func (im *Image) LayerRef(i int) LayerRef {
	if i < 0 || i >= len(im.Layers) {
		return LayerRef{}
	}
	l := im.Layers[i]
	ref := LayerRef{Desc: l.Desc, TOCDigest: l.TOCDigest}
	if im.Local {
		ref.Layout = im.Layout
	} else {
		ref.Repo = im.Repo.Name()
	}
	if im.Config != nil && i < len(im.Config.RootFS.DiffIDs) {
		ref.DiffID = im.Config.RootFS.DiffIDs[i]
	}
	return ref
}

// MaxConfigSize bounds an image config: a bigger one (a huge label) is
// refused before it is read, as reading and parsing it costs several times
// its size in memory. cargohold's metadata label takes about 300 bytes a
// kernel: this is room for some 50,000.
const MaxConfigSize = 16 << 20

// newImage reads manifest and config of img.
func newImage(ref string, img v1.Image) (*Image, error) {
	dig, err := img.Digest()
	if err != nil {
		return nil, err
	}
	m, err := img.Manifest()
	if err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	if n := max(m.Config.Size, int64(len(m.Config.Data))); n > MaxConfigSize {
		return nil, fmt.Errorf("config %s: %d bytes, larger than the %d MiB an image config may have", m.Config.Digest, n, MaxConfigSize>>20)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", m.Config.Digest, err)
	}
	im := &Image{Ref: ref, Digest: dig, Manifest: m, Config: cfg, img: img}
	im.Labels = maps.Clone(cfg.Config.Labels)
	if im.Labels == nil {
		im.Labels = map[string]string{}
	}
	for _, l := range m.Layers {
		im.Layers = append(im.Layers, Layer{Desc: l, TOCDigest: l.Annotations[TOCDigestAnnotation]})
	}
	return im, nil
}

// pickImage chooses from an index: its only image, else the linux/amd64 one.
// Attestation manifests (buildx) are not images to choose.
func pickImage(ii v1.ImageIndex) (v1.Image, error) {
	im, err := ii.IndexManifest()
	if err != nil {
		return nil, err
	}
	var cands []v1.Descriptor
	for _, d := range im.Manifests {
		if d.MediaType.IsImage() && d.Annotations["vnd.docker.reference.type"] != "attestation-manifest" {
			cands = append(cands, d)
		}
	}
	if len(cands) == 1 {
		return ii.Image(cands[0].Digest)
	}
	var plats []string
	for _, d := range cands {
		if p := d.Platform; p != nil {
			if p.OS == "linux" && p.Architecture == "amd64" {
				return ii.Image(d.Digest)
			}
			plats = append(plats, p.String())
		}
	}
	return nil, fmt.Errorf("image index with %d images and none linux/amd64 (platforms: %s)", len(cands), strings.Join(plats, ", "))
}
