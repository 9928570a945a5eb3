// Package userdir finds and checks the per-user dirs where cargohold keeps
// state (content store, layer indexes, upper dir, status, log) and images.
//
// Model: state lives only in dirs the running user owns. The defaults are
// the XDG dirs under $HOME; without $HOME the per-user runtime dir
// ($XDG_RUNTIME_DIR or /run/user/UID, when it is the user's and 0700);
// otherwise there is no default and the caller asks for an explicit dir.
// There is never a shared fixed fallback (such as /tmp/NAME): another user
// could make it first and plant or link files in it.
//
// Invariants of a dir Ensure accepts: every path component is owned by root
// or the user; a component others may write to is sticky (only its owner
// may replace what the next component names); every symlink on the way is
// owned by root or the user; the dir itself is the user's and writable by
// nobody else. So nobody but root and the user can change what its path
// names or what is in it. Files are opened with O_NOFOLLOW (OpenFile).
package userdir

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// ErrNoDefault says there is no per-user dir to default to.
var ErrNoDefault = errors.New("no per-user dir: $HOME is unset and there is no per-user runtime dir")

// UnsafeError says a path is not safe to keep state in, and why.
type UnsafeError struct {
	Path   string
	Reason string
}

func (e *UnsafeError) Error() string { return fmt.Sprintf("%s: %s", e.Path, e.Reason) }

// maxLinks bounds the symlinks followed while checking one path.
const maxLinks = 40

// Cache is ${XDG_CACHE_HOME:-$HOME/.cache}/elem..., or the per-user runtime
// dir joined with elem when neither is set. ErrNoDefault when there is none.
func Cache(elem ...string) (string, error) { return base("XDG_CACHE_HOME", ".cache", elem) }

// Data is ${XDG_DATA_HOME:-$HOME/.local/share}/elem..., or the per-user
// runtime dir joined with elem when neither is set. ErrNoDefault when there
// is none.
func Data(elem ...string) (string, error) {
	return base("XDG_DATA_HOME", filepath.Join(".local", "share"), elem)
}

func base(env, underHome string, elem []string) (string, error) {
	// The XDG base dir spec: relative values are invalid and ignored.
	if d := os.Getenv(env); filepath.IsAbs(d) {
		return filepath.Join(append([]string{d}, elem...)...), nil
	}
	if h := os.Getenv("HOME"); filepath.IsAbs(h) {
		return filepath.Join(append([]string{h, underHome}, elem...)...), nil
	}
	rt, err := Runtime()
	if err != nil {
		return "", err
	}
	return filepath.Join(append([]string{rt}, elem...)...), nil
}

// Runtime is the user's runtime dir: $XDG_RUNTIME_DIR, else /run/user/UID,
// when it exists, is owned by the user and has mode 0700.
func Runtime() (string, error) {
	uid := os.Geteuid()
	var tried []string
	for _, d := range []string{os.Getenv("XDG_RUNTIME_DIR"), "/run/user/" + strconv.Itoa(uid)} {
		if !filepath.IsAbs(d) {
			continue
		}
		var st syscall.Stat_t
		if err := syscall.Lstat(d, &st); err != nil {
			tried = append(tried, d+" (missing)")
			continue
		}
		if st.Mode&syscall.S_IFMT != syscall.S_IFDIR || int(st.Uid) != uid || st.Mode&0o777 != 0o700 {
			tried = append(tried, fmt.Sprintf("%s (not a 0700 dir of uid %d)", d, uid))
			continue
		}
		return d, nil
	}
	if len(tried) > 0 {
		return "", fmt.Errorf("%w (tried %s)", ErrNoDefault, strings.Join(tried, ", "))
	}
	return "", ErrNoDefault
}

// Ensure makes dir when missing (each component it creates with mode 0700)
// and checks that it is safe to keep state in (see the package doc). It
// returns an *UnsafeError naming the component and the reason otherwise.
func Ensure(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	return walk(abs)
}

