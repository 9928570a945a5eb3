package main

import (
	"errors"
	"fmt"
	iofs "io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"cargohold/resolver"
)

// The dir under the mount is the upper dir: the user's own kernels in it
// stay visible and writable through the mount, and what Triton compiles
// while mounted lands in it, so after unmount nothing is lost or hidden.
// The mount covers the dir's path, so the daemon keeps the dir open from
// before mounting and reaches it through /proc/self/fd/N: path lookups
// through that magic link start at the dir itself, under the mount.

// openCacheDir opens the dir at mountpoint (made when missing), to be the
// upper dir once the mount covers it. It must be a dir of the user (root
// may mount on anyone's), writable by nobody else unless sticky: its
// entries are served as the user's own kernels.
func openCacheDir(mp string) (*os.File, error) {
	f, err := os.OpenFile(mp, os.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("mountpoint: %w", err)
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		f.Close()
		return nil, fmt.Errorf("mountpoint %s: %w", mp, err)
	}
	uid := os.Geteuid()
	switch {
	case uid != 0 && int(st.Uid) != uid:
		err = fmt.Errorf("owned by uid %d, not by uid %d", st.Uid, uid)
	case st.Mode&0o022 != 0 && st.Mode&syscall.S_ISVTX == 0:
		err = fmt.Errorf("mode %04o: writable by group or others and not sticky", st.Mode&0o7777)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("mountpoint %s: %w: its files would be served as your kernels", mp, err)
	}
	return f, nil
}

// upperPath is the path that reaches the dir f under the mount.
func upperPath(f *os.File) string { return fmt.Sprintf("/proc/self/fd/%d", f.Fd()) }

// moveOldUpper moves what older versions kept in <state>/upper (local
// compiles, whiteouts) into the cache dir, so that it is not hidden now
// that the cache dir is the upper dir. An entry the cache dir has already,
// or one that cannot be moved (another file system), stays and is named in
// a warning.
func moveOldUpper(stateDir string, dir *os.File, log *slog.Logger) {
	old := filepath.Join(stateDir, "upper")
	des, err := os.ReadDir(old)
	if err != nil {
		if !errors.Is(err, iofs.ErrNotExist) {
			log.Warn("old upper dir not read", "dir", old, "err", err)
		}
		return
	}
	var left []string
	for _, de := range des {
		err := unix.Renameat2(unix.AT_FDCWD, filepath.Join(old, de.Name()), int(dir.Fd()), de.Name(), unix.RENAME_NOREPLACE)
		if err != nil {
			left = append(left, de.Name()+" ("+err.Error()+")")
		}
	}
	if len(left) > 0 {
		log.Warn("entries of the old upper dir not moved into the cache dir; move or remove them by hand", "dir", old, "entries", strings.Join(left, ", "))
		return
	}
	if err := os.Remove(old); err != nil {
		log.Warn("old upper dir not removed", "dir", old, "err", err)
		return
	}
	if len(des) > 0 {
		log.Info("moved the old upper dir's entries into the cache dir", "from", old, "entries", len(des))
	}
}

// checkOverlap refuses a state dir inside the mountpoint or a mountpoint
// inside the state dir (by real paths), and a local store or oci: layout
// inside the mountpoint: the daemon would read its own state or images
// through itself and wedge the mount.
func checkOverlap(mp, stateDir, store string, sources []string) error {
	rmp, err := filepath.EvalSymlinks(mp)
	if err != nil {
		return fmt.Errorf("mountpoint: %w", err)
	}
	rstate, err := filepath.EvalSymlinks(stateDir)
	if err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	switch {
	case within(rstate, rmp):
		return fmt.Errorf("state dir %s is inside the mountpoint %s: choose a state dir outside it (--state-dir)", stateDir, mp)
	case within(rmp, rstate):
		return fmt.Errorf("mountpoint %s is inside the state dir %s: choose a state dir outside it (--state-dir)", mp, stateDir)
	}
	dirs := map[string]string{"local store": store}
	for _, s := range sources {
		if d, ok := strings.CutPrefix(s, resolver.LayoutPrefix); ok {
			if i := strings.LastIndexAny(d, ":@"); i >= 0 && !strings.Contains(d[i+1:], "/") {
				d = d[:i]
			}
			dirs["image source "+s] = d
		}
	}
	for what, d := range dirs {
		if d == "" {
			continue
		}
		rd, err := filepath.EvalSymlinks(d)
		if err != nil {
			continue // missing: it cannot be under the mount either
		}
		if within(rd, rmp) {
			return fmt.Errorf("%s %s is inside the mountpoint %s", what, d, mp)
		}
	}
	return nil
}

// within reports whether p is dir or below it (clean absolute paths).
func within(p, dir string) bool {
	return p == dir || strings.HasPrefix(p, strings.TrimSuffix(dir, "/")+"/")
}
