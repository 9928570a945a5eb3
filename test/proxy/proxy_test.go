package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"cargohold/test/registry"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// env is a registry, a proxy in front of it and a client transport of the
// test's own, so its connections can be closed when counting goroutines.
type env struct {
	reg *registry.Registry
	p   *Proxy
	tr  *http.Transport
}

func newEnv(t *testing.T) *env {
	t.Helper()
	reg := registry.Start(t)
	p := New(reg.URL)
	tr := &http.Transport{}
	t.Cleanup(func() {
		tr.CloseIdleConnections()
		if err := p.Close(); err != nil {
			t.Errorf("proxy Close: %v", err)
		}
	})
	return &env{reg: reg, p: p, tr: tr}
}

// ref parses repoTag on host.
func ref(t *testing.T, host, repoTag string) name.Reference {
	t.Helper()
	r, err := name.ParseReference(host+"/"+repoTag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// push writes a random image of two layers to repoTag through the proxy.
func (e *env) push(t *testing.T, repoTag string) v1.Image {
	t.Helper()
	img, err := random.Image(4096, 2)
	if err != nil {
		t.Fatal(err)
	}
	err = remote.Write(ref(t, e.p.Addr, repoTag), img, remote.WithTransport(e.tr), remote.WithContext(t.Context()))
	if err != nil {
		t.Fatalf("push through proxy: %v", err)
	}
	return img
}

// pull reads config and every layer of repoTag through the proxy; the
// first error comes back.
func (e *env) pull(ctx context.Context, t *testing.T, repoTag string) error {
	t.Helper()
	img, err := remote.Image(ref(t, e.p.Addr, repoTag), remote.WithTransport(e.tr), remote.WithContext(ctx))
	if err != nil {
		return err
	}
	if _, err := img.RawConfigFile(); err != nil {
		return err
	}
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	for _, l := range layers {
		if err := readLayer(l); err != nil {
			return err
		}
	}
	return nil
}

// readLayer reads l's compressed bytes to the end, where ggcr checks the
// digest.
func readLayer(l v1.Layer) error {
	rc, err := l.Compressed()
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, rc)
	if cerr := rc.Close(); err == nil {
		err = cerr
	}
	return err
}

// get sends GET url with hdr through the test's transport.
func (e *env) get(ctx context.Context, url string, hdr http.Header) (*http.Response, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, nil, err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := e.tr.RoundTrip(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, body, err
}

// blob returns the bytes of blob d straight from the registry.
func (e *env) blob(t *testing.T, repo string, d v1.Hash) []byte {
	t.Helper()
	resp, body, err := e.get(t.Context(), fmt.Sprintf("%s/v2/%s/blobs/%s", e.reg.URL, repo, d), nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET blob %s from registry: %v %v", d, resp, err)
	}
	return body
}

func layerDigests(t *testing.T, img v1.Image) []v1.Hash {
	t.Helper()
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	var ds []v1.Hash
	for _, l := range m.Layers {
		ds = append(ds, l.Digest)
	}
	return ds
}

func TestPushPullCounts(t *testing.T) {
	e := newEnv(t)
	img := e.push(t, "test/img:v1")

	isUploadPut := func(r Req) bool { return r.Method == http.MethodPut && strings.Contains(r.Path, "/blobs/uploads/") }
	// Two layers and a config; upload locations lead back to the proxy
	// only if the Host header was kept.
	if n := e.p.Count(isUploadPut); n != 3 {
		t.Fatalf("blob upload PUTs through proxy = %d, want 3; log %+v", n, e.p.Requests())
	}
	if n := e.p.Count(func(r Req) bool { return r.Method == http.MethodPut && r.IsManifest() }); n != 1 {
		t.Fatalf("manifest PUTs = %d, want 1", n)
	}

	e.p.Reset()
	if n := e.p.Count(nil); n != 0 {
		t.Fatalf("Count after Reset = %d", n)
	}
	if err := e.pull(t.Context(), t, "test/img:v1"); err != nil {
		t.Fatalf("pull through proxy: %v", err)
	}
	blobGet := func(r Req) bool { return r.Method == http.MethodGet && r.IsBlob() && r.Status == http.StatusOK }
	if n := e.p.Count(blobGet); n != 3 {
		t.Fatalf("blob GETs = %d, want 3; log %+v", n, e.p.Requests())
	}

	raw, err := img.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.RawConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	want := int64(len(raw) + len(cfg))
	for _, d := range layerDigests(t, img) {
		want += int64(len(e.blob(t, "test/img", d)))
	}
	var other int64
	for _, r := range e.p.Requests() {
		if !r.IsBlob() && !r.IsManifest() {
			other += r.Bytes // the /v2/ ping
		}
	}
	if got := e.p.BytesSent() - other; got != want {
		t.Fatalf("BytesSent for manifest+config+layers = %d, want %d; log %+v", got, want, e.p.Requests())
	}
}

func TestRangeForwarded(t *testing.T) {
	e := newEnv(t)
	img := e.push(t, "test/img:v1")
	d := layerDigests(t, img)[0]
	full := e.blob(t, "test/img", d)
	e.p.Reset()

	url := fmt.Sprintf("%s/v2/test/img/blobs/%s", e.p.URL, d)
	resp, body, err := e.get(t.Context(), url, http.Header{"Range": {"bytes=10-19"}})
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, full[10:20]) {
		t.Fatalf("ranged GET: %s, body %x, want 206 and %x", resp.Status, body, full[10:20])
	}
	reqs := e.p.Requests()
	if len(reqs) != 1 || reqs[0].Range != "bytes=10-19" || reqs[0].Status != 206 || reqs[0].Bytes != 10 {
		t.Fatalf("log %+v", reqs)
	}
}

func TestLatency(t *testing.T) {
	e := newEnv(t)
	const lat = 200 * time.Millisecond
	e.p.SetLatency(lat)
	start := time.Now()
	resp, _, err := e.get(t.Context(), e.p.URL+"/v2/", nil)
	elapsed := time.Since(start)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /v2/: %v %v", resp, err)
	}
	if elapsed < lat {
		t.Fatalf("GET took %v, want at least the latency %v", elapsed, lat)
	}
	if r := e.p.Requests()[0]; r.Duration < lat {
		t.Fatalf("logged duration %v < latency %v", r.Duration, lat)
	}
}

