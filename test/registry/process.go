package registry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	// readyTimeout bounds the wait for GET /v2/ to answer 200; the
	// registry is usually up in tens of milliseconds.
	readyTimeout = 30 * time.Second
	// stopGrace is how long Stop waits after SIGTERM before SIGKILL.
	stopGrace = 10 * time.Second
	// portTries is how often StartProcess picks a new port when the one it
	// chose was taken between choosing and binding.
	portTries = 3
)

// Registry is one registry process serving from Dir.
//
// Layout of Dir: config.yml, registry.log (stdout and stderr of every run,
// appended), storage/ (the filesystem driver's root).
type Registry struct {
	// Addr is "127.0.0.1:port", the host part of image references.
	Addr string
	// URL is "http://127.0.0.1:port".
	URL string
	// Dir holds the config, the log and the storage.
	Dir string

	// Immutable after construction.
	bin, config, logPath string
	htpasswd             string // "" when the registry needs no login

	// mu guards the running process and serialises Stop and Restart.
	mu     sync.Mutex
	cmd    *exec.Cmd     // nil when stopped
	exited chan struct{} // closed when cmd has been reaped
}

// StartProcess starts a registry that keeps its config, log and storage in
// dir (created if needed) and returns once it answers GET /v2/ with 200.
// The caller must Close it. An error wraps ErrNotInstalled when the binary
// is missing.
func StartProcess(dir string) (*Registry, error) { return startProcess(dir, false) }

// StartProcessAuth is StartProcess with HTTP Basic authentication: every
// request needs AuthUser and AuthPassword.
func StartProcessAuth(dir string) (*Registry, error) { return startProcess(dir, true) }

func startProcess(dir string, auth bool) (*Registry, error) {
	bin, err := findRegistry()
	if err != nil {
		return nil, err
	}
	dir, err = filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	storage := filepath.Join(dir, "storage")
	if err := os.MkdirAll(storage, 0o755); err != nil {
		return nil, fmt.Errorf("registry: create storage: %w", err)
	}
	r := &Registry{
		Dir:     dir,
		bin:     bin,
		config:  filepath.Join(dir, "config.yml"),
		logPath: filepath.Join(dir, "registry.log"),
	}
	if auth {
		r.htpasswd = filepath.Join(dir, "htpasswd")
		if err := os.WriteFile(r.htpasswd, []byte(AuthUser+":"+authHash+"\n"), 0o600); err != nil {
			return nil, fmt.Errorf("registry: write htpasswd: %w", err)
		}
	}
	for try := 1; ; try++ {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		r.Addr = fmt.Sprintf("127.0.0.1:%d", port)
		r.URL = "http://" + r.Addr
		if err := writeConfig(r.config, storage, r.Addr, r.htpasswd); err != nil {
			return nil, err
		}
		err = r.start()
		if err == nil {
			return r, nil
		}
		// Someone took the port between freePort and the registry's bind.
		if try < portTries && strings.Contains(r.LogTail(4096), "address already in use") {
			continue
		}
		return nil, err
	}
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("registry: pick port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// start runs the process and waits until it is ready. The caller holds no
// lock; start is called only while no process runs.
func (r *Registry) start() error {
	logf, err := os.OpenFile(r.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("registry: open log: %w", err)
	}
	cmd := exec.Command(r.bin, "serve", r.config)
	cmd.Dir = r.Dir
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.Env = environ()
	// If the test binary dies without cleanup the registry dies with it
	// rather than holding the port and the temp dir.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	err = cmd.Start()
	// The child has its own copy of the descriptor.
	logf.Close()
	if err != nil {
		return fmt.Errorf("registry: start %s: %w", r.bin, err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	r.mu.Lock()
	r.cmd, r.exited = cmd, exited
	r.mu.Unlock()

	if err := r.waitReady(exited); err != nil {
		r.Stop()
		return err
	}
	return nil
}

// waitReady polls GET /v2/ until it answers 200, the process exits or
// readyTimeout passes.
func (r *Registry) waitReady(exited <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	client := &http.Client{Timeout: time.Second}
	defer client.CloseIdleConnections()
	var last error
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		last = ping(ctx, client, r.URL+"/v2/", r.htpasswd != "")
		if last == nil {
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("registry: exited before ready (%s): log:\n%s", r.Addr, r.LogTail(8192))
		case <-ctx.Done():
			return fmt.Errorf("registry: not ready after %v at %s: %v; log:\n%s", readyTimeout, r.URL, last, r.LogTail(8192))
		case <-tick.C:
		}
	}
}

// ping returns nil when url answers 200 (or 401, when auth says the
// registry wants a login).
func ping(ctx context.Context, client *http.Client, url string, auth bool) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK && !(auth && resp.StatusCode == http.StatusUnauthorized) {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}

// environ is the test's environment less REGISTRY_* variables, which
// distribution reads as config overrides.
func environ() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "REGISTRY_") {
			env = append(env, kv)
		}
	}
	return env
}

// Stop terminates the process (SIGTERM, then SIGKILL after a grace period)
// and waits until it is reaped. Stopping a stopped registry does nothing.
// The storage stays; Restart serves it again.
func (r *Registry) Stop() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd == nil {
		return nil
	}
	cmd, exited := r.cmd, r.exited
	r.cmd, r.exited = nil, nil
	// An error means the process has already exited; Wait has reaped it
	// or is about to.
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
		return nil
	case <-time.After(stopGrace):
	}
	cmd.Process.Kill()
	<-exited
	return fmt.Errorf("registry: %s ignored SIGTERM for %v; killed", r.Addr, stopGrace)
}

// Close stops the registry; it is Stop under the io.Closer name.
func (r *Registry) Close() error { return r.Stop() }

// Restart stops the registry if it runs and starts it again on the same
// address and storage. It fails if the port was taken meanwhile.
func (r *Registry) Restart() error {
	if err := r.Stop(); err != nil {
		return err
	}
	return r.start()
}

// Running reports whether a process is started and not yet stopped. A
// process that crashed on its own still counts until Stop.
func (r *Registry) Running() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cmd != nil
}

// Ref returns the image reference for repoTag ("repo:tag" or
// "repo@sha256:...") on this registry.
func (r *Registry) Ref(repoTag string) string {
	return r.Addr + "/" + repoTag
}

// LogPath returns the path of the registry's log file.
func (r *Registry) LogPath() string { return r.logPath }

// LogTail returns at most the last n bytes of the registry's log, or a
// note saying why it could not be read.
func (r *Registry) LogTail(n int64) string {
	f, err := os.Open(r.logPath)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Sprintf("(log: %v)", err)
	}
	off := max(fi.Size()-n, 0)
	buf := make([]byte, fi.Size()-off)
	m, err := f.ReadAt(buf, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Sprintf("(log: %v)", err)
	}
	return string(buf[:m])
}
