package main

import (
	"bufio"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
)

// clearStaleMount detaches a mount left at mountpoint by a killed
// cargohold-fs (its FUSE connection is gone: stat says ENOTCONN). A live
// mount there is an error rather than something to take over.
func clearStaleMount(mountpoint string, log *slog.Logger) error {
	mp, err := filepath.Abs(mountpoint)
	if err != nil {
		return err
	}
	fstype, mounted := mountType(mp)
	if !mounted {
		return os.MkdirAll(mp, 0o755)
	}
	var st syscall.Stat_t
	serr := syscall.Stat(mp, &st)
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

// mountType finds mp in /proc/self/mountinfo.
func mountType(mp string) (string, bool) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	found, typ := false, ""
	for sc.Scan() {
		// id parent major:minor root mountpoint opts [optional...] - fstype source superopts
		fields := strings.Fields(sc.Text())
		if len(fields) < 7 || unescape(fields[4]) != mp {
			continue
		}
		for i, f := range fields {
			if f == "-" && i+1 < len(fields) {
				found, typ = true, fields[i+1]
			}
		}
	}
	return typ, found
}

// unescape undoes mountinfo's octal escapes (\040 for a space).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var c byte
			if _, err := fmt.Sscanf(s[i+1:i+4], "%3o", &c); err == nil {
				b.WriteByte(c)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