func TestFlipByte(t *testing.T) {
	e := newEnv(t)
	img := e.push(t, "test/img:v1")
	ds := layerDigests(t, img)
	full := e.blob(t, "test/img", ds[0])
	e.p.FlipByte("/blobs/"+ds[0].String(), 3)

	err := e.pull(t.Context(), t, "test/img:v1")
	if err == nil {
		t.Fatal("pull of a corrupted layer succeeded")
	}
	if !strings.Contains(err.Error(), ds[0].Hex) {
		t.Fatalf("pull error does not name the corrupted layer %s: %v", ds[0], err)
	}
	flipped := e.p.Count(func(r Req) bool { return r.Flipped })
	if flipped == 0 {
		t.Fatalf("no request logged as flipped: %+v", e.p.Requests())
	}

	// The offset counts from the start of a ranged body.
	url := fmt.Sprintf("%s/v2/test/img/blobs/%s", e.p.URL, ds[0])
	resp, body, err := e.get(t.Context(), url, http.Header{"Range": {"bytes=100-199"}})
	if err != nil || resp.StatusCode != http.StatusPartialContent {
		t.Fatalf("ranged GET: %v %v", resp, err)
	}
	want := bytes.Clone(full[100:200])
	want[3] ^= 0xff
	if !bytes.Equal(body, want) {
		t.Fatalf("ranged body %x, want %x", body, want)
	}

	// Other blobs pass untouched.
	if err := readLayerVia(t, e, ds[1]); err != nil {
		t.Fatalf("unmatched layer: %v", err)
	}
	if err := e.p.ClearFaults(); err != nil {
		t.Fatal(err)
	}
	if err := e.pull(t.Context(), t, "test/img:v1"); err != nil {
		t.Fatalf("pull after ClearFaults: %v", err)
	}
}

