package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// daemonEnv marks the detached child; daemonReadyFD is the pipe it reports
// "mounted" (or the error) on, so the parent exits only once the mount is
// usable, as FUSE tools do.
const (
	daemonEnv     = "CARGOHOLD_FS_DAEMON"
	daemonReadyFD = 3
)

// daemonize re-runs this command detached (Go cannot fork) and waits for
// the child to say the mount is up.
func daemonize(stateDir string) error {
	logPath := filepath.Join(stateDir, logName)
	logf, err := openLog(stateDir)
	if err != nil {
		return fmt.Errorf("detach: %w", err)
	}
	defer logf.Close()
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("detach: %w", err)
	}
	defer r.Close()
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("detach: %w", err)
	}
	cmd := exec.Command(exe, os.Args[1:]...)
	cmd.Env = append(os.Environ(), daemonEnv+"=1")
	cmd.ExtraFiles = []*os.File{w} // fd 3
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		w.Close()
		return fmt.Errorf("detach: %w", err)
	}
	w.Close()
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(r).ReadString('\n')
		line <- strings.TrimSpace(s)
	}()
	select {
	case s := <-line:
		if s == "ok" {
			fmt.Fprintf(os.Stderr, "cargohold-fs: mounted (pid %d, log %s)\n", cmd.Process.Pid, logPath)
			return cmd.Process.Release()
		}
		cmd.Wait()
		if s == "" {
			return errors.New("mount process exited before mounting")
		}
		return errors.New(s)
	case <-time.After(2 * time.Minute):
		cmd.Process.Kill()
		return errors.New("mount process did not report within 2m")
	}
}

// notifyParent tells a waiting parent how the mount went.
func notifyParent(mountErr error) {
	if os.Getenv(daemonEnv) == "" {
		return
	}
	f := os.NewFile(daemonReadyFD, "ready")
	if f == nil {
		return
	}
	defer f.Close()
	if mountErr != nil {
		// One line: the parent reads up to the first newline (go-fuse ends
		// some messages with one).
		fmt.Fprintln(f, strings.Join(strings.Fields(mountErr.Error()), " "))
		return
	}
	fmt.Fprintln(f, "ok")
}
