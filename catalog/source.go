package resolver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// AllTags is the tag that makes a source of a whole repository:
// "REG/REPO:*" lists every tag through the registry's tags API.
const AllTags = "*"

// sourceKind says how a source expands into images.
type sourceKind int

const (
	sourceImage  sourceKind = iota // one image: a registry ref (local store first) or oci:DIR:REF / oci:DIR@DIGEST
	sourceRepo                     // REG/REPO:*: every tag of a repository
	sourceLayout                   // oci:DIR: every image of a layout
)

// source is one entry of IndexConfig.Sources, parsed.
type source struct {
	raw    string
	kind   sourceKind
	ref    Ref             // sourceImage
	repo   name.Repository // sourceRepo
	layout string          // sourceLayout
}

// parseSource reads one source; see the package doc for the forms.
func parseSource(s string, opts Options) (source, error) {
	if rest, ok := strings.CutSuffix(s, ":"+AllTags); ok && !strings.HasPrefix(s, LayoutPrefix) {
		repo, err := name.NewRepository(rest, nameOpts(opts)...)
		if err != nil {
			return source{}, fmt.Errorf("resolver: source %q: %w: %w", s, ErrInvalidRef, err)
		}
		return source{raw: s, kind: sourceRepo, repo: repo}, nil
	}
	r, err := ParseRef(s, opts)
	if err != nil {
		return source{}, fmt.Errorf("resolver: source %q: %w", s, err)
	}
	if r.IsLayout() && r.Name == "" && r.Digest == nil {
		return source{raw: s, kind: sourceLayout, layout: r.Layout}, nil
	}
	return source{raw: s, kind: sourceImage, ref: r}, nil
}

// candidate is one image a source lists, before its manifest is read.
type candidate struct {
	ref string // as a human names it: "REG/REPO:TAG", "oci:DIR:NAME"
	// memo is the key that identifies the image's content without further
	// requests: "REPO@DIGEST" of the manifest (or index) the registry
	// returned, "oci:DIR@DIGEST" of a layout's index.json entry.
	memo string
	// open reads manifest and config (and picks from an image index): the
	// work skipped when memo is already known.
	open func(ctx context.Context) (*Image, error)
}

// item is one image a source lists; resolve GETs its manifest (a registry
// tag) or reads its layout entry, and yields the candidate.
type item struct {
	ref     string
	resolve func(ctx context.Context) (candidate, error)
}

// expand lists the items of src: the tags API for a repository, index.json
// for a layout, the source itself for one image. An error means the source
// as a whole failed (tags not listed, layout unreadable).
func (ix *Index) expand(ctx context.Context, src source) ([]item, error) {
	switch src.kind {
	case sourceLayout:
		return ix.expandLayout(ctx, src.layout)
	case sourceRepo:
		tags, err := ix.r.ListTags(ctx, src.repo.Name())
		if err != nil {
			return nil, err
		}
		items := make([]item, 0, len(tags))
		for _, t := range tags {
			ref := src.repo.Tag(t)
			items = append(items, item{ref: ref.String(), resolve: func(ctx context.Context) (candidate, error) {
				return ix.registryCandidate(ctx, ref, ref.String())
			}})
		}
		return items, nil
	default:
		return []item{{ref: src.raw, resolve: func(ctx context.Context) (candidate, error) {
			return ix.imageCandidate(ctx, src)
		}}}, nil
	}
}

