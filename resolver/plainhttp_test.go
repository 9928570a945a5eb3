package resolver

import (
	"context"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"

	"cargohold/test/registry"
)

// privateHost is an RFC 1918 address that ggcr treats as "may be plain
// HTTP" (name.Registry.Scheme); wire dials it to the test registry.
const privateHost = "10.11.12.13"

// wire is the network under the resolver: it dials privateHost to the real
// registry on loopback and records every request that would leave the
// machine.
type wire struct {
	rt http.RoundTripper

	mu   sync.Mutex
	seen []wireReq
}

type wireReq struct {
	scheme, host string
	auth         bool // carried an Authorization header
}

func newWire(regAddr string) *wire {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	_, port, _ := net.SplitHostPort(regAddr)
	d := &net.Dialer{}
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if addr == privateHost+":"+port {
			addr = regAddr
		}
		return d.DialContext(ctx, network, addr)
	}
	return &wire{rt: tr}
}

func (w *wire) RoundTrip(r *http.Request) (*http.Response, error) {
	w.mu.Lock()
	w.seen = append(w.seen, wireReq{r.URL.Scheme, r.URL.Host, r.Header.Get("Authorization") != ""})
	w.mu.Unlock()
	return w.rt.RoundTrip(r)
}

// plain lists the plain-HTTP requests sent, and whether any carried
// credentials.
func (w *wire) plain() (n int, withAuth bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, r := range w.seen {
		if r.scheme == "http" {
			n++
			withAuth = withAuth || r.auth
		}
	}
	return n, withAuth
}

// basicKeychain hands out Basic credentials for every registry.
type basicKeychain struct{}

func (basicKeychain) Resolve(authn.Resource) (authn.Authenticator, error) {
	return &authn.Basic{Username: "alice", Password: "s3cret"}, nil
}

// Medium 9: a registry on a private (RFC 1918) address gets plain HTTP
// only with PlainHTTP, and never credentials over plain HTTP; loopback
// keeps working.
func TestPlainHTTPOnlyWhenAsked(t *testing.T) {
	reg := registry.Start(t)
	img := testImage(t, 2000, 1, nil)
	pushImage(t, reg.Ref("cache/p:v1"), img, testOptions(t))
	_, port, _ := net.SplitHostPort(reg.Addr)
	private := privateHost + ":" + port + "/cache/p:v1"

	fetch := func(ref string, plain bool, kc authn.Keychain) (*wire, error) {
		w := newWire(reg.Addr)
		o := testOptions(t)
		o.Transport, o.PlainHTTP, o.Keychain = w, plain, kc
		_, err := New(o).Fetch(context.Background(), ref)
		return w, err
	}

	t.Run("private, no --plain-http, credentials", func(t *testing.T) {
		w, err := fetch(private, false, basicKeychain{})
		if n, _ := w.plain(); n > 0 {
			t.Fatalf("%d plain-HTTP requests to %s without PlainHTTP", n, privateHost)
		}
		if err == nil || !strings.Contains(err.Error(), "--plain-http") {
			t.Fatalf("Fetch = %v, want a refusal naming --plain-http", err)
		}
	})
	t.Run("private, --plain-http, anonymous", func(t *testing.T) {
		if _, err := fetch(private, true, authn.NewMultiKeychain()); err != nil {
			t.Fatalf("Fetch with PlainHTTP and no credentials: %v", err)
		}
	})
	t.Run("private, --plain-http, credentials", func(t *testing.T) {
		w, err := fetch(private, true, basicKeychain{})
		if _, auth := w.plain(); auth {
			t.Fatal("credentials sent over plain HTTP to a private address")
		}
		if err == nil || !strings.Contains(err.Error(), "credentials") {
			t.Fatalf("Fetch = %v, want a refusal naming the credentials", err)
		}
	})
	t.Run("loopback, credentials", func(t *testing.T) {
		if _, err := fetch(reg.Ref("cache/p:v1"), false, basicKeychain{}); err != nil {
			t.Fatalf("loopback registry: %v", err)
		}
	})
}
