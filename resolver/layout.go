package resolver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"syscall"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// lockName is taken (flock) by writers of a layout's index.json.
const lockName = "index.json.lock"

// WriteLocal saves img in the local store (an OCI image layout at store,
// default DefaultStore(), created when missing) under ref, annotated with
// RefNameAnnotation = StoreName(ref). An older entry of the same name is
// replaced, not kept beside it. It returns the manifest digest.
//
// Debt: blobs only the replaced image used stay on disk until a GC.
func WriteLocal(ctx context.Context, store, ref string, img v1.Image) (v1.Hash, error) {
	if store == "" {
		store = DefaultStore()
	}
	n, err := StoreName(ref)
	if err != nil {
		return v1.Hash{}, err
	}
	return writeLayout(ctx, store, n, img)
}

// Save saves img where ref says: oci:DIR[:REF] into that layout under REF
// (default "latest"), a registry reference into the local store
// (opts.Store) like WriteLocal.
func Save(ctx context.Context, ref string, img v1.Image, opts Options) (v1.Hash, error) {
	r, err := ParseRef(ref, opts)
	if err != nil {
		return v1.Hash{}, err
	}
	if r.Digest != nil {
		got, err := img.Digest()
		if err != nil {
			return v1.Hash{}, fmt.Errorf("resolver: save %s: %w", ref, err)
		}
		if got != *r.Digest {
			return v1.Hash{}, fmt.Errorf("resolver: save %s: image digest is %s", ref, got)
		}
	}
	if r.IsLayout() {
		n := r.Name
		if n == "" {
			n = "latest"
		}
		if r.Digest != nil {
			return v1.Hash{}, fmt.Errorf("resolver: save %s: a layout needs a name, not a digest", ref)
		}
		return writeLayout(ctx, r.Layout, n, img)
	}
	return writeLayout(ctx, r.Store, r.Name, img)
}

// writeLayout writes img's blobs, then swaps index.json under a lock with
// refName pointing at img and at nothing else.
func writeLayout(ctx context.Context, dir, refName string, img v1.Image) (v1.Hash, error) {
	fail := func(err error) (v1.Hash, error) {
		return v1.Hash{}, fmt.Errorf("resolver: write %s to layout %s: %w", refName, dir, err)
	}
	if err := ctx.Err(); err != nil {
		return fail(err)
	}
	if dir == "" {
		return fail(errors.New("no local store: $HOME is unset; set $CARGOHOLD_STORE or --store"))
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fail(err)
	}
	unlock, err := lockLayout(dir)
	if err != nil {
		return fail(err)
	}
	defer unlock()

	if _, err := os.Stat(filepath.Join(dir, "index.json")); errors.Is(err, os.ErrNotExist) {
		if err := initLayout(dir); err != nil {
			return fail(err)
		}
	} else if err != nil {
		return fail(err)
	}
	p := layout.Path(dir)
	if err := p.WriteImage(img); err != nil {
		return fail(err)
	}
	if err := ctx.Err(); err != nil {
		return fail(err)
	}
	desc, err := partial.Descriptor(img)
	if err != nil {
		return fail(err)
	}
	d := *desc
	d.Annotations = maps.Clone(d.Annotations)
	if d.Annotations == nil {
		d.Annotations = map[string]string{}
	}
	d.Annotations[RefNameAnnotation] = refName

	idx, err := readIndex(dir)
	if err != nil {
		return fail(err)
	}
	idx.Manifests = slices.DeleteFunc(idx.Manifests, func(m v1.Descriptor) bool {
		return m.Annotations[RefNameAnnotation] == refName
	})
	idx.Manifests = append(idx.Manifests, d)
	if err := writeIndex(dir, idx); err != nil {
		return fail(err)
	}
	return d.Digest, nil
}

// initLayout writes oci-layout and an empty index.json.
func initLayout(dir string) error {
	if err := os.WriteFile(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644); err != nil {
		return err
	}
	return writeIndex(dir, &v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex})
}

// lockLayout takes an exclusive flock on the layout's lock file.
func lockLayout(dir string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, lockName), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock: %w", err)
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}

// readIndex reads dir/index.json; os.ErrNotExist passes through.
func readIndex(dir string) (*v1.IndexManifest, error) {
	f, err := os.Open(filepath.Join(dir, "index.json"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	idx, err := v1.ParseIndexManifest(f)
	if err != nil {
		return nil, fmt.Errorf("parse %s/index.json: %w", dir, err)
	}
	return idx, nil
}

// writeIndex replaces dir/index.json atomically (readers never see a
// partial file).
func writeIndex(dir string, idx *v1.IndexManifest) error {
	raw, err := json.MarshalIndent(idx, "", "   ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, ".index.json.*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(raw); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), filepath.Join(dir, "index.json"))
}

// findInLayout returns the last index.json entry of dir that match accepts.
// A layout without index.json has no entries.
func findInLayout(dir string, match func(v1.Descriptor) bool) (v1.Descriptor, bool, error) {
	idx, err := readIndex(dir)
	if errors.Is(err, os.ErrNotExist) {
		return v1.Descriptor{}, false, nil
	}
	if err != nil {
		return v1.Descriptor{}, false, err
	}
	for i := len(idx.Manifests) - 1; i >= 0; i-- {
		if match(idx.Manifests[i]) {
			return idx.Manifests[i], true, nil
		}
	}
	return v1.Descriptor{}, false, nil
}

// layoutNames lists the ref names in dir's index, for error messages.
func layoutNames(dir string) []string {
	idx, err := readIndex(dir)
	if err != nil {
		return nil
	}
	var names []string
	for _, m := range idx.Manifests {
		if n := m.Annotations[RefNameAnnotation]; n != "" {
			names = append(names, n)
		} else {
			names = append(names, m.Digest.String())
		}
	}
	return names
}

// layoutImage opens the image that d (an entry of dir's index) names,
// picking from an image index when d is one.
func layoutImage(dir string, d v1.Descriptor) (v1.Image, error) {
	ii, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		return nil, err
	}
	switch {
	case d.MediaType.IsImage():
		return ii.Image(d.Digest)
	case d.MediaType.IsIndex():
		child, err := ii.ImageIndex(d.Digest)
		if err != nil {
			return nil, err
		}
		return pickImage(child)
	default:
		return nil, fmt.Errorf("%s: unsupported media type %q", d.Digest, d.MediaType)
	}
}
