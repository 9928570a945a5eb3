package resolver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// registryBlob pushes a one-layer image to tr and opens its layer through a
// Resolver, returning the blob, its bytes and the resolver.
func registryBlob(t *testing.T, tr *testRegistry, opts Options) (*RegistryBlob, []byte, *Resolver) {
	t.Helper()
	img := testImage(t, 20000, 1, nil)
	ref := tr.host + "/cache/blob:v1"
	pushImage(t, ref, img, opts)
	res := New(opts)
	im, err := res.Fetch(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	b, err := res.Blob(context.Background(), im.LayerRef(0))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b.(*RegistryBlob), layerBytes(t, img, 0), res
}

func TestRegistryBlobRanges(t *testing.T) {
	tr := newTestRegistry(t, nil)
	b, want, res := registryBlob(t, tr, testOptions(t))
	if b.Size() != int64(len(want)) {
		t.Fatalf("Size = %d, want %d", b.Size(), len(want))
	}
	if err := checkReaderAt(b, want); err != nil {
		t.Fatal(err)
	}

	// Exactly one request and exactly the bytes asked for, per read.
	before := tr.blobGets.Load()
	c0 := b.Counters().Requests()
	bytes0 := b.Counters().Bytes()
	p := make([]byte, 1000)
	if n, err := b.ReadAt(p, 5000); n != 1000 || err != nil {
		t.Fatalf("ReadAt = %d, %v", n, err)
	}
	if !bytes.Equal(p, want[5000:6000]) {
		t.Fatal("wrong bytes")
	}
	if got := b.Counters().Requests() - c0; got != 1 {
		t.Fatalf("requests = %d, want 1", got)
	}
	if got := tr.blobGets.Load() - before; got != 1 {
		t.Fatalf("registry saw %d blob GETs, want 1", got)
	}
	if got := b.Counters().Bytes() - bytes0; got != 1000 {
		t.Fatalf("bytes = %d, want 1000", got)
	}
	if b.Counters().Errors() != 0 || b.Counters().Retries() != 0 {
		t.Fatalf("errors %d retries %d, want 0", b.Counters().Errors(), b.Counters().Retries())
	}
	// The resolver's counters saw the same traffic.
	if res.Counters().Requests() != b.Counters().Requests() {
		t.Fatalf("resolver requests %d != blob requests %d", res.Counters().Requests(), b.Counters().Requests())
	}
	// Reads past the end and empty reads send nothing.
	c1 := b.Counters().Requests()
	b.ReadAt(make([]byte, 10), b.Size())
	b.ReadAt(nil, 0)
	b.ReadAt(make([]byte, 10), -3)
	if got := b.Counters().Requests(); got != c1 {
		t.Fatalf("out-of-range reads sent %d requests", got-c1)
	}
}

func TestRegistryBlobParallel(t *testing.T) {
	tr := newTestRegistry(t, nil)
	b, want, _ := registryBlob(t, tr, testOptions(t))
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			for range 20 {
				off := rng.Int64N(int64(len(want)))
				p := make([]byte, 1+rng.IntN(3000))
				n, err := b.ReadAt(p, off)
				if err != nil && !(errors.Is(err, io.EOF) && off+int64(len(p)) > int64(len(want))) {
					errs <- err
					return
				}
				if !bytes.Equal(p[:n], want[off:off+int64(n)]) {
					errs <- fmt.Errorf("wrong bytes at %d", off)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if got := b.Counters().Requests(); got != 8*20 {
		t.Fatalf("requests = %d, want %d", got, 8*20)
	}
}

// A registry that ignores Range answers 200 with the whole blob.
func TestRegistryBlobIgnoresRange(t *testing.T) {
	strip := func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			r.Header.Del("Range")
			h.ServeHTTP(w, r)
		})
	}
	for _, limit := range []int64{0, -1} { // default (keep whole blob), disabled
		t.Run(fmt.Sprint("limit", limit), func(t *testing.T) {
			tr := newTestRegistry(t, strip)
			opts := testOptions(t)
			opts.WholeBlobLimit = limit
			b, want, _ := registryBlob(t, tr, opts)
			for _, off := range []int64{100, 7, int64(len(want)) - 50} {
				p := make([]byte, 50)
				if n, err := b.ReadAt(p, off); n != 50 || err != nil {
					t.Fatalf("ReadAt(%d) = %d, %v", off, n, err)
				}
				if !bytes.Equal(p, want[off:off+50]) {
					t.Fatalf("wrong bytes at %d", off)
				}
			}
			wantReq := int64(3)
			if limit == 0 {
				wantReq = 1 // kept after the first answer
			}
			if got := b.Counters().Requests(); got != wantReq {
				t.Fatalf("requests = %d, want %d", got, wantReq)
			}
		})
	}
}

// rewriteWriter lets a middleware change a blob response.
type rewriteWriter struct {
	http.ResponseWriter
	header func(http.Header)
	limit  int // bytes of body to pass; <0 all
	n      int
}

