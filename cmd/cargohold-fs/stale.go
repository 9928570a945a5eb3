package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"syscall"

	"cargohold/fs"
)

// clearStaleMount detaches a mount left at mountpoint by a killed
// cargohold-fs (its FUSE connection is gone: statfs says ENOTCONN; a stat
// may still be answered from the kernel's cache). A live mount there is an
// error rather than something to take over.
func clearStaleMount(mp string, log *slog.Logger) error {
	fstype, mounted := fs.MountType(mp)
	if !mounted {
		return os.MkdirAll(mp, 0o755)
	}
	var st syscall.Statfs_t
	serr := syscall.Statfs(mp, &st)
	if !errors.Is(serr, syscall.ENOTCONN) {
		return fmt.Errorf("%s is already mounted (%s); unmount it first", mp, fstype)
	}
	log.Warn("replacing stale mount left by a killed process", "mountpoint", mp, "type", fstype)
	if err := syscall.Unmount(mp, syscall.MNT_DETACH); err != nil {
		// Not root: the setuid helper may unmount what this user mounted.
		if out, ferr := exec.Command("fusermount3", "-uz", mp).CombinedOutput(); ferr != nil {
			return fmt.Errorf("stale mount at %s: unmount: %v; fusermount3: %v %s", mp, err, ferr, strings.TrimSpace(string(out)))
		}
	}
	return nil
}
