package resolver

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// Blob is a layer blob read by offset (Resolver.Blob). ReadAt honours
// io.ReaderAt under the ctx the blob was opened with; ReadAtContext takes
// its own. Counters are this use's own counts. Close releases what the blob
// holds (a file descriptor, a cached body); reads after Close fail.
type Blob interface {
	io.ReaderAt
	ReadAtContext(ctx context.Context, p []byte, off int64) (int, error)
	Size() int64
	Counters() *Counters
	Close() error
}

var _ Blob = (*RegistryBlob)(nil)

// RegistryBlob reads byte ranges of one registry blob with
// GET /v2/<repo>/blobs/<digest> and a closed Range header.
//
// Registry behaviour it copes with (checked against ggcr v0.22.1's
// in-process registry and Go 1.26's http.Client): registries backed by
// object storage answer blob GETs with a redirect to storage (http.Client
// follows it and re-sends Range, as it re-sends every header it was given;
// ggcr's auth transport sends the token only to the registry host); some
// answer 200 with the whole blob instead of 206 (the blob is sliced, and
// kept when small).
type RegistryBlob struct {
	// immutable after construction
	ctx      context.Context
	client   *http.Client
	url      string
	label    string // repo@digest, for errors
	digest   v1.Hash
	size     int64
	opts     Options
	counters Counters
	m        meter

	mu     sync.Mutex
	whole  []byte // guarded by mu: the whole blob, after a 200 answer
	closed bool   // guarded by mu
}

// newRegistryBlob returns a reader for blob d of repo through rt, the
// repository's authenticated transport (Resolver.Transport). ReadAt uses
// ctx; ReadAtContext takes its own. d.Size must be known. opts have their
// defaults already (Resolver.Options).
func newRegistryBlob(ctx context.Context, rt http.RoundTripper, repo name.Repository, d v1.Descriptor, opts Options) (*RegistryBlob, error) {
	label := repo.Name() + "@" + d.Digest.String()
	if d.Size < 0 {
		return nil, fmt.Errorf("resolver: blob %s: unknown size", label)
	}
	if d.Digest.Algorithm == "" || d.Digest.Hex == "" {
		return nil, fmt.Errorf("resolver: blob %s: no digest", label)
	}
	u := fmt.Sprintf("%s://%s/v2/%s/blobs/%s", repo.Registry.Scheme(), repo.RegistryStr(),
		repo.RepositoryStr(), d.Digest)
	b := &RegistryBlob{
		ctx:    ctx,
		client: &http.Client{Transport: rt, CheckRedirect: checkRedirect},
		url:    u,
		label:  label,
		digest: d.Digest,
		size:   d.Size,
		opts:   opts,
	}
	b.m = meter{own: &b.counters, shared: opts.Counters}
	return b, nil
}

// Size is the blob size from its descriptor.
func (b *RegistryBlob) Size() int64 { return b.size }

// Digest is the blob digest.
func (b *RegistryBlob) Digest() v1.Hash { return b.digest }

// Counters are this blob's own counts (Options.Counters gets them too).
func (b *RegistryBlob) Counters() *Counters { return &b.counters }

// Close drops a cached whole blob; later reads fail.
func (b *RegistryBlob) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed, b.whole = true, nil
	return nil
}

// ReadAt reads len(p) bytes at off under the construction ctx.
func (b *RegistryBlob) ReadAt(p []byte, off int64) (int, error) {
	return b.ReadAtContext(b.ctx, p, off)
}

// ReadAtContext reads len(p) bytes at off: all of them, or fewer with io.EOF
// when the blob ends first, or none with an error.
func (b *RegistryBlob) ReadAtContext(ctx context.Context, p []byte, off int64) (int, error) {
	want, done, err := readSpan(b.label, len(p), off, b.size)
	if done {
		return 0, err
	}
	dst := p[:want]
	b.mu.Lock()
	closed, whole := b.closed, b.whole
	b.mu.Unlock()
	if closed {
		return 0, fmt.Errorf("resolver: read %s: %w", b.label, errClosed)
	}
	if whole != nil {
		copy(dst, whole[off:])
	} else if err := b.fetch(ctx, dst, off); err != nil {
		return 0, err
	}
	if int(want) < len(p) {
		return int(want), io.EOF
	}
	return int(want), nil
}

