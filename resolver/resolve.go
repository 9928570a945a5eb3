package resolver

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// Pending is an image a reference resolved to, identified but not yet read.
type Pending struct {
	// Ref is the image as a human names it: the reference as written,
	// "REG/REPO:TAG" of a listed tag, "oci:DIR:NAME" of a layout entry.
	Ref string
	// Memo identifies the image's content without further requests:
	// "REPO@DIGEST" of the manifest (or image index) the registry returned,
	// "oci:DIR@DIGEST" of a layout's index.json entry.
	Memo string

	open func(ctx context.Context) (*Image, error)
}

// Open reads manifest and config (picking from an image index): the work
// that a caller who knows Memo already may skip.
func (p Pending) Open(ctx context.Context) (*Image, error) { return p.open(ctx) }

// Fetch resolves ref with a fresh Resolver; see Resolver.Fetch.
func Fetch(ctx context.Context, ref string, opts Options) (*Image, error) {
	return New(opts).Fetch(ctx, ref)
}

// Fetch resolves ref to an image and opens it: Identify, then Open.
func (r *Resolver) Fetch(ctx context.Context, ref string) (*Image, error) {
	pr, err := ParseRef(ref, r.opts)
	if err != nil {
		return nil, err
	}
	p, err := r.Identify(ctx, pr)
	if err != nil {
		return nil, err
	}
	return p.Open(ctx)
}

// Identify is the one resolution step for images: an oci: reference from its
// layout only (no name: the layout's only image, else "latest"); a registry
// reference from the local store (Ref.Store) first, then the registry (a
// Ref without a Store: the registry only). A registry tag costs its manifest
// GET, whose body Open reuses; a digest reference costs nothing until Open.
// An image index (manifest list) yields its only image, else its
// linux/amd64 image; Docker schema 2 and OCI manifests are accepted.
func (r *Resolver) Identify(ctx context.Context, pr Ref) (Pending, error) {
	if pr.IsLayout() {
		return r.identifyLayout(ctx, pr)
	}
	if pr.Store != "" {
		d, ok, err := findInLayout(pr.Store, func(d v1.Descriptor) bool {
			return d.Annotations[RefNameAnnotation] == pr.Name || (pr.Digest != nil && d.Digest == *pr.Digest)
		})
		if err != nil {
			return Pending{}, fmt.Errorf("resolver: image %s: local store %s: %w", pr.Raw, pr.Store, err)
		}
		if ok {
			return r.layoutPending(pr.Store, pr.Raw, d), nil
		}
	}
	return r.identifyRemote(ctx, pr)
}

func (r *Resolver) identifyLayout(ctx context.Context, pr Ref) (Pending, error) {
	if err := ctx.Err(); err != nil {
		return Pending{}, fmt.Errorf("resolver: image %s: %w", pr.Raw, err)
	}
	idx, err := readIndex(pr.Layout)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			err = fmt.Errorf("%w: %w", ErrNotFound, err)
		}
		return Pending{}, fmt.Errorf("resolver: image %s: layout %s: %w", pr.Raw, pr.Layout, err)
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
		return Pending{}, fmt.Errorf("resolver: image %s: %w", pr.Raw, err)
	}
	if !ok {
		return Pending{}, fmt.Errorf("resolver: image %s: %w in layout %s (it has: %s)", pr.Raw, ErrNotFound,
			pr.Layout, strings.Join(layoutNames(pr.Layout), ", "))
	}
	return r.layoutPending(pr.Layout, pr.Raw, d), nil
}

// ListLayout lists every image of the layout at dir, named "oci:DIR:NAME"
// (or "oci:DIR@DIGEST" when unnamed). No index.json is ErrNotFound.
func (r *Resolver) ListLayout(ctx context.Context, dir string) ([]Pending, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	idx, err := readIndex(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			err = fmt.Errorf("%w: %w", ErrNotFound, err)
		}
		return nil, fmt.Errorf("resolver: layout %s: %w", dir, err)
	}
	out := make([]Pending, 0, len(idx.Manifests))
	for _, d := range idx.Manifests {
		ref := LayoutPrefix + dir + "@" + d.Digest.String()
		if n := d.Annotations[RefNameAnnotation]; n != "" {
			ref = LayoutPrefix + dir + ":" + n
		}
		out = append(out, r.layoutPending(dir, ref, d))
	}
	return out, nil
}

