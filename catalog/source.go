package catalog

import (
	"context"
	"fmt"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"

	"cargohold/resolver"
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

// source is one entry of Config.Sources, parsed.
type source struct {
	raw    string
	kind   sourceKind
	ref    resolver.Ref    // sourceImage
	repo   name.Repository // sourceRepo
	layout string          // sourceLayout
}

// parseSource reads one source; see the package doc for the forms.
func parseSource(s string, opts resolver.Options) (source, error) {
	if rest, ok := strings.CutSuffix(s, ":"+AllTags); ok && !strings.HasPrefix(s, resolver.LayoutPrefix) {
		repo, err := resolver.ParseRepository(rest, opts)
		if err != nil {
			return source{}, fmt.Errorf("catalog: source %q: %w", s, err)
		}
		return source{raw: s, kind: sourceRepo, repo: repo}, nil
	}
	r, err := resolver.ParseRef(s, opts)
	if err != nil {
		return source{}, fmt.Errorf("catalog: source %q: %w", s, err)
	}
	if r.IsLayout() && r.Name == "" && r.Digest == nil {
		return source{raw: s, kind: sourceLayout, layout: r.Layout}, nil
	}
	return source{raw: s, kind: sourceImage, ref: r}, nil
}

// item is one image a source lists; identify yields it through the
// resolver's one resolution step (resolver.Identify).
type item struct {
	ref      string
	identify func(ctx context.Context) (resolver.Pending, error)
}

// expand lists the items of src: the tags API for a repository, index.json
// for a layout, the source itself for one image. An error means the source
// as a whole failed (tags not listed, layout unreadable).
func (c *Catalog) expand(ctx context.Context, src source) ([]item, error) {
	switch src.kind {
	case sourceLayout:
		ps, err := c.r.ListLayout(ctx, src.layout)
		if err != nil {
			return nil, err
		}
		items := make([]item, 0, len(ps))
		for _, p := range ps {
			items = append(items, item{ref: p.Ref, identify: func(context.Context) (resolver.Pending, error) { return p, nil }})
		}
		return items, nil
	case sourceRepo:
		tags, err := c.r.ListTags(ctx, src.repo.Name())
		if err != nil {
			return nil, err
		}
		items := make([]item, 0, len(tags))
		for _, t := range tags {
			ref := resolver.TagRef(src.repo, t)
			items = append(items, item{ref: ref.Raw, identify: func(ctx context.Context) (resolver.Pending, error) {
				return c.r.Identify(ctx, ref)
			}})
		}
		return items, nil
	default:
		return []item{{ref: src.raw, identify: func(ctx context.Context) (resolver.Pending, error) {
			return c.r.Identify(ctx, src.ref)
		}}}, nil
	}
}