// readLayerVia reads layer d of test/img through the proxy.
func readLayerVia(t *testing.T, e *env, d v1.Hash) error {
	dref, err := name.NewDigest(e.p.Addr+"/test/img@"+d.String(), name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	l, err := remote.Layer(dref, remote.WithTransport(e.tr), remote.WithContext(t.Context()))
	if err != nil {
		return err
	}
	return readLayer(l)
}

func TestStall(t *testing.T) {
	e := newEnv(t)
	e.p.SetStall(true)
	const deadline = 300 * time.Millisecond
	ctx, cancel := context.WithTimeout(t.Context(), deadline)
	defer cancel()
	start := time.Now()
	_, _, err := e.get(ctx, e.p.URL+"/v2/", nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("stalled GET: %v; want deadline exceeded", err)
	}
	if el := time.Since(start); el > deadline+5*time.Second {
		t.Fatalf("stalled GET returned after %v, deadline %v", el, deadline)
	}
	// The abandoned request leaves the proxy, so the one below is the
	// only one pending.
	waitPending(t, e.p, 0)

	// A stalled request goes on when the stall ends.
	type result struct {
		status int
		err    error
	}
	ctx, cancel = context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	res := make(chan result, 1)
	go func() {
		resp, _, err := e.get(ctx, e.p.URL+"/v2/", nil)
		if err != nil {
			res <- result{err: err}
			return
		}
		res <- result{status: resp.StatusCode}
	}()
	waitPending(t, e.p, 1)
	select {
	case r := <-res:
		t.Fatalf("stalled request answered: %+v", r)
	default:
	}
	e.p.SetStall(false)
	if r := <-res; r.err != nil || r.status != http.StatusOK {
		t.Fatalf("released request: %+v", r)
	}
}

// waitPending waits until p has n pending requests.
func waitPending(t *testing.T, p *Proxy, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for p.Pending() != n {
		if time.Now().After(deadline) {
			t.Fatalf("pending = %d, want %d", p.Pending(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestStalledListener(t *testing.T) {
	addr := StalledListener(t)
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/v2/", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tr.RoundTrip(req); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("GET from stalled listener: %v; want deadline exceeded", err)
	}
}

func TestDown(t *testing.T) {
	e := newEnv(t)
	e.push(t, "test/img:v1")
	// Leaves a kept-alive connection that SetDown must drop.
	if resp, _, err := e.get(t.Context(), e.p.URL+"/v2/", nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET /v2/: %v %v", resp, err)
	}

	// A request in flight when the proxy goes down fails.
	e.p.SetStall(true)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	inflight := make(chan error, 1)
	go func() {
		_, _, err := e.get(ctx, e.p.URL+"/v2/", nil)
		inflight <- err
	}()
	waitPending(t, e.p, 1)
	if err := e.p.SetDown(true); err != nil {
		t.Fatal(err)
	}
	if err := <-inflight; err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("in-flight request across SetDown: %v; want a dropped connection", err)
	}
	e.p.SetStall(false)

	if _, _, err := e.get(t.Context(), e.p.URL+"/v2/", nil); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("GET while down: %v; want connection refused", err)
	}
	if err := e.pull(t.Context(), t, "test/img:v1"); err == nil {
		t.Fatal("pull while down succeeded")
	}

	if err := e.p.SetDown(false); err != nil {
		t.Fatal(err)
	}
	if err := e.pull(t.Context(), t, "test/img:v1"); err != nil {
		t.Fatalf("pull after SetDown(false): %v", err)
	}
}

func TestRedirectPassesThrough(t *testing.T) {
	// The filesystem-backed registry never redirects, so a plain server
	// stands in for one that does (as S3-backed registries do).
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/r/blobs/sha256:abc" {
			http.Redirect(w, r, "/storage/abc", http.StatusTemporaryRedirect)
			return
		}
		io.WriteString(w, "blob")
	}))
	defer target.Close()
	p := New(target.URL)
	defer p.Close()
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()

	resp, err := client.Get(p.URL + "/v2/r/blobs/sha256:abc")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "blob" || resp.Request.URL.Host != p.Addr {
		t.Fatalf("followed to %s, body %q", resp.Request.URL, body)
	}
	reqs := p.Requests()
	if len(reqs) != 2 || reqs[0].Status != http.StatusTemporaryRedirect || reqs[1].Path != "/storage/abc" {
		t.Fatalf("log %+v", reqs)
	}
}

