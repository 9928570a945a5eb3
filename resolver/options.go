package resolver

import (
	"log/slog"
	"net/http"
	"os"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"cargohold/internal/userdir"
)

// Defaults for Options fields left zero.
const (
	DefaultTimeout        = 30 * time.Second
	DefaultRetries        = 2
	DefaultBackoff        = 200 * time.Millisecond
	DefaultWholeBlobLimit = 64 << 20
	DefaultLayerIndexes   = 8
	maxBackoff            = 5 * time.Second
)

// Options configure registry and store access. The zero value is usable;
// every field documents its default.
type Options struct {
	// Store is the local OCI image layout searched before the registry and
	// written by Save. Default DefaultStore().
	Store string
	// PlainHTTP allows plain HTTP to registries that are not loopback
	// (name.Insecure), without credentials. Default false: plain HTTP only
	// to loopback and localhost registries (credentials included); an RFC
	// 1918 address gets https only, although ggcr would fall back.
	PlainHTTP bool
	// Keychain resolves registry credentials. Default authn.DefaultKeychain
	// (docker/podman config files).
	Keychain authn.Keychain
	// Timeout bounds each registry request: its answer must come within
	// Timeout, and its body must never go Timeout without a byte (ErrStalled);
	// a long body on a slow link is fine while it moves. It also bounds the
	// auth handshake. It is not a deadline for callers: their ctx is (a FUSE
	// lookup's, say). Default DefaultTimeout.
	Timeout time.Duration
	// Retries is how often a failed ranged GET is retried. Default
	// DefaultRetries; negative: none.
	Retries int
	// Backoff is the wait before the first retry, doubled each retry up to
	// 5s. Default DefaultBackoff.
	Backoff time.Duration
	// WholeBlobLimit: when a registry ignores Range and answers 200 with the
	// whole blob, a blob up to this size is kept in memory (digest-checked)
	// so later reads need no request. Default DefaultWholeBlobLimit;
	// negative disables.
	WholeBlobLimit int64
	// LayerIndexes is how many layer indexes a fetch.Engine keeps in
	// memory, the most recently used ones (a 2,000-KEY layer's takes about
	// 6 MB); the others are reloaded from its disk cache when needed,
	// without a request. Default DefaultLayerIndexes; negative: none.
	LayerIndexes int
	// Progress, when set, receives byte progress of Stream reads and of
	// Push. It is called on the reading goroutine and must be quick.
	// Default none.
	Progress func(v1.Update)
	// Logger receives retries and registry quirks. Default discards.
	Logger *slog.Logger
	// Transport is the base HTTP transport under authentication. Default a
	// clone of remote.DefaultTransport with ResponseHeaderTimeout = Timeout.
	Transport http.RoundTripper
	// Counters, when set, also receive the counts of every blob opened with
	// these options (a Resolver sets its own). Default none.
	Counters *Counters
}

// DefaultStore is the local image store:
// ${CARGOHOLD_STORE:-${XDG_DATA_HOME:-$HOME/.local/share}/cargohold/oci}
// (without $HOME, the per-user runtime dir's cargohold/oci). "" when the
// user has none of these: then there is no local store (references go to
// the registry; Save fails), never a shared or relative fallback.
func DefaultStore() string {
	if s := os.Getenv("CARGOHOLD_STORE"); s != "" {
		return s
	}
	d, err := userdir.Data("cargohold", "oci")
	if err != nil {
		return ""
	}
	return d
}

// withDefaults fills zero fields; New calls it, once. Negative counts
// stay negative ("none"), so that it is idempotent: options read back from
// Resolver.Options and given to New again mean the same.
func (o Options) withDefaults() Options {
	if o.Store == "" {
		o.Store = DefaultStore()
	}
	if o.Keychain == nil {
		o.Keychain = authn.DefaultKeychain
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Retries == 0 {
		o.Retries = DefaultRetries
	}
	if o.Backoff <= 0 {
		o.Backoff = DefaultBackoff
	}
	if o.WholeBlobLimit == 0 {
		o.WholeBlobLimit = DefaultWholeBlobLimit
	}
	if o.LayerIndexes == 0 {
		o.LayerIndexes = DefaultLayerIndexes
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Transport == nil {
		t := remote.DefaultTransport.(*http.Transport).Clone()
		t.ResponseHeaderTimeout = o.Timeout
		o.Transport = t
	}
	return o
}