var errClosed = errors.New("blob closed")

// fetch fills p from [off, off+len(p)), retrying what may pass.
func (b *RegistryBlob) fetch(ctx context.Context, p []byte, off int64) error {
	end := off + int64(len(p))
	wait := b.opts.Backoff
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			b.m.retried()
		}
		err := b.attempt(ctx, p, off)
		if err == nil {
			return nil
		}
		b.m.failed()
		if ctx.Err() != nil || !retryable(err) || attempt >= max(b.opts.Retries, 0) {
			if attempt > 0 {
				err = fmt.Errorf("after %d attempts: %w", attempt+1, err)
			}
			return fmt.Errorf("resolver: GET %s range [%d,%d): %w", b.label, off, end, err)
		}
		b.opts.Logger.Warn("retrying blob read", slog.String("blob", b.label),
			slog.Int64("off", off), slog.Int64("end", end), slog.Int("attempt", attempt+1),
			slog.Any("err", err))
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("resolver: GET %s range [%d,%d): %w (retrying after: %w)", b.label, off, end, ctx.Err(), err)
		case <-t.C:
		}
		wait = min(2*wait, maxBackoff)
	}
}

// attempt is one GET, bounded by ctx and by a watchdog (watch): an answer
// within Options.Timeout, and no stall of the body that long; a long body
// on a slow link is fine.
func (b *RegistryBlob) attempt(ctx context.Context, p []byte, off int64) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, b.url, nil)
	if err != nil {
		return err
	}
	last := off + int64(len(p)) - 1
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, last))
	b.m.request()
	// Watched here too, so that an attempt is bounded whatever rt is.
	resp, err := watch(b.client.Do, req, b.opts.Timeout)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body := &countingReader{r: resp.Body, m: b.m}

	switch resp.StatusCode {
	case http.StatusPartialContent:
		if err := checkContentRange(resp.Header.Get("Content-Range"), off, last, b.size); err != nil {
			return err
		}
		if resp.ContentLength >= 0 && resp.ContentLength != int64(len(p)) {
			return fmt.Errorf("%w: Content-Length %d for %d bytes asked", ErrBadResponse, resp.ContentLength, len(p))
		}
		return readFull(body, p)
	case http.StatusOK:
		// The registry ignored Range: this body is the whole blob.
		if resp.ContentLength >= 0 && resp.ContentLength != b.size {
			return fmt.Errorf("%w: 200 with Content-Length %d for a blob of %d bytes", ErrBadResponse, resp.ContentLength, b.size)
		}
		b.opts.Logger.Debug("registry ignored Range", slog.String("blob", b.label))
		if b.size <= max(b.opts.WholeBlobLimit, 0) {
			return b.keepWhole(body, p, off)
		}
		if _, err := io.CopyN(io.Discard, body, off); err != nil {
			return fmt.Errorf("%w: %w: skipping to %d: %w", ErrBadResponse, ErrShortBody, off, err)
		}
		return readFull(body, p)
	default:
		err := transport.CheckError(resp, http.StatusOK, http.StatusPartialContent)
		if resp.StatusCode == http.StatusNotFound {
			return fmt.Errorf("%w: %w", ErrNotFound, err)
		}
		return err
	}
}

// keepWhole reads the whole blob, checks its digest, keeps it, and copies
// the range asked for.
func (b *RegistryBlob) keepWhole(body io.Reader, p []byte, off int64) error {
	whole := make([]byte, b.size)
	if err := readFull(body, whole); err != nil {
		return err
	}
	if b.digest.Algorithm == "sha256" {
		sum := sha256.Sum256(whole)
		if got := hex.EncodeToString(sum[:]); got != b.digest.Hex {
			return fmt.Errorf("%w: %w: got sha256:%s", ErrBadResponse, ErrDigest, got)
		}
	}
	copy(p, whole[off:])
	b.mu.Lock()
	if !b.closed {
		b.whole = whole
	}
	b.mu.Unlock()
	return nil
}