// TagRef is the registry-only Ref of a tag of repo (as ListTags lists them).
func TagRef(repo name.Repository, tag string) Ref {
	t := repo.Tag(tag)
	return Ref{Raw: t.String(), Name: t.Name(), Image: t}
}

func (r *Resolver) layoutPending(dir, ref string, d v1.Descriptor) Pending {
	return Pending{
		Ref:  ref,
		Memo: LayoutPrefix + dir + "@" + d.Digest.String(),
		open: func(ctx context.Context) (*Image, error) {
			if err := ctx.Err(); err != nil {
				return nil, fmt.Errorf("resolver: image %s: %w", ref, err)
			}
			img, err := layoutImage(dir, d)
			if err != nil {
				return nil, fmt.Errorf("resolver: image %s: layout %s: %w", ref, dir, err)
			}
			im, err := newImage(ref, img)
			if err != nil {
				return nil, fmt.Errorf("resolver: image %s: layout %s: %w", ref, dir, err)
			}
			im.Local, im.Layout = true, dir
			return im, nil
		},
	}
}

// identifyRemote identifies a registry image: a digest ref by its digest,
// with no request; a tag by GETting its manifest.
func (r *Resolver) identifyRemote(ctx context.Context, pr Ref) (Pending, error) {
	repo := pr.Image.Context()
	if d, ok := pr.Image.(name.Digest); ok {
		return Pending{
			Ref:  pr.Raw,
			Memo: repo.Name() + "@" + d.DigestStr(),
			open: func(ctx context.Context) (*Image, error) {
				desc, err := r.getManifest(ctx, pr.Image)
				if err != nil {
					return nil, remoteError(pr, err)
				}
				return r.openRemote(pr, desc)
			},
		}, nil
	}
	desc, err := r.getManifest(ctx, pr.Image)
	if err != nil {
		return Pending{}, remoteError(pr, err)
	}
	return Pending{
		Ref:  pr.Raw,
		Memo: repo.Name() + "@" + desc.Digest.String(),
		open: func(context.Context) (*Image, error) { return r.openRemote(pr, desc) },
	}, nil
}

// remoteError says where an image was looked for.
func remoteError(pr Ref, err error) error {
	switch {
	case pr.Store == "":
		return fmt.Errorf("resolver: image %s: %w", pr.Raw, err)
	case errors.Is(err, ErrNotFound):
		return fmt.Errorf("resolver: image %s: %w in local store %s or registry (registry: %v)", pr.Raw, ErrNotFound, pr.Store, err)
	default:
		return fmt.Errorf("resolver: image %s: not in local store %s; registry: %w", pr.Raw, pr.Store, err)
	}
}

// getManifest GETs ref's manifest through the repository's transport. The
// descriptor's lazy reads (config, child manifests) run under ctx.
func (r *Resolver) getManifest(ctx context.Context, ref name.Reference) (*remote.Descriptor, error) {
	rt, err := r.Transport(ctx, ref.Context())
	if err != nil {
		return nil, err
	}
	desc, err := remote.Get(ref, r.remoteOptions(ctx, rt)...)
	if err != nil {
		if isNotFound(err) {
			err = fmt.Errorf("%w: %w", ErrNotFound, err)
		}
		return nil, err
	}
	return desc, nil
}

// openRemote reads the config of the image desc names (picking from an
// image index first).
func (r *Resolver) openRemote(pr Ref, desc *remote.Descriptor) (*Image, error) {
	var img v1.Image
	var err error
	switch {
	case desc.MediaType.IsIndex():
		var ii v1.ImageIndex
		if ii, err = desc.ImageIndex(); err == nil {
			img, err = pickImage(ii)
		}
	case desc.MediaType.IsImage():
		img, err = desc.Image()
	default:
		// Docker schema 1 and artifacts land here.
		err = fmt.Errorf("unsupported manifest media type %q", desc.MediaType)
	}
	if err != nil {
		return nil, remoteError(pr, err)
	}
	im, err := newImage(pr.Raw, img)
	if err != nil {
		return nil, remoteError(pr, err)
	}
	im.Repo = pr.Image.Context()
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
