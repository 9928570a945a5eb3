package resolver

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
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
		return v1.Hash{}, fmt.Errorf("resolver: push %s: %w", ref, r.explainHEAD(ctx, pr.Image.Context(), err))
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

// explainHEAD adds the registry's own words to a failed HEAD: an answer to
// HEAD has no body, so ggcr can only say "401 Unauthorized (HEAD responses
// have no body, use GET for details)" (ggcr v0.22.1, remote.Write checks
// for existing blobs and manifests with HEAD). It sends the same URL as a
// GET, with the same credentials, and when that fails the same way, names
// its error codes and messages.
func (r *Resolver) explainHEAD(ctx context.Context, repo name.Repository, err error) error {
	var terr *transport.Error
	if !errors.As(err, &terr) || terr.Request == nil || terr.Request.Method != http.MethodHead || len(terr.Errors) > 0 {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, r.opts.Timeout)
	defer cancel()
	auth, aerr := authn.Resolve(ctx, r.opts.Keychain, repo)
	if aerr != nil {
		return err
	}
	rt, terr2 := transport.NewWithContext(ctx, repo.Registry, auth, r.base, []string{repo.Scope(transport.PushScope)})
	if terr2 != nil {
		// A token exchange that fails says why itself.
		return fmt.Errorf("%w; the registry says: %v", err, terr2)
	}
	req, rerr := http.NewRequestWithContext(ctx, http.MethodGet, terr.Request.URL.String(), nil)
	if rerr != nil {
		return err
	}
	resp, gerr := (&http.Client{Transport: rt, CheckRedirect: checkRedirect}).Do(req)
	if gerr != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != terr.StatusCode {
		return err
	}
	var said *transport.Error
	if cerr := transport.CheckError(resp, http.StatusOK); errors.As(cerr, &said) && len(said.Errors) > 0 {
		msgs := make([]string, len(said.Errors))
		for i, d := range said.Errors {
			msgs[i] = fmt.Sprintf("%s: %s", d.Code, d.Message)
		}
		return fmt.Errorf("%w; the registry says: %s", err, strings.Join(msgs, "; "))
	}
	return err
}
