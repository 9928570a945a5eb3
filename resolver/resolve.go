package resolver

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"os"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
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
// and where its blobs are read from. Fields are read-only after Fetch.
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
	res *Resolver
}

// V1 returns the go-containerregistry image. For a registry image its lazy
// reads run under the ctx given to Fetch.
func (im *Image) V1() v1.Image { return im.img }

// Fetch resolves ref with a fresh Resolver; see Resolver.Fetch.
func Fetch(ctx context.Context, ref string, opts Options) (*Image, error) {
	return New(opts).Fetch(ctx, ref)
}

// Fetch resolves ref to an image: an oci: reference from its layout only, a
// registry reference from the local store first, then the registry. An
// image index (manifest list) yields its only image, else its linux/amd64
// image; Docker schema 2 and OCI manifests are accepted.
func (r *Resolver) Fetch(ctx context.Context, ref string) (*Image, error) {
	pr, err := ParseRef(ref, r.opts)
	if err != nil {
		return nil, err
	}
	if pr.IsLayout() {
		return r.fetchLayout(ctx, pr)
	}
	im, ok, err := r.fetchStore(ctx, pr)
	if err != nil {
		return nil, err
	}
	if ok {
		return im, nil
	}
	im, err = r.fetchRemote(ctx, pr)
	if errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("resolver: image %s: %w in local store %s or registry (registry: %v)", ref, ErrNotFound, pr.Store, err)
	}
	if err != nil {
		return nil, fmt.Errorf("resolver: image %s: not in local store %s; registry: %w", ref, pr.Store, err)
	}
	return im, nil
}

func (r *Resolver) fetchLayout(ctx context.Context, pr Ref) (*Image, error) {
	idx, err := readIndex(pr.Layout)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			err = fmt.Errorf("%w: %w", ErrNotFound, err)
		}
		return nil, fmt.Errorf("resolver: image %s: layout %s: %w", pr.Raw, pr.Layout, err)
	}
	match := func(d v1.Descriptor) bool { return d.Annotations[RefNameAnnotation] == pr.Name }
	switch {
	case pr.Digest != nil:
		match = func(d v1.Descriptor) bool { return d.Digest == *pr.Digest }
	case pr.Name == "" && len(idx.Manifests) == 1:
		match = func(v1.Descriptor) bool { return true }
	case pr.Name == "":
		match = func(d v1.Descriptor) bool { return d.Annotations[RefNameAnnotation] == "latest" }
	}
	d, ok, err := findInLayout(pr.Layout, match)
	if err != nil {
		return nil, fmt.Errorf("resolver: image %s: %w", pr.Raw, err)
	}
	if !ok {
		return nil, fmt.Errorf("resolver: image %s: %w in layout %s (it has: %s)", pr.Raw, ErrNotFound,
			pr.Layout, strings.Join(layoutNames(pr.Layout), ", "))
	}
	return r.openLayoutImage(ctx, pr, pr.Layout, d)
}

// fetchStore looks pr up in the local store; ok is false when absent.
func (r *Resolver) fetchStore(ctx context.Context, pr Ref) (*Image, bool, error) {
	d, ok, err := findInLayout(pr.Store, func(d v1.Descriptor) bool {
		return d.Annotations[RefNameAnnotation] == pr.Name || (pr.Digest != nil && d.Digest == *pr.Digest)
	})
	if err != nil {
		return nil, false, fmt.Errorf("resolver: image %s: local store %s: %w", pr.Raw, pr.Store, err)
	}
	if !ok {
		return nil, false, nil
	}
	im, err := r.openLayoutImage(ctx, pr, pr.Store, d)
	return im, err == nil, err
}

func (r *Resolver) openLayoutImage(ctx context.Context, pr Ref, dir string, d v1.Descriptor) (*Image, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("resolver: image %s: %w", pr.Raw, err)
	}
	img, err := layoutImage(dir, d)
	if err != nil {
		return nil, fmt.Errorf("resolver: image %s: layout %s: %w", pr.Raw, dir, err)
	}
	im, err := r.newImage(pr.Raw, img)
	if err != nil {
		return nil, fmt.Errorf("resolver: image %s: layout %s: %w", pr.Raw, dir, err)
	}
	im.Local, im.Layout = true, dir
	return im, nil
}

func (r *Resolver) fetchRemote(ctx context.Context, pr Ref) (*Image, error) {
	repo := pr.Image.Context()
	rt, err := r.Transport(ctx, repo)
	if err != nil {
		return nil, err
	}
	desc, err := remote.Get(pr.Image, r.remoteOptions(ctx, rt)...)
	if err != nil {
		if isNotFound(err) {
			return nil, fmt.Errorf("%w: %w", ErrNotFound, err)
		}
		return nil, err
	}
	var img v1.Image
	switch {
	case desc.MediaType.IsIndex():
		ii, err := desc.ImageIndex()
		if err != nil {
			return nil, err
		}
		img, err = pickImage(ii)
		if err != nil {
			return nil, err
		}
	case desc.MediaType.IsImage():
		img, err = desc.Image()
		if err != nil {
			return nil, err
		}
	default:
		// Docker schema 1 and artifacts land here.
		return nil, fmt.Errorf("unsupported manifest media type %q", desc.MediaType)
	}
	im, err := r.newImage(pr.Raw, img)
	if err != nil {
		return nil, err
	}
	im.Repo = repo
	return im, nil
}

func (r *Resolver) remoteOptions(ctx context.Context, rt http.RoundTripper) []remote.Option {
	// rt is a *transport.Wrapper: ggcr uses it as is (no second handshake,
	// no extra retry layer). No keychain option: the Wrapper carries the
	// credentials, and ggcr would re-resolve (re-read docker config) per
	// call only to ignore the result.
	return []remote.Option{
		remote.WithContext(ctx),
		remote.WithTransport(rt),
	}
}

// newImage reads manifest and config of img.
func (r *Resolver) newImage(ref string, img v1.Image) (*Image, error) {
	dig, err := img.Digest()
	if err != nil {
		return nil, err
	}
	m, err := img.Manifest()
	if err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", m.Config.Digest, err)
	}
	im := &Image{Ref: ref, Digest: dig, Manifest: m, Config: cfg, img: img, res: r}
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

// isNotFound: the registry says the manifest or repository does not exist.
func isNotFound(err error) bool {
	var terr *transport.Error
	if !errors.As(err, &terr) {
		return false
	}
	if terr.StatusCode == http.StatusNotFound {
		return true
	}
	for _, d := range terr.Errors {
		if d.Code == transport.ManifestUnknownErrorCode || d.Code == transport.NameUnknownErrorCode {
			return true
		}
	}
	return false
}
