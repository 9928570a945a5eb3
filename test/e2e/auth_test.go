package e2e

import (
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"cargohold/test/cachetest"
	"cargohold/test/registry"
)

// dockerConfig writes a docker config.json holding user:pass for host and
// returns its dir (for DOCKER_CONFIG).
func dockerConfig(t *testing.T, host, user, pass string) string {
	t.Helper()
	dir := t.TempDir()
	auth := base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
	b, _ := json.Marshal(map[string]any{"auths": map[string]any{host: map[string]string{"auth": auth}}})
	if err := os.WriteFile(filepath.Join(dir, "config.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

// Low: a push with bad credentials says what the registry said (its
// error code and message), not a bare "HEAD ... 401".
func TestPushBadCredentials(t *testing.T) {
	reg := registry.StartAuth(t)
	src := cachetest.Testdata(t, "vector-add-cache")
	ref := reg.Addr + "/ml/auth:v1"
	bad := []string{"DOCKER_CONFIG=" + dockerConfig(t, reg.Addr, registry.AuthUser, "wrong"), "CARGOHOLD_STORE=" + t.TempDir()}
	r := run(t, bad, "cargohold", "-c", "-i", ref, "-d", src, "--push")
	if r.err == nil {
		t.Fatal("push with a wrong password succeeded")
	}
	t.Logf("bad credentials: %s", strings.TrimSpace(r.stderr))
	if !strings.Contains(r.stderr, "UNAUTHORIZED") || !strings.Contains(r.stderr, "authentication required") {
		t.Fatalf("want the registry's error (UNAUTHORIZED: authentication required), got:\n%s", r.stderr)
	}
	good := []string{"DOCKER_CONFIG=" + dockerConfig(t, reg.Addr, registry.AuthUser, registry.AuthPassword), "CARGOHOLD_STORE=" + t.TempDir()}
	must(t, good, "cargohold", "-c", "-i", ref, "-d", src, "--push")
}