// imageCandidate resolves a one-image source: an oci: ref from its layout,
// a registry ref from the local store first, as Resolver.Fetch does.
func (ix *Index) imageCandidate(ctx context.Context, src source) (candidate, error) {
	pr := src.ref
	if pr.IsLayout() {
		match := func(d v1.Descriptor) bool { return d.Annotations[RefNameAnnotation] == pr.Name }
		if pr.Digest != nil {
			match = func(d v1.Descriptor) bool { return d.Digest == *pr.Digest }
		}
		d, ok, err := findInLayout(pr.Layout, match)
		if err != nil {
			return candidate{}, fmt.Errorf("resolver: image %s: %w", pr.Raw, err)
		}
		if !ok {
			return candidate{}, fmt.Errorf("resolver: image %s: %w in layout %s", pr.Raw, ErrNotFound, pr.Layout)
		}
		return ix.layoutCandidate(pr.Layout, pr.Raw, d), nil
	}
	d, ok, err := findInLayout(pr.Store, func(d v1.Descriptor) bool {
		return d.Annotations[RefNameAnnotation] == pr.Name || (pr.Digest != nil && d.Digest == *pr.Digest)
	})
	if err != nil {
		return candidate{}, fmt.Errorf("resolver: image %s: local store %s: %w", pr.Raw, pr.Store, err)
	}
	if ok {
		return ix.layoutCandidate(pr.Store, pr.Raw, d), nil
	}
	return ix.registryCandidate(ctx, pr.Image, pr.Raw)
}

// expandLayout lists every image of the layout at dir.
func (ix *Index) expandLayout(ctx context.Context, dir string) ([]item, error) {
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
	items := make([]item, 0, len(idx.Manifests))
	for _, d := range idx.Manifests {
		ref := LayoutPrefix + dir + "@" + d.Digest.String()
		if n := d.Annotations[RefNameAnnotation]; n != "" {
			ref = LayoutPrefix + dir + ":" + n
		}
		c := ix.layoutCandidate(dir, ref, d)
		items = append(items, item{ref: ref, resolve: func(context.Context) (candidate, error) { return c, nil }})
	}
	return items, nil
}

func (ix *Index) layoutCandidate(dir, ref string, d v1.Descriptor) candidate {
	return candidate{
		ref:  ref,
		memo: LayoutPrefix + dir + "@" + d.Digest.String(),
		open: func(ctx context.Context) (*Image, error) {
			return ix.r.openLayoutImage(ctx, Ref{Raw: ref, Layout: dir}, dir, d)
		},
	}
}

// registryCandidate identifies ref's image: a digest ref by its digest,
// with no request; a tag by GETting its manifest, whose body is kept so that
// open needs only the config (and, for an image index, the picked image's
// manifest).
func (ix *Index) registryCandidate(ctx context.Context, ref name.Reference, display string) (candidate, error) {
	repo := ref.Context()
	if d, ok := ref.(name.Digest); ok {
		return candidate{
			ref:  display,
			memo: repo.Name() + "@" + d.DigestStr(),
			open: func(ctx context.Context) (*Image, error) {
				desc, err := ix.getManifest(ctx, ref)
				if err != nil {
					return nil, err
				}
				return ix.openRemote(desc, repo, display)
			},
		}, nil
	}
	desc, err := ix.getManifest(ctx, ref)
	if err != nil {
		return candidate{}, fmt.Errorf("resolver: image %s: %w", display, err)
	}
	return candidate{
		ref:  display,
		memo: repo.Name() + "@" + desc.Digest.String(),
		open: func(context.Context) (*Image, error) { return ix.openRemote(desc, repo, display) },
	}, nil
}

// getManifest GETs ref's manifest through the repository's transport. The
// descriptor's lazy reads (config, child manifests) run under ctx.
func (ix *Index) getManifest(ctx context.Context, ref name.Reference) (*remote.Descriptor, error) {
	rt, err := ix.r.Transport(ctx, ref.Context())
	if err != nil {
		return nil, err
	}
	desc, err := remote.Get(ref, ix.r.remoteOptions(ctx, rt)...)
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
func (ix *Index) openRemote(desc *remote.Descriptor, repo name.Repository, display string) (*Image, error) {
	var img v1.Image
	var err error
	switch {
	case desc.MediaType.IsIndex():
		ii, err := desc.ImageIndex()
		if err != nil {
			return nil, err
		}
		if img, err = pickImage(ii); err != nil {
			return nil, err
		}
	case desc.MediaType.IsImage():
		if img, err = desc.Image(); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("unsupported manifest media type %q", desc.MediaType)
	}
	im, err := ix.r.newImage(display, img)
	if err != nil {
		return nil, err
	}
	im.Repo = repo
	return im, nil
}
