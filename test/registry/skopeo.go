package registry

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// skopeoTimeout bounds one skopeo run from Skopeo.
const skopeoTimeout = 2 * time.Minute

// SkopeoError is a skopeo run that failed; Stderr is what it printed.
type SkopeoError struct {
	Args   []string
	Stderr string
	Err    error
}

func (e *SkopeoError) Error() string {
	return fmt.Sprintf("skopeo %s: %v: %s", strings.Join(e.Args, " "), e.Err, strings.TrimSpace(e.Stderr))
}

func (e *SkopeoError) Unwrap() error { return e.Err }

// RunSkopeo runs skopeo with args and returns its standard output. A
// missing binary gives an error wrapping ErrNotInstalled, a failed run a
// *SkopeoError.
func RunSkopeo(ctx context.Context, args ...string) ([]byte, error) {
	bin, err := findSkopeo()
	if err != nil {
		return nil, err
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), &SkopeoError{Args: args, Stderr: stderr.String(), Err: err}
	}
	return stdout.Bytes(), nil
}

// Skopeo runs skopeo with args, for example
// "inspect", "--tls-verify=false", "docker://"+r.Ref("repo:tag"),
// and returns its standard output. It fails tb when skopeo fails, and skips
// tb when skopeo is missing (fails it when CI=true).
func Skopeo(tb testing.TB, args ...string) []byte {
	tb.Helper()
	if _, err := findSkopeo(); err != nil {
		missing(tb, "skopeo", skopeoHint, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), skopeoTimeout)
	defer cancel()
	out, err := RunSkopeo(ctx, args...)
	if err != nil {
		tb.Fatal(err)
	}
	return out
}
