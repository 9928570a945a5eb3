package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"cargohold/fs"
	"cargohold/test/replay"
)

// fsProc is one cargohold-fs running in the foreground, its log in a file.
type fsProc struct {
	mnt, state, log string
	start           time.Time // just before the process started

	cmd    *exec.Cmd
	exited chan struct{} // closed once cmd has been reaped; err set before
	err    error
}

// startFS starts cargohold-fs on dir/mnt with its state in dir/state, and
// args added to its flags.
func startFS(bin, ref, dir string, args ...string) (*fsProc, error) {
	p := &fsProc{mnt: filepath.Join(dir, "mnt"), state: filepath.Join(dir, "state"),
		log: filepath.Join(dir, "cargohold-fs.log"), exited: make(chan struct{})}
	if err := os.MkdirAll(p.mnt, 0o755); err != nil {
		return nil, err
	}
	lf, err := os.Create(p.log)
	if err != nil {
		return nil, err
	}
	all := append([]string{"-f", "--state-dir", p.state, "-i", ref, "--plain-http", "--gpu", benchGPU}, args...)
	p.cmd = exec.Command(filepath.Join(bin, "cargohold-fs"), append(all, p.mnt)...)
	p.cmd.Stdout, p.cmd.Stderr = lf, lf
	p.start = time.Now()
	if err := p.cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start cargohold-fs: %w", err)
	}
	go func() {
		p.err = p.cmd.Wait()
		lf.Close()
		close(p.exited)
	}()
	return p, nil
}

// firstHit waits for the mount to appear, then replays a hit of key until
// it succeeds. A lookup before the index is loaded waits for it inside
// the mount, so a retry means the mount answered ENOENT.
func (p *fsProc) firstHit(key string) (retries int, err error) {
	deadline := time.Now().Add(30 * time.Second)
	for !isMounted(p.mnt) {
		select {
		case <-p.exited:
			return 0, fmt.Errorf("cargohold-fs exited: %v\n%s", p.err, p.logTail())
		default:
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("%s not mounted within 30s\n%s", p.mnt, p.logTail())
		}
		time.Sleep(time.Millisecond)
	}
	for {
		_, err := replay.Hit(p.mnt, key, "")
		if err == nil || !errors.Is(err, replay.ErrNotFound) || time.Now().After(deadline) {
			return retries, err
		}
		retries++
		time.Sleep(10 * time.Millisecond)
	}
}

// fsStatus is the part of <state>/status.json the bench reports.
type fsStatus struct {
	Updated time.Time `json:"updated"`
	Hits    int64     `json:"hits"`
	Fetches int64     `json:"fetches"`
	Bytes   int64     `json:"bytes"`
	Errors  int64     `json:"errors"`
}

// statusAfter waits for a status.json written after t (the mount writes
// it once a second) and reads it.
func (p *fsProc) statusAfter(t time.Time) (fsStatus, error) {
	deadline := time.Now().Add(3 * time.Second)
	for {
		var s fsStatus
		b, err := os.ReadFile(filepath.Join(p.state, "status.json"))
		if err == nil {
			err = json.Unmarshal(b, &s)
		}
		if (err == nil && s.Updated.After(t)) || time.Now().After(deadline) {
			return s, err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop sends SIGTERM and waits for a clean exit and unmount; calling it
// again returns nil.
func (p *fsProc) stop() error {
	select {
	case <-p.exited:
		return nil
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(15 * time.Second):
		p.cmd.Process.Kill()
		<-p.exited
		return fmt.Errorf("cargohold-fs did not exit on SIGTERM\n%s", p.logTail())
	}
	if isMounted(p.mnt) {
		syscall.Unmount(p.mnt, syscall.MNT_DETACH)
		return fmt.Errorf("%s still mounted after cargohold-fs exited", p.mnt)
	}
	if p.err != nil {
		return fmt.Errorf("cargohold-fs: %w\n%s", p.err, p.logTail())
	}
	return nil
}

// logTail is the end of the process's log, for error messages.
func (p *fsProc) logTail() string {
	f, err := os.Open(p.log)
	if err != nil {
		return ""
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > 4096 {
		f.Seek(-4096, io.SeekEnd)
	}
	b, _ := io.ReadAll(f)
	return string(b)
}

func isMounted(mnt string) bool {
	_, ok := fs.MountType(mnt)
	return ok
}