// walk resolves abs component by component from /, checking each one, and
// makes missing components.
func walk(abs string) error {
	uid := uint32(os.Geteuid())
	todo := strings.Split(strings.TrimPrefix(filepath.Clean(abs), "/"), "/")
	cur := "/"
	links := 0
	for len(todo) > 0 {
		el := todo[0]
		todo = todo[1:]
		if el == "" || el == "." {
			continue
		}
		if el == ".." {
			cur = filepath.Dir(cur)
			continue
		}
		next := filepath.Join(cur, el)
		var st syscall.Stat_t
		err := syscall.Lstat(next, &st)
		if errors.Is(err, syscall.ENOENT) {
			if err := syscall.Mkdir(next, 0o700); err != nil && !errors.Is(err, syscall.EEXIST) {
				return &os.PathError{Op: "mkdir", Path: next, Err: err}
			}
			err = syscall.Lstat(next, &st)
		}
		if err != nil {
			return &os.PathError{Op: "stat", Path: next, Err: err}
		}
		if st.Uid != 0 && st.Uid != uid {
			return &UnsafeError{Path: next, Reason: fmt.Sprintf("owned by uid %d, not by uid %d or root", st.Uid, uid)}
		}
		switch st.Mode & syscall.S_IFMT {
		case syscall.S_IFLNK:
			if links++; links > maxLinks {
				return &UnsafeError{Path: abs, Reason: "too many symlinks"}
			}
			target, err := os.Readlink(next)
			if err != nil {
				return err
			}
			if filepath.IsAbs(target) {
				cur = "/"
			}
			todo = append(strings.Split(target, "/"), todo...)
			continue
		case syscall.S_IFDIR:
		default:
			return &UnsafeError{Path: next, Reason: "not a directory"}
		}
		last := len(todo) == 0
		switch {
		case last && st.Uid != uid:
			return &UnsafeError{Path: next, Reason: fmt.Sprintf("owned by uid %d, not by uid %d", st.Uid, uid)}
		case last && st.Mode&0o022 != 0:
			return &UnsafeError{Path: next, Reason: fmt.Sprintf("mode %04o: writable by group or others", st.Mode&0o7777)}
		case st.Mode&0o022 != 0 && st.Mode&syscall.S_ISVTX == 0:
			return &UnsafeError{Path: next, Reason: fmt.Sprintf("mode %04o: writable by group or others and not sticky", st.Mode&0o7777)}
		}
		cur = next
	}
	return nil
}

// CheckEntries checks the entries of dir that exist among names: none may
// be a symlink, be owned by another user, or be writable by group or
// others. Missing ones are fine (they are made later, by the user).
func CheckEntries(dir string, names ...string) error {
	uid := uint32(os.Geteuid())
	for _, n := range names {
		p := filepath.Join(dir, n)
		var st syscall.Stat_t
		if err := syscall.Lstat(p, &st); err != nil {
			if errors.Is(err, syscall.ENOENT) {
				continue
			}
			return &os.PathError{Op: "stat", Path: p, Err: err}
		}
		if err := checkStat(p, &st, uid); err != nil {
			return err
		}
	}
	return nil
}

func checkStat(p string, st *syscall.Stat_t, uid uint32) error {
	switch {
	case st.Mode&syscall.S_IFMT == syscall.S_IFLNK:
		return &UnsafeError{Path: p, Reason: "a symlink"}
	case st.Uid != uid:
		return &UnsafeError{Path: p, Reason: fmt.Sprintf("owned by uid %d, not by uid %d", st.Uid, uid)}
	case st.Mode&0o022 != 0:
		return &UnsafeError{Path: p, Reason: fmt.Sprintf("mode %04o: writable by group or others", st.Mode&0o7777)}
	}
	return nil
}

// OpenFile opens path with O_NOFOLLOW added to flag: a symlink there is an
// error (ELOOP) rather than followed. The file opened must be a regular
// file of the user, writable by nobody else.
func OpenFile(path string, flag int, perm os.FileMode) (*os.File, error) {
	f, err := os.OpenFile(path, flag|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, perm)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, &UnsafeError{Path: path, Reason: "a symlink"}
		}
		return nil, err
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		f.Close()
		return nil, &os.PathError{Op: "fstat", Path: path, Err: err}
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFREG {
		f.Close()
		return nil, &UnsafeError{Path: path, Reason: "not a regular file"}
	}
	if err := checkStat(path, &st, uint32(os.Geteuid())); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}
