package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"

	"cargohold/fs"
)

// stderrMu serialises the swaps of os.Stderr (one mount at a time).
var stderrMu sync.Mutex

// withFusermountCause runs mount with os.Stderr pointing at a pipe, and
// adds what was written there to mount's error; what was written is passed
// on to the real stderr either way.
//
// go-fuse v2.12.1 (fuse/mount_linux.go callFusermount) hands os.Stderr to
// fusermount3 and reports only "fusermount exited with code 256": the
// cause ("option allow_other only allowed if 'user_allow_other' is set",
// "user has no write access to mountpoint") went to the daemon's log alone,
// and a detaching parent showed the code. Nothing else writes to os.Stderr
// itself while mounting: the logger writes to the value it was given.
func withFusermountCause(mount func() (*fs.Server, error)) (*fs.Server, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return mount()
	}
	var said bytes.Buffer
	done := make(chan struct{})
	go func() {
		io.Copy(&said, r)
		r.Close()
		close(done)
	}()
	stderrMu.Lock()
	real := os.Stderr
	os.Stderr = w
	srv, err := mount()
	os.Stderr = real
	stderrMu.Unlock()
	w.Close()
	<-done
	real.Write(said.Bytes())
	if msg := strings.TrimSpace(said.String()); err != nil && msg != "" {
		err = fmt.Errorf("%w: %s", err, strings.Join(strings.Fields(msg), " "))
	}
	return srv, err
}
