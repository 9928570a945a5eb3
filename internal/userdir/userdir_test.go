package userdir

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

const other = 65534 // a second user

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root (to make files of another user)")
		}
		t.Skip("SKIPPED: needs root (to make files of another user)")
	}
}

func TestEnsure(t *testing.T) {
	needRoot(t)
	root := t.TempDir()
	os.Chmod(root, 0o700)
	unsafe := func(t *testing.T, dir, want string) {
		t.Helper()
		err := Ensure(dir)
		var ue *UnsafeError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), want) {
			t.Fatalf("Ensure(%s) = %v, want an UnsafeError with %q", dir, err, want)
		}
	}

	t.Run("made 0700", func(t *testing.T) {
		d := filepath.Join(root, "a", "b")
		if err := Ensure(d); err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{filepath.Join(root, "a"), d} {
			if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o700 {
				t.Fatalf("%s: %v %v", p, fi.Mode(), err)
			}
		}
	})
	t.Run("sticky shared parent", func(t *testing.T) {
		shared := filepath.Join(root, "tmp")
		os.Mkdir(shared, 0o777)
		os.Chmod(shared, os.ModeSticky|0o777)
		if err := Ensure(filepath.Join(shared, "mine")); err != nil {
			t.Fatal(err)
		}
		theirs := filepath.Join(shared, "theirs")
		os.Mkdir(theirs, 0o700)
		os.Chown(theirs, other, other)
		unsafe(t, filepath.Join(theirs, "x"), "owned by uid 65534")
		unsafe(t, theirs, "owned by uid 65534")
	})
	t.Run("writable parent not sticky", func(t *testing.T) {
		open := filepath.Join(root, "open")
		os.Mkdir(open, 0o777)
		os.Chmod(open, 0o777)
		unsafe(t, filepath.Join(open, "x"), "not sticky")
	})
	t.Run("group writable dir", func(t *testing.T) {
		g := filepath.Join(root, "g")
		os.Mkdir(g, 0o770)
		os.Chmod(g, 0o770)
		unsafe(t, g, "writable by group or others")
	})
	t.Run("symlinks", func(t *testing.T) {
		target := filepath.Join(root, "target")
		os.Mkdir(target, 0o700)
		mine := filepath.Join(root, "mine-link")
		os.Symlink("target", mine) // relative, ours
		if err := Ensure(filepath.Join(mine, "sub")); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(target, "sub")); err != nil {
			t.Fatal(err)
		}
		theirs := filepath.Join(root, "their-link")
		os.Symlink(target, theirs)
		os.Lchown(theirs, other, other)
		unsafe(t, filepath.Join(theirs, "sub"), "owned by uid 65534")
		loop := filepath.Join(root, "loop")
		os.Symlink("loop", loop)
		unsafe(t, loop, "too many symlinks")
	})
	t.Run("file", func(t *testing.T) {
		f := filepath.Join(root, "file")
		os.WriteFile(f, nil, 0o600)
		unsafe(t, f, "not a directory")
	})
}

func TestEntriesAndOpenFile(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	victim := filepath.Join(t.TempDir(), "victim")
	os.WriteFile(victim, []byte("v"), 0o644)
	os.Symlink(victim, filepath.Join(dir, "link"))
	os.WriteFile(filepath.Join(dir, "theirs"), nil, 0o644)
	os.Chown(filepath.Join(dir, "theirs"), other, other)
	os.WriteFile(filepath.Join(dir, "open"), nil, 0o666)
	os.Chmod(filepath.Join(dir, "open"), 0o666)
	os.WriteFile(filepath.Join(dir, "fine"), nil, 0o644)

	if err := CheckEntries(dir, "fine", "missing"); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"link": "symlink", "theirs": "owned by uid 65534", "open": "writable"} {
		if err := CheckEntries(dir, name); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("CheckEntries %s = %v, want %q", name, err, want)
		}
		f, err := OpenFile(filepath.Join(dir, name), os.O_WRONLY|os.O_APPEND, 0)
		if err == nil {
			f.Close()
			t.Errorf("OpenFile %s succeeded", name)
		} else if !strings.Contains(err.Error(), want) {
			t.Errorf("OpenFile %s = %v, want %q", name, err, want)
		}
	}
	if b, _ := os.ReadFile(victim); string(b) != "v" {
		t.Fatalf("victim changed: %q", b)
	}
	f, err := OpenFile(filepath.Join(dir, "new"), os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
}

func TestDefaults(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", "relative") // invalid per the spec: ignored
	t.Setenv("HOME", "/home/u")
	if d, err := Cache("cargohold"); err != nil || d != "/home/u/.cache/cargohold" {
		t.Fatalf("Cache = %q, %v", d, err)
	}
	t.Setenv("HOME", "")
	rt := t.TempDir()
	os.Chmod(rt, 0o700)
	t.Setenv("XDG_RUNTIME_DIR", rt)
	if d, err := Data("cargohold", "oci"); err != nil || d != filepath.Join(rt, "cargohold", "oci") {
		t.Fatalf("Data = %q, %v", d, err)
	}
	os.Chmod(rt, 0o755)
	if _, err := os.Stat("/run/user/" + strconv.Itoa(os.Geteuid())); err == nil {
		return // this host has one; the error case cannot be seen
	}
	if _, err := Cache("x"); !errors.Is(err, ErrNoDefault) {
		t.Fatalf("no HOME, runtime dir 0755: %v, want ErrNoDefault", err)
	}
}