func TestCloseLeavesNoGoroutines(t *testing.T) {
	reg := registry.Start(t)
	before := runtime.NumGoroutine()

	p := New(reg.URL)
	e := &env{reg: reg, p: p, tr: &http.Transport{}}
	e.push(t, "test/img:v1")
	if err := e.pull(t.Context(), t, "test/img:v1"); err != nil {
		t.Fatal(err)
	}
	p.SetLatency(time.Millisecond)
	if err := p.SetDown(true); err != nil {
		t.Fatal(err)
	}
	if err := p.SetDown(false); err != nil {
		t.Fatal(err)
	}
	// One stalled request abandoned by its client, one pending at Close.
	p.SetStall(true)
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	e.get(ctx, p.URL+"/v2/", nil)
	cancel()
	waitPending(t, p, 0)
	ctx, cancel = context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	pending := make(chan error, 1)
	go func() {
		_, _, err := e.get(ctx, p.URL+"/v2/", nil)
		pending <- err
	}()
	waitPending(t, p, 1)

	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-pending; err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("request pending at Close: %v; want a dropped connection", err)
	}
	if err := p.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	e.tr.CloseIdleConnections()

	// Client-side connection goroutines notice the closed sockets
	// asynchronously; give them a bounded while.
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("goroutines: %d before, %d after Close\n%s", before, runtime.NumGoroutine(), buf)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestListenBadTarget(t *testing.T) {
	for _, target := range []string{"", "127.0.0.1:5000", "ftp://x", "http://"} {
		if p, err := Listen(target); err == nil {
			p.Close()
			t.Errorf("Listen(%q) succeeded", target)
		}
	}
}

// SetRate paces bodies: 40 KiB at 80 KiB/s takes about half a second.
func TestSetRate(t *testing.T) {
	body := bytes.Repeat([]byte("x"), 40<<10)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(body) }))
	defer srv.Close()
	p := New(srv.URL)
	defer p.Close()
	p.SetRate(80 << 10)
	start := time.Now()
	resp, err := http.Get(p.URL + "/x")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	took := time.Since(start)
	if err != nil || !bytes.Equal(got, body) {
		t.Fatalf("body: %d bytes, %v", len(got), err)
	}
	if took < 400*time.Millisecond {
		t.Fatalf("40 KiB at 80 KiB/s took %v", took)
	}
	p.SetRate(0)
	start = time.Now()
	resp, _ = http.Get(p.URL + "/x")
	io.ReadAll(resp.Body)
	resp.Body.Close()
	if d := time.Since(start); d > took/2 {
		t.Fatalf("without a rate: %v (with: %v)", d, took)
	}
}

// SetStallBody sends the first n bytes, then hangs until the client goes.
func TestSetStallBody(t *testing.T) {
	body := bytes.Repeat([]byte("y"), 10000)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(body) }))
	defer srv.Close()
	p := New(srv.URL)
	defer p.Close()
	p.SetStallBody(100)
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, p.URL+"/x", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if len(got) != 100 || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %d bytes, %v; want 100 and a deadline", len(got), err)
	}
	p.SetStallBody(-1)
	resp, err = http.Get(p.URL + "/x")
	if err != nil {
		t.Fatal(err)
	}
	got, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if len(got) != len(body) {
		t.Fatalf("after the rule is removed: %d bytes", len(got))
	}
}