func (w *rewriteWriter) WriteHeader(code int) {
	if w.header != nil {
		w.header(w.Header())
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *rewriteWriter) Write(p []byte) (int, error) {
	if w.limit >= 0 {
		keep := max(0, min(len(p), w.limit-w.n))
		w.n += keep
		if _, err := w.ResponseWriter.Write(p[:keep]); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	return w.ResponseWriter.Write(p)
}

func blobRewrite(header func(http.Header), limit int) func(http.Handler) http.Handler {
	return func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if isBlobGet(r) && r.Header.Get("Range") != "" {
				w = &rewriteWriter{ResponseWriter: w, header: header, limit: limit}
			}
			h.ServeHTTP(w, r)
		})
	}
}

func TestRegistryBlobWrongContentRange(t *testing.T) {
	shift := func(h http.Header) {
		var a, z, size int64
		fmt.Sscanf(h.Get("Content-Range"), "bytes %d-%d/%d", &a, &z, &size)
		h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", a+1, z+1, size))
	}
	tr := newTestRegistry(t, blobRewrite(shift, -1))
	b, _, _ := registryBlob(t, tr, testOptions(t))
	n, err := b.ReadAt(make([]byte, 100), 10)
	if n != 0 || !errors.Is(err, ErrBadResponse) {
		t.Fatalf("ReadAt = %d, %v; want ErrBadResponse", n, err)
	}
	if !strings.Contains(err.Error(), "range [10,110)") {
		t.Fatalf("error does not name the range: %v", err)
	}
	if got := b.Counters().Requests(); got != 1 {
		t.Fatalf("requests = %d, want 1 (protocol errors are not retried)", got)
	}
}

func TestRegistryBlobShortBody(t *testing.T) {
	tr := newTestRegistry(t, blobRewrite(nil, 10))
	opts := testOptions(t)
	opts.Retries = 2
	b, _, _ := registryBlob(t, tr, opts)
	n, err := b.ReadAt(make([]byte, 100), 10)
	if n != 0 || !errors.Is(err, ErrShortBody) {
		t.Fatalf("ReadAt = %d, %v; want ErrShortBody", n, err)
	}
	if got := b.Counters().Requests(); got != 3 {
		t.Fatalf("requests = %d, want 3 (short bodies are retried)", got)
	}
	if got := b.Counters().Errors(); got != 3 {
		t.Fatalf("errors = %d, want 3", got)
	}
}

// Retries < 0 means none, however often the options pass through
// defaulting (New, then the blob; or Resolver.Options given to New again).
func TestRegistryBlobNoRetries(t *testing.T) {
	var fail atomic.Bool
	mw := func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if isBlobGet(r) && fail.Load() {
				http.Error(w, "busy", http.StatusServiceUnavailable)
				return
			}
			h.ServeHTTP(w, r)
		})
	}
	tr := newTestRegistry(t, mw)
	opts := testOptions(t)
	opts.Retries = -1
	b, _, res := registryBlob(t, tr, opts)
	if got := res.Options().Retries; got >= 0 {
		t.Fatalf("Options().Retries = %d after defaulting, want negative (none)", got)
	}
	if got := New(res.Options()).Options().Retries; got >= 0 {
		t.Fatalf("Retries = %d after defaulting twice, want negative (none)", got)
	}
	fail.Store(true)
	if _, err := b.ReadAt(make([]byte, 64), 0); err == nil {
		t.Fatal("ReadAt against a failing registry: no error")
	}
	if c := b.Counters(); c.Requests() != 1 || c.Retries() != 0 {
		t.Fatalf("Retries -1: %d requests, %d retries; want 1 and 0", c.Requests(), c.Retries())
	}
}

func TestRegistryBlobRetries5xx(t *testing.T) {
	var fail atomic.Int64
	mw := func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if isBlobGet(r) && fail.Add(-1) >= 0 {
				code := http.StatusServiceUnavailable
				if fail.Load() == 0 {
					code = http.StatusTooManyRequests
				}
				http.Error(w, "busy", code)
				return
			}
			h.ServeHTTP(w, r)
		})
	}
	tr := newTestRegistry(t, mw)
	opts := testOptions(t)
	opts.Retries = 3
	b, want, _ := registryBlob(t, tr, opts)
	fail.Store(2)
	p := make([]byte, 64)
	if n, err := b.ReadAt(p, 256); n != 64 || err != nil {
		t.Fatalf("ReadAt = %d, %v", n, err)
	}
	if !bytes.Equal(p, want[256:320]) {
		t.Fatal("wrong bytes")
	}
	c := b.Counters()
	if c.Requests() != 3 || c.Retries() != 2 || c.Errors() != 2 {
		t.Fatalf("requests %d retries %d errors %d; want 3 2 2", c.Requests(), c.Retries(), c.Errors())
	}

	// More failures than retries: the last status comes back.
	fail.Store(10)
	_, err := b.ReadAt(p, 0)
	if err == nil || !strings.Contains(err.Error(), "after 4 attempts") {
		t.Fatalf("err = %v; want failure after 4 attempts", err)
	}
}

