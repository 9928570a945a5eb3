package registry

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// get returns the status of GET url, or the error of trying.
func get(t *testing.T, url string) (int, error) {
	t.Helper()
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// push writes a small random image to ref and returns it.
func push(t *testing.T, ref string) v1.Image {
	t.Helper()
	img, err := random.Image(1024, 2)
	if err != nil {
		t.Fatal(err)
	}
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img, remote.WithContext(t.Context())); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	return img
}

// remoteDigest returns the manifest digest of ref as the registry has it.
func remoteDigest(t *testing.T, ref string) (v1.Hash, error) {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	d, err := remote.Head(r, remote.WithContext(t.Context()))
	if err != nil {
		return v1.Hash{}, err
	}
	return d.Digest, nil
}

func TestStartServesV2(t *testing.T) {
	r := Start(t)
	if !strings.HasPrefix(r.Addr, "127.0.0.1:") || r.URL != "http://"+r.Addr {
		t.Fatalf("Addr %q URL %q", r.Addr, r.URL)
	}
	code, err := get(t, r.URL+"/v2/")
	if err != nil || code != http.StatusOK {
		t.Fatalf("GET /v2/ = %d, %v; want 200", code, err)
	}
	if !r.Running() {
		t.Fatal("Running() = false for a started registry")
	}
}

func TestPushSkopeoStopRestart(t *testing.T) {
	r := Start(t)
	ref := r.Ref("test/img:v1")
	img := push(t, ref)
	want, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}

	var info struct{ Digest string }
	out := Skopeo(t, "inspect", "--tls-verify=false", "docker://"+ref)
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatalf("skopeo inspect output: %v\n%s", err, out)
	}
	if info.Digest != want.String() {
		t.Fatalf("skopeo sees digest %s, pushed %s", info.Digest, want)
	}

	if err := r.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := get(t, r.URL+"/v2/"); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("GET after Stop: %v; want connection refused", err)
	}
	if err := r.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	if r.Running() {
		t.Fatal("Running() = true after Stop")
	}

	if err := r.Restart(); err != nil {
		t.Fatal(err)
	}
	got, err := remoteDigest(t, ref)
	if err != nil {
		t.Fatalf("after Restart: %v", err)
	}
	if got != want {
		t.Fatalf("after Restart digest %s, want %s", got, want)
	}
}

func TestStartProcessClose(t *testing.T) {
	if _, err := findRegistry(); err != nil {
		missing(t, "docker-registry", registryHint, err)
	}
	r, err := StartProcess(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if code, err := get(t, r.URL+"/v2/"); err != nil || code != http.StatusOK {
		r.Close()
		t.Fatalf("GET /v2/ = %d, %v", code, err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := get(t, r.URL+"/v2/"); err == nil {
		t.Fatal("registry still answers after Close")
	}
	if !strings.Contains(r.LogTail(1<<20), "listening on "+r.Addr) {
		t.Fatalf("log lacks the listen line:\n%s", r.LogTail(4096))
	}
}

func TestStartProcessMissingBinary(t *testing.T) {
	t.Setenv(BinaryEnv, "/nonexistent/docker-registry")
	r, err := StartProcess(t.TempDir())
	if !errors.Is(err, ErrNotInstalled) {
		if r != nil {
			r.Close()
		}
		t.Fatalf("StartProcess with a missing binary: %v; want ErrNotInstalled", err)
	}
}

func TestRunSkopeoError(t *testing.T) {
	r := Start(t)
	if _, err := findSkopeo(); err != nil {
		missing(t, "skopeo", skopeoHint, err)
	}
	_, err := RunSkopeo(t.Context(), "inspect", "--tls-verify=false", "docker://"+r.Ref("absent/img:none"))
	var se *SkopeoError
	if !errors.As(err, &se) || se.Stderr == "" {
		t.Fatalf("inspect of a missing image: %v; want *SkopeoError with stderr", err)
	}
}

// fakeTB records Skipf and Fatalf and ends the goroutine as testing does.
type fakeTB struct {
	testing.TB
	skipped, failed bool
	msg             string
}

func (f *fakeTB) Helper() {}

func (f *fakeTB) Skipf(format string, args ...any) {
	f.skipped, f.msg = true, format
	runtime.Goexit()
}

func (f *fakeTB) Fatalf(format string, args ...any) {
	f.failed, f.msg = true, format
	runtime.Goexit()
}

func TestMissingSkipsOrFailsInCI(t *testing.T) {
	for _, tc := range []struct {
		ci       string
		wantFail bool
	}{{"", false}, {"false", false}, {"true", true}, {"1", true}} {
		t.Run("CI="+tc.ci, func(t *testing.T) {
			t.Setenv("CI", tc.ci)
			f := &fakeTB{TB: t}
			done := make(chan struct{})
			go func() {
				defer close(done)
				missing(f, "docker-registry", registryHint, ErrNotInstalled)
			}()
			<-done
			if f.failed != tc.wantFail || f.skipped == tc.wantFail {
				t.Fatalf("failed=%v skipped=%v; want failed=%v", f.failed, f.skipped, tc.wantFail)
			}
			if f.skipped && !strings.Contains(f.msg, "NOT INSTALLED") {
				t.Fatalf("skip message not loud: %q", f.msg)
			}
		})
	}
}
