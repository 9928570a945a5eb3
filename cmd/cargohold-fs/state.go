package main

import (
	"fmt"
	"os"
	"path/filepath"

	"cargohold/catalog"
	"cargohold/internal/userdir"
)

// Names in the state dir.
const (
	logName    = "cargohold-fs.log"
	statusName = "status.json"
)

// stateEntries are the state dir's entries, checked before use: each one is
// the user's, writable by nobody else, and not a symlink.
var stateEntries = []string{"upper", "store", "layers", catalog.StateFile, statusName, statusName + ".tmp", logName}

// prepareState makes the state dir when missing and refuses one that is not
// safe to keep state in: a dir (or a path to it) that another user owns or
// may write, or files in it that are symlinks or another user's. Such a dir
// could hold a planted kernel or launcher, or a link that makes the daemon
// write where its user never meant to.
func prepareState(dir string) error {
	if dir == "" {
		return fmt.Errorf("no state dir: %w; name one with --state-dir", userdir.ErrNoDefault)
	}
	if err := userdir.Ensure(dir); err != nil {
		return fmt.Errorf("state dir %s: %w; use a dir only you own and may write (--state-dir)", dir, err)
	}
	if err := userdir.CheckEntries(dir, stateEntries...); err != nil {
		return fmt.Errorf("state dir %s: %w; remove it or use another dir (--state-dir)", dir, err)
	}
	return nil
}

// openLog opens the daemon's log in the state dir for appending, never
// through a symlink.
func openLog(dir string) (*os.File, error) {
	return userdir.OpenFile(filepath.Join(dir, logName), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
}