func TestRegistryBlobNotFoundNotRetried(t *testing.T) {
	tr := newTestRegistry(t, nil)
	opts := testOptions(t)
	res := New(opts)
	repo, _ := name.NewRepository(tr.host + "/cache/none")
	rt, err := res.Transport(context.Background(), repo)
	if err != nil {
		t.Fatal(err)
	}
	d := v1.Descriptor{Digest: v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("ab", 32)}, Size: 100}
	b, err := newRegistryBlob(context.Background(), rt, repo, d, res.Options())
	if err != nil {
		t.Fatal(err)
	}
	_, err = b.ReadAt(make([]byte, 10), 0)
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("err = %v, want ErrNotFound", err)
	}
	if got := b.Counters().Requests(); got != 1 {
		t.Fatalf("requests = %d, want 1", got)
	}
}

// stalledServer accepts connections and never answers.
func stalledServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String()
}

func TestRegistryBlobStalledServer(t *testing.T) {
	host := stalledServer(t)
	repo, err := name.NewRepository(host + "/cache/stall")
	if err != nil {
		t.Fatal(err)
	}
	d := v1.Descriptor{Digest: v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("cd", 32)}, Size: 1000}

	t.Run("per-request timeout", func(t *testing.T) {
		opts := testOptions(t)
		opts.Timeout = 200 * time.Millisecond
		opts.Retries = 1
		b, err := newRegistryBlob(context.Background(), http.DefaultTransport, repo, d, opts.withDefaults())
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		_, err = b.ReadAt(make([]byte, 10), 0)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v, want a deadline error", err)
		}
		// Two attempts of 200ms each; a hang would run into the test timeout.
		if el := time.Since(start); el > 3*time.Second {
			t.Fatalf("ReadAt took %v", el)
		}
		if got := b.Counters().Requests(); got != 2 {
			t.Fatalf("requests = %d, want 2", got)
		}
	})
	t.Run("caller deadline", func(t *testing.T) {
		opts := testOptions(t)
		opts.Timeout = time.Hour
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		b, err := newRegistryBlob(ctx, http.DefaultTransport, repo, d, opts.withDefaults())
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		_, err = b.ReadAt(make([]byte, 10), 0)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v, want a deadline error", err)
		}
		if el := time.Since(start); el > 3*time.Second {
			t.Fatalf("ReadAt took %v", el)
		}
		if got := b.Counters().Requests(); got != 1 {
			t.Fatalf("requests = %d, want 1 (no retry once the caller's ctx is done)", got)
		}
	})
}

func TestRegistryBlobBadDescriptor(t *testing.T) {
	repo, _ := name.NewRepository("localhost:5000/x")
	if _, err := newRegistryBlob(context.Background(), http.DefaultTransport, repo, v1.Descriptor{Size: 10}, Options{}); err == nil {
		t.Fatal("no error for a descriptor without digest")
	}
	d := v1.Descriptor{Digest: v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("ab", 32)}, Size: -1}
	if _, err := newRegistryBlob(context.Background(), http.DefaultTransport, repo, d, Options{}); err == nil {
		t.Fatal("no error for unknown size")
	}
}

func TestCheckContentRange(t *testing.T) {
	for _, c := range []struct {
		h  string
		ok bool
	}{
		{"bytes 10-19/100", true},
		{"bytes 10-19/*", true},
		{"bytes 10-19/99", false},
		{"bytes 10-20/100", false},
		{"bytes 11-19/100", false},
		{"bytes 10-19", false},
		{"10-19/100", false},
		{"", false},
		{"bytes x-19/100", false},
	} {
		err := checkContentRange(c.h, 10, 19, 100)
		if (err == nil) != c.ok {
			t.Errorf("checkContentRange(%q) = %v, want ok=%v", c.h, err, c.ok)
		}
	}
}

func TestCheckRedirect(t *testing.T) {
	for _, c := range []struct {
		from, to string
		ok       bool
	}{
		{"127.0.0.1:5000", "127.0.0.1:9000", true},
		{"127.0.0.1:5000", "localhost:9000", true},
		{"10.0.0.5", "10.0.0.6", true},
		{"localhost:5000", "192.168.1.2", true},
		{"registry.example.com", "storage.example.com", true},
		{"registry.example.com", "10.0.0.6", false},
		{"registry.example.com", "127.0.0.1", false},
		{"127.0.0.1:5000", "169.254.169.254", false},
		{"10.0.0.5", "[fe80::1]", false},
	} {
		via := []*http.Request{{URL: mustURL(t, "http://"+c.from+"/v2/x/blobs/sha256:0")}}
		err := checkRedirect(&http.Request{URL: mustURL(t, "http://"+c.to+"/blob")}, via)
		if (err == nil) != c.ok {
			t.Errorf("redirect %s -> %s: %v, want ok=%v", c.from, c.to, err, c.ok)
		}
	}
}

func mustURL(t *testing.T, s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}
