package resolver

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// tokenAuth is a bearer-token gate in front of a registry: /token hands out
// a fresh token; /v2/ requests need the current one (when enabled).
type tokenAuth struct {
	enabled atomic.Bool
	issued  atomic.Int64 // tokens handed out
	denied  atomic.Int64 // 401s sent

	mu    sync.Mutex
	valid string // guarded by mu
}

func (a *tokenAuth) revoke() {
	a.mu.Lock()
	a.valid = ""
	a.mu.Unlock()
}

func (a *tokenAuth) middleware(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/token" {
			n := a.issued.Add(1)
			tok := fmt.Sprintf("tok-%d", n)
			a.mu.Lock()
			a.valid = tok
			a.mu.Unlock()
			json.NewEncoder(w).Encode(map[string]any{"token": tok, "expires_in": 300})
			return
		}
		if a.enabled.Load() {
			a.mu.Lock()
			ok := a.valid != "" && r.Header.Get("Authorization") == "Bearer "+a.valid
			a.mu.Unlock()
			if !ok {
				a.denied.Add(1)
				w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="http://%s/token",service="test"`, r.Host))
				http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"token"}]}`, http.StatusUnauthorized)
				return
			}
		}
		h.ServeHTTP(w, r)
	})
}

func TestBearerTokenRegistry(t *testing.T) {
	auth := &tokenAuth{}
	tr := newTestRegistry(t, auth.middleware)
	opts := testOptions(t)
	img := testImage(t, 5000, 1, map[string]string{"a": "b"})
	ref := tr.host + "/cache/auth:v1"
	pushImage(t, ref, img, opts)
	auth.enabled.Store(true)

	res := New(opts)
	im, err := res.Fetch(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	if im.Labels["a"] != "b" || im.Digest != mustDigest(t, img) {
		t.Fatalf("fetched %v %v", im.Digest, im.Labels)
	}
	if got := auth.issued.Load(); got != 1 {
		t.Fatalf("tokens issued = %d, want 1 (one handshake per repository)", got)
	}
	b, err := res.Blob(context.Background(), im.LayerRef(0))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	want := layerBytes(t, img, 0)
	if err := checkReaderAt(b, want); err != nil {
		t.Fatal(err)
	}
	if got := auth.issued.Load(); got != 1 {
		t.Fatalf("tokens issued = %d, want still 1", got)
	}

	// The token expires: the next read gets a 401, the transport fetches a
	// new token and repeats the request; the reader sees one request.
	auth.revoke()
	rb := b.(*RegistryBlob)
	r0, d0 := rb.Counters().Requests(), auth.denied.Load()
	p := make([]byte, 100)
	if n, err := b.ReadAt(p, 100); n != 100 || err != nil {
		t.Fatalf("ReadAt after revoke = %d, %v", n, err)
	}
	if !bytes.Equal(p, want[100:200]) {
		t.Fatal("wrong bytes")
	}
	if auth.issued.Load() != 2 || auth.denied.Load()-d0 != 1 {
		t.Fatalf("issued %d denied %d; want a refresh after one 401", auth.issued.Load(), auth.denied.Load()-d0)
	}
	if got := rb.Counters().Requests() - r0; got != 1 || rb.Counters().Errors() != 0 {
		t.Fatalf("requests %d errors %d; want 1 0", got, rb.Counters().Errors())
	}
}

// redirectBlobs serves blob GETs by redirecting to a storage server.
type redirectBlobs struct {
	registry.BlobHandler
	storage string
	on      atomic.Bool
}

func (h *redirectBlobs) Get(ctx context.Context, repo string, d v1.Hash) (io.ReadCloser, error) {
	if h.on.Load() {
		return nil, registry.RedirectError{Location: h.storage + "/" + d.String(), Code: http.StatusTemporaryRedirect}
	}
	return h.BlobHandler.Get(ctx, repo, d)
}

func (h *redirectBlobs) Stat(ctx context.Context, repo string, d v1.Hash) (int64, error) {
	return h.BlobHandler.(registry.BlobStatHandler).Stat(ctx, repo, d)
}

func (h *redirectBlobs) Put(ctx context.Context, repo string, d v1.Hash, rc io.ReadCloser) error {
	return h.BlobHandler.(registry.BlobPutHandler).Put(ctx, repo, d, rc)
}

func TestRegistryBlobRedirect(t *testing.T) {
	mem := registry.NewInMemoryBlobHandler()
	blobs := &redirectBlobs{BlobHandler: mem}
	var (
		mu      sync.Mutex
		ranges  []string
		leaked  bool
		storage atomic.Int64
	)
	st := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		storage.Add(1)
		mu.Lock()
		ranges = append(ranges, r.Header.Get("Range"))
		leaked = leaked || r.Header.Get("Authorization") != ""
		mu.Unlock()
		h, err := v1.NewHash(strings.TrimPrefix(r.URL.Path, "/"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		rc, err := mem.Get(r.Context(), "", h)
		if err != nil {
			http.NotFound(w, r)
			return
		}
		data, _ := io.ReadAll(rc)
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(data))
	}))
	t.Cleanup(st.Close)
	blobs.storage = st.URL

	auth := &tokenAuth{}
	tr := newTestRegistry(t, auth.middleware, registry.WithBlobHandler(blobs))
	opts := testOptions(t)
	img := testImage(t, 8000, 1, nil)
	ref := tr.host + "/cache/redirect:v1"
	pushImage(t, ref, img, opts)
	blobs.on.Store(true)
	auth.enabled.Store(true)

	res := New(opts)
	im, err := res.Fetch(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	b, err := res.Blob(context.Background(), im.LayerRef(0))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	want := layerBytes(t, img, 0)
	s0 := storage.Load()
	p := make([]byte, 300)
	if n, err := b.ReadAt(p, 1234); n != 300 || err != nil {
		t.Fatalf("ReadAt = %d, %v", n, err)
	}
	if !bytes.Equal(p, want[1234:1534]) {
		t.Fatal("wrong bytes")
	}
	if storage.Load()-s0 != 1 {
		t.Fatalf("storage saw %d requests, want 1", storage.Load()-s0)
	}
	mu.Lock()
	last, leak := ranges[len(ranges)-1], leaked
	mu.Unlock()
	if last != "bytes=1234-1533" {
		t.Fatalf("storage got Range %q, want bytes=1234-1533", last)
	}
	if leak {
		t.Fatal("registry token sent to the storage host")
	}
	if err := checkReaderAt(b, want); err != nil {
		t.Fatal(err)
	}
}
