package resolver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
)

// testRegistry is ggcr's in-process registry behind an optional middleware,
// counting the requests it sees by kind.
type testRegistry struct {
	srv       *httptest.Server
	host      string
	pings     atomic.Int64 // GET /v2/
	blobGets  atomic.Int64
	manifests atomic.Int64
}

func newTestRegistry(t *testing.T, mw func(http.Handler) http.Handler, ropts ...registry.Option) *testRegistry {
	t.Helper()
	tr := &testRegistry{}
	ropts = append([]registry.Option{registry.Logger(log.New(io.Discard, "", 0))}, ropts...)
	var h http.Handler = registry.New(ropts...)
	if mw != nil {
		h = mw(h)
	}
	count := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/v2/" || r.URL.Path == "/v2":
			tr.pings.Add(1)
		case r.Method == http.MethodGet && isBlobGet(r):
			tr.blobGets.Add(1)
		case strings.Contains(r.URL.Path, "/manifests/"):
			tr.manifests.Add(1)
		}
		h.ServeHTTP(w, r)
	})
	tr.srv = httptest.NewServer(count)
	t.Cleanup(tr.srv.Close)
	tr.host = strings.TrimPrefix(tr.srv.URL, "http://")
	return tr
}

func isBlobGet(r *http.Request) bool {
	return r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/sha256:")
}

// testOptions: an empty store, no host credentials, fast retries.
func testOptions(t *testing.T) Options {
	return Options{
		Store:    t.TempDir(),
		Keychain: authn.NewMultiKeychain(), // resolves to anonymous
		Timeout:  5 * time.Second,
		Backoff:  time.Millisecond,
	}
}

// testImage is a random image with labels, layers of about size bytes.
func testImage(t *testing.T, size int64, layers int64, labels map[string]string) v1.Image {
	t.Helper()
	img, err := random.Image(size, layers)
	if err != nil {
		t.Fatal(err)
	}
	if labels != nil {
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		cf = cf.DeepCopy()
		cf.Config.Labels = labels
		if img, err = mutate.ConfigFile(img, cf); err != nil {
			t.Fatal(err)
		}
	}
	return img
}

// layerBytes is layer i's compressed blob.
func layerBytes(t *testing.T, img v1.Image, i int) []byte {
	t.Helper()
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	rc, err := ls[i].Compressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustDigest(t *testing.T, img v1.Image) v1.Hash {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func pushImage(t *testing.T, ref string, img v1.Image, opts Options) {
	t.Helper()
	if _, err := Push(context.Background(), ref, img, opts); err != nil {
		t.Fatal(err)
	}
}

// checkReaderAt checks ra against want under the io.ReaderAt contract:
// exact bytes for in-range reads, n < len(p) only with io.EOF at the end,
// (0, io.EOF) past the end, an error (not a panic) for a negative offset.
func checkReaderAt(ra io.ReaderAt, want []byte) error {
	size := int64(len(want))
	cases := []struct{ off, n int64 }{
		{0, 1}, {0, size}, {1, size - 2}, {size - 1, 1}, {size / 3, size / 3},
		{size - 5, 10}, // runs past the end
		{size, 4}, {size + 100, 4}, {0, 0},
	}
	for _, c := range cases {
		p := make([]byte, c.n)
		n, err := ra.ReadAt(p, c.off)
		wantN := max(0, min(c.n, size-c.off))
		if int64(n) != wantN {
			return fmt.Errorf("ReadAt(len %d, off %d) = %d, %v; want %d bytes", c.n, c.off, n, err, wantN)
		}
		if wantN < c.n && !errors.Is(err, io.EOF) {
			return fmt.Errorf("ReadAt(len %d, off %d): short read without io.EOF: %v", c.n, c.off, err)
		}
		if wantN == c.n && err != nil {
			return fmt.Errorf("ReadAt(len %d, off %d): full read with error %v", c.n, c.off, err)
		}
		if wantN > 0 && !bytes.Equal(p[:n], want[c.off:c.off+wantN]) {
			return fmt.Errorf("ReadAt(len %d, off %d): wrong bytes", c.n, c.off)
		}
	}
	if _, err := ra.ReadAt(make([]byte, 4), -1); err == nil || errors.Is(err, io.EOF) {
		return fmt.Errorf("ReadAt at -1: %v, want a non-EOF error", err)
	}
	return nil
}
