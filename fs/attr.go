package fs

import (
	"context"
	"hash/fnv"
	"syscall"
	"time"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// lowerTTL is the kernel's entry and attr cache time for lower nodes: image
// content never changes, and changes made through the mount invalidate the
// kernel's entries themselves.
const lowerTTL = time.Hour

// upperTTL is the kernel's entry, attr and negative-entry cache time for the
// root and upper nodes (Mount's go-fuse options). Nothing changes the upper
// dir behind the mount while it is mounted (it is the dir under the mount),
// and the kernel updates what it keeps for every change made through the
// mount; notify.go covers what the view changes beyond that, and the
// answers that can change without a change through the mount are not kept.
const upperTTL = time.Hour

// synthBit marks inode numbers made up for lower nodes and KEY dirs; upper
// inode numbers have it cleared, so the two never collide.
const synthBit = 1 << 63

// keyIno is the inode number of the KEY dir, whichever layers it has, so
// that its node stays the same when an upper half appears under it.
func keyIno(rel string) uint64 { return synthIno("dir\x00" + rel) }

// lowerIno is the inode number of a lower file.
func lowerIno(key, name string) uint64 { return synthIno("file\x00" + key + "\x00" + name) }

func synthIno(s string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(s))
	ino := h.Sum64() | synthBit
	if ino == ^uint64(0) { // reserved by go-fuse
		ino--
	}
	return ino
}

// upperIno derives an inode number from the upper file system's, mixing in
// the device as go-fuse's loopback does, in case the upper dir spans mounts.
func (v *view) upperIno(st *syscall.Stat_t) uint64 {
	swap := func(d uint64) uint64 { return d<<32 | d>>32 }
	return (swap(uint64(st.Dev)) ^ swap(v.upperDev) ^ st.Ino) &^ synthBit
}

// lstatGen stats an upper path and returns a generation for its inode number
// (the birth time, as loopback does), so that a reused inode number is not
// taken for the old file.
func lstatGen(p string) (syscall.Stat_t, uint64, error) {
	return statxGen(unix.AT_FDCWD, p, unix.AT_SYMLINK_NOFOLLOW)
}

// fstatGen is lstatGen of an open file.
func fstatGen(fd int) (syscall.Stat_t, uint64, error) {
	return statxGen(fd, "", unix.AT_EMPTY_PATH)
}

func statxGen(dirfd int, p string, flags int) (syscall.Stat_t, uint64, error) {
	var st syscall.Stat_t
	var x unix.Statx_t
	err := unix.Statx(dirfd, p, flags, unix.STATX_BASIC_STATS|unix.STATX_BTIME, &x)
	if err == unix.ENOSYS {
		if p == "" {
			err = syscall.Fstat(dirfd, &st)
		} else {
			err = syscall.Lstat(p, &st)
		}
		return st, 1, err
	}
	if err != nil {
		return st, 0, err
	}
	st.Dev = unix.Mkdev(x.Dev_major, x.Dev_minor)
	st.Ino = x.Ino
	st.Nlink = uint64(x.Nlink)
	st.Mode = uint32(x.Mode)
	st.Uid, st.Gid = x.Uid, x.Gid
	st.Rdev = unix.Mkdev(x.Rdev_major, x.Rdev_minor)
	st.Size = int64(x.Size)
	st.Blksize = int64(x.Blksize)
	st.Blocks = int64(x.Blocks)
	st.Atim = syscall.Timespec{Sec: x.Atime.Sec, Nsec: int64(x.Atime.Nsec)}
	st.Mtim = syscall.Timespec{Sec: x.Mtime.Sec, Nsec: int64(x.Mtime.Nsec)}
	st.Ctim = syscall.Timespec{Sec: x.Ctime.Sec, Nsec: int64(x.Ctime.Nsec)}
	gen := uint64(1)
	if x.Mask&unix.STATX_BTIME != 0 && (x.Btime.Sec != 0 || x.Btime.Nsec != 0) {
		gen = uint64(x.Btime.Sec)*1e9 + uint64(x.Btime.Nsec)
	}
	return st, gen, nil
}