// checkRedirect follows up to 10 redirects, but never to a link-local
// address (cloud metadata endpoints), and from a public host never to a
// private or loopback one: a registry must not steer us into the local
// network. A private registry redirecting to private storage is fine (ggcr
// v0.22.1's own fetcher refuses that too; we do not).
func checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= 10 {
		return errors.New("stopped after 10 redirects")
	}
	if len(via) == 0 {
		return nil
	}
	from, to := via[0].URL.Hostname(), req.URL.Hostname()
	if from == to {
		return nil
	}
	dest, err := netip.ParseAddr(to)
	if err != nil {
		return nil // a name, not an address literal
	}
	if dest.IsLinkLocalUnicast() || dest.IsLinkLocalMulticast() {
		return fmt.Errorf("redirect from %s to link-local %s refused", from, to)
	}
	if isPrivate(dest) && !isPrivateHost(from) {
		return fmt.Errorf("redirect from public %s to private %s refused", from, to)
	}
	return nil
}

func isPrivate(a netip.Addr) bool {
	return a.IsPrivate() || a.IsLoopback() || a.IsUnspecified()
}

// isPrivateHost: an address literal in a private range, or localhost.
func isPrivateHost(h string) bool {
	if h == "localhost" || strings.HasSuffix(h, ".localhost") {
		return true
	}
	a, err := netip.ParseAddr(h)
	return err == nil && isPrivate(a)
}

// readFull fills p from r; a body that ends early is a short body.
func readFull(r io.Reader, p []byte) error {
	n, err := io.ReadFull(r, p)
	if err == nil {
		return nil
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: %w: got %d of %d bytes", ErrBadResponse, ErrShortBody, n, len(p))
	}
	return fmt.Errorf("reading body after %d of %d bytes: %w", n, len(p), err)
}

// checkContentRange accepts exactly "bytes first-last/size" (or "/*").
func checkContentRange(h string, first, last, size int64) error {
	bad := func() error {
		return fmt.Errorf("%w: Content-Range %q for bytes %d-%d/%d", ErrBadResponse, h, first, last, size)
	}
	spec, ok := strings.CutPrefix(h, "bytes ")
	if !ok {
		return bad()
	}
	rng, total, ok := strings.Cut(spec, "/")
	if !ok {
		return bad()
	}
	a, z, ok := strings.Cut(rng, "-")
	if !ok {
		return bad()
	}
	ga, err1 := strconv.ParseInt(a, 10, 64)
	gz, err2 := strconv.ParseInt(z, 10, 64)
	if err1 != nil || err2 != nil || ga != first || gz != last {
		return bad()
	}
	if total != "*" {
		if gt, err := strconv.ParseInt(total, 10, 64); err != nil || gt != size {
			return bad()
		}
	}
	return nil
}

// retryable: what may pass on a second try. Protocol violations and 4xx
// (other than 408 and 429) will not; 401 was already retried by the auth
// transport.
func retryable(err error) bool {
	if errors.Is(err, ErrShortBody) {
		return true
	}
	if errors.Is(err, ErrBadResponse) || errors.Is(err, ErrNotFound) || errors.Is(err, ErrRegistryDown) || errors.Is(err, ErrInsecure) {
		return false
	}
	var terr *transport.Error
	if errors.As(err, &terr) {
		switch c := terr.StatusCode; {
		case c == http.StatusRequestTimeout, c == http.StatusTooManyRequests, c >= 500:
			return true
		default:
			return false
		}
	}
	// Network errors, resets, per-attempt deadlines.
	return true
}

// countingReader counts body bytes.
type countingReader struct {
	r io.Reader
	m meter
}

func (cr *countingReader) Read(p []byte) (int, error) {
	n, err := cr.r.Read(p)
	cr.m.received(n)
	return n, err
}

// readSpan is the io.ReaderAt contract both blob kinds share: how many
// bytes a read of n at off may return, or (done) its whole answer: an error
// for a negative offset, io.EOF at or past the end, nothing for n == 0.
func readSpan(label string, n int, off, size int64) (want int64, done bool, err error) {
	switch {
	case off < 0:
		return 0, true, fmt.Errorf("resolver: read %s at %d: negative offset", label, off)
	case n == 0:
		return 0, true, nil
	case off >= size:
		return 0, true, io.EOF
	}
	return min(int64(n), size-off), false, nil
}
