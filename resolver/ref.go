package resolver

import (
	"fmt"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// LayoutPrefix marks an explicit OCI image layout reference.
const LayoutPrefix = "oci:"

// RefNameAnnotation names an image inside an OCI image layout.
const RefNameAnnotation = "org.opencontainers.image.ref.name"

// Ref is a parsed image reference.
type Ref struct {
	// Raw is the reference as written.
	Raw string
	// Layout is the directory of an explicit oci: reference; "" otherwise.
	Layout string
	// Name is what is matched against RefNameAnnotation: for oci: the REF
	// part as written ("" means the only image, else "latest"), otherwise
	// the normalised registry reference (StoreName).
	Name string
	// Digest is set when the reference pins a manifest digest.
	Digest *v1.Hash
	// Image is the registry reference; nil for oci: references.
	Image name.Reference
	// Store is the local store searched before the registry; "" for oci:.
	Store string
}

// IsLayout reports whether r names an explicit OCI layout.
func (r Ref) IsLayout() bool { return r.Layout != "" }

// String returns the reference as written.
func (r Ref) String() string { return r.Raw }

// ParseRef parses an image reference; see the package doc for the forms.
func ParseRef(s string, opts Options) (Ref, error) {
	if rest, ok := strings.CutPrefix(s, LayoutPrefix); ok {
		return parseLayoutRef(s, rest)
	}
	ref, err := name.ParseReference(s, nameOpts(opts)...)
	if err != nil {
		return Ref{}, fmt.Errorf("resolver: parse reference %q: %w: %w", s, ErrInvalidRef, err)
	}
	r := Ref{Raw: s, Name: ref.Name(), Image: ref, Store: opts.Store}
	if r.Store == "" {
		r.Store = DefaultStore()
	}
	if d, ok := ref.(name.Digest); ok {
		h, err := v1.NewHash(d.DigestStr())
		if err != nil {
			return Ref{}, fmt.Errorf("resolver: parse reference %q: %w: %w", s, ErrInvalidRef, err)
		}
		r.Digest = &h
	}
	return r, nil
}

// ParseRepository parses a registry repository ("localhost:5000/cache").
func ParseRepository(s string, opts Options) (name.Repository, error) {
	repo, err := name.NewRepository(s, nameOpts(opts)...)
	if err != nil {
		return name.Repository{}, fmt.Errorf("resolver: parse repository %q: %w: %w", s, ErrInvalidRef, err)
	}
	return repo, nil
}

// parseLayoutRef splits "oci:DIR[:REF]" or "oci:DIR@DIGEST". A colon whose
// tail holds a "/" belongs to the directory.
func parseLayoutRef(raw, rest string) (Ref, error) {
	r := Ref{Raw: raw}
	dir := rest
	if i := strings.LastIndex(rest, "@"); i >= 0 && !strings.Contains(rest[i+1:], "/") {
		h, err := v1.NewHash(rest[i+1:])
		if err != nil {
			return Ref{}, fmt.Errorf("resolver: parse reference %q: %w: %w", raw, ErrInvalidRef, err)
		}
		dir, r.Digest = rest[:i], &h
	} else if i := strings.LastIndex(rest, ":"); i >= 0 && !strings.Contains(rest[i+1:], "/") {
		dir, r.Name = rest[:i], rest[i+1:]
	}
	if dir == "" {
		return Ref{}, fmt.Errorf("resolver: parse reference %q: %w: empty layout directory", raw, ErrInvalidRef)
	}
	r.Layout = dir
	return r, nil
}

// StoreName is the RefNameAnnotation value under which the local store keeps
// an image reference: name.ParseReference(ref).Name(), e.g.
// "localhost:5000/repo:tag" or "index.docker.io/library/repo:latest".
func StoreName(ref string) (string, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return "", fmt.Errorf("resolver: parse reference %q: %w: %w", ref, ErrInvalidRef, err)
	}
	return r.Name(), nil
}

func nameOpts(opts Options) []name.Option {
	if opts.PlainHTTP {
		return []name.Option{name.Insecure}
	}
	return nil
}
