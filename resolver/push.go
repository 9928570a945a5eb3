package resolver

import (
	"context"
	"fmt"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// Push uploads img to the registry reference ref and returns its manifest
// digest. It uses ggcr's own push-scoped auth and retries (a pull-scoped
// cached transport cannot push); Options.Progress sees the upload.
func Push(ctx context.Context, ref string, img v1.Image, opts Options) (v1.Hash, error) {
	return New(opts).Push(ctx, ref, img)
}

// Push is the package-level Push with r's options.
func (r *Resolver) Push(ctx context.Context, ref string, img v1.Image) (v1.Hash, error) {
	pr, err := ParseRef(ref, r.opts)
	if err != nil {
		return v1.Hash{}, err
	}
	if pr.IsLayout() {
		return v1.Hash{}, fmt.Errorf("resolver: push %s: a layout is not a registry; use Save", ref)
	}
	o := []remote.Option{
		remote.WithContext(ctx),
		remote.WithAuthFromKeychain(r.opts.Keychain),
		remote.WithTransport(r.base),
	}
	var wg sync.WaitGroup
	if fn := r.opts.Progress; fn != nil {
		// ggcr sends on the channel and closes it when Write returns.
		ch := make(chan v1.Update, 16)
		o = append(o, remote.WithProgress(ch))
		wg.Go(func() {
			for u := range ch {
				fn(u)
			}
		})
	}
	err = remote.Write(pr.Image, img, o...)
	wg.Wait()
	if err != nil {
		return v1.Hash{}, fmt.Errorf("resolver: push %s: %w", ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		return v1.Hash{}, fmt.Errorf("resolver: push %s: %w", ref, err)
	}
	return d, nil
}

// ListTags lists the tags of repository repo ("localhost:5000/cache").
func ListTags(ctx context.Context, repo string, opts Options) ([]string, error) {
	return New(opts).ListTags(ctx, repo)
}

// ListTags lists the tags of repo through its cached transport.
func (r *Resolver) ListTags(ctx context.Context, repo string) ([]string, error) {
	rp, err := ParseRepository(repo, r.opts)
	if err != nil {
		return nil, fmt.Errorf("resolver: list tags: %w", err)
	}
	rt, err := r.Transport(ctx, rp)
	if err != nil {
		return nil, fmt.Errorf("resolver: list tags %s: %w", repo, err)
	}
	tags, err := remote.List(rp, r.remoteOptions(ctx, rt)...)
	if err != nil {
		if isNotFound(err) {
			err = fmt.Errorf("%w: %w", ErrNotFound, err)
		}
		return nil, fmt.Errorf("resolver: list tags %s: %w", repo, err)
	}
	return tags, nil
}