// lowerFileAttr fills the attributes of a lower file.
func (v *view) lowerFileAttr(e *lowerEntry, a *fuse.Attr) {
	a.Mode = syscall.S_IFREG | uint32(e.file.Mode.Perm())
	a.Size = uint64(e.size())
	a.Nlink = 1
	v.lowerCommon(a)
}

// lowerDirAttr fills the attributes of a KEY dir that only an image has. It
// is owned like the upper dir, so that whoever owns the cache can write in.
func (v *view) lowerDirAttr(a *fuse.Attr) {
	a.Mode = syscall.S_IFDIR | 0o755
	a.Nlink = 2
	v.lowerCommon(a)
}

func (v *view) lowerCommon(a *fuse.Attr) {
	a.Uid, a.Gid = v.uid, v.gid
	a.SetTimes(&v.start, &v.start, &v.start)
}

// chownCaller gives a new upper file to the process that made it, as
// loopback does; only possible when the daemon runs as root.
func chownCaller(ctx context.Context, p string) error {
	if !isRoot {
		return nil
	}
	caller, ok := fuse.FromContext(ctx)
	if !ok {
		return nil
	}
	return syscall.Lchown(p, int(caller.Uid), int(caller.Gid))
}

// attrOps are the four ways a SETATTR changes a file, by path or by fd.
type attrOps struct {
	chmod    func(mode uint32) error
	chown    func(uid, gid int) error
	truncate func(size int64) error
	utimes   func(ts []unix.Timespec) error
}

// setattrPath applies a SETATTR to an upper path.
func setattrPath(p string, in *fuse.SetAttrIn) error {
	return setattr(in, attrOps{
		chmod:    func(m uint32) error { return syscall.Chmod(p, m) },
		chown:    func(u, g int) error { return syscall.Lchown(p, u, g) },
		truncate: func(sz int64) error { return syscall.Truncate(p, sz) },
		utimes: func(ts []unix.Timespec) error {
			return unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW)
		},
	})
}

// setattrFd applies a SETATTR to an open upper file.
func setattrFd(fd int, in *fuse.SetAttrIn) error {
	return setattr(in, attrOps{
		chmod:    func(m uint32) error { return syscall.Fchmod(fd, m) },
		chown:    func(u, g int) error { return syscall.Fchown(fd, u, g) },
		truncate: func(sz int64) error { return syscall.Ftruncate(fd, sz) },
		utimes:   func(ts []unix.Timespec) error { return futimens(fd, ts) },
	})
}

func setattr(in *fuse.SetAttrIn, ops attrOps) error {
	if m, ok := in.GetMode(); ok {
		if err := ops.chmod(m & 07777); err != nil {
			return err
		}
	}
	uid, uok := in.GetUID()
	gid, gok := in.GetGID()
	if uok || gok {
		u, g := -1, -1
		if uok {
			u = int(uid)
		}
		if gok {
			g = int(gid)
		}
		if err := ops.chown(u, g); err != nil {
			return err
		}
	}
	if sz, ok := in.GetSize(); ok {
		if err := ops.truncate(int64(sz)); err != nil {
			return err
		}
	}
	if ts, ok := setattrTimes(in); ok {
		return ops.utimes(ts)
	}
	return nil
}

// futimens is utimensat(fd, NULL, ts, 0), which x/sys does not wrap.
func futimens(fd int, ts []unix.Timespec) error {
	_, _, e := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(fd), 0, uintptr(unsafe.Pointer(&ts[0])), 0, 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

// setattrTimes gives utimensat's times for a SETATTR, UTIME_OMIT for the
// ones it leaves alone.
func setattrTimes(in *fuse.SetAttrIn) ([]unix.Timespec, bool) {
	at, aok := in.GetATime()
	mt, mok := in.GetMTime()
	if !aok && !mok {
		return nil, false
	}
	ts := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Nsec: unix.UTIME_OMIT}}
	if aok {
		ts[0] = unix.NsecToTimespec(at.UnixNano())
	}
	if mok {
		ts[1] = unix.NsecToTimespec(mt.UnixNano())
	}
	return ts, true
}
