package fs

import (
	"github.com/hanwen/go-fuse/v2/fuse"
)

// FUSE requests, counted by kind (Stats, StatsSnapshot.Requests): what the
// kernel's caches save shows there, and a warm hit's cost can be read off
// without a debug log. Forgets count nodes (a BATCH_FORGET counts each).

type reqOp uint8

const (
	opLookup reqOp = iota
	opForget
	opGetattr
	opSetattr
	opMknod
	opMkdir
	opUnlink
	opRmdir
	opRename
	opLink
	opSymlink
	opReadlink
	opAccess
	opGetxattr
	opListxattr
	opSetxattr
	opRemovexattr
	opCreate
	opTmpfile
	opOpen
	opRead
	opLseek
	opGetlk
	opSetlk
	opSetlkw
	opRelease
	opWrite
	opCopyFileRange
	opIoctl
	opFlush
	opFsync
	opFallocate
	opOpendir
	opReaddir
	opReaddirplus
	opReleasedir
	opFsyncdir
	opStatfs
	opStatx
	numOps
)

// opNames are the kernel's names of the requests (FUSE_LOOKUP → "LOOKUP").
var opNames = [numOps]string{
	opLookup: "LOOKUP", opForget: "FORGET", opGetattr: "GETATTR", opSetattr: "SETATTR",
	opMknod: "MKNOD", opMkdir: "MKDIR", opUnlink: "UNLINK", opRmdir: "RMDIR", opRename: "RENAME",
	opLink: "LINK", opSymlink: "SYMLINK", opReadlink: "READLINK", opAccess: "ACCESS",
	opGetxattr: "GETXATTR", opListxattr: "LISTXATTR", opSetxattr: "SETXATTR", opRemovexattr: "REMOVEXATTR",
	opCreate: "CREATE", opTmpfile: "TMPFILE", opOpen: "OPEN", opRead: "READ", opLseek: "LSEEK",
	opGetlk: "GETLK", opSetlk: "SETLK", opSetlkw: "SETLKW", opRelease: "RELEASE", opWrite: "WRITE",
	opCopyFileRange: "COPY_FILE_RANGE", opIoctl: "IOCTL", opFlush: "FLUSH", opFsync: "FSYNC",
	opFallocate: "FALLOCATE", opOpendir: "OPENDIR", opReaddir: "READDIR", opReaddirplus: "READDIRPLUS",
	opReleasedir: "RELEASEDIR", opFsyncdir: "FSYNCDIR", opStatfs: "STATFS", opStatx: "STATX",
}

// countingFS counts each request, then hands it to go-fuse's node bridge.
type countingFS struct {
	fuse.RawFileSystem
	s *Stats
}

func (c *countingFS) Lookup(cancel <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	c.s.request(opLookup)
	return c.RawFileSystem.Lookup(cancel, h, name, out)
}

func (c *countingFS) Forget(nodeid, nlookup uint64) {
	c.s.request(opForget)
	c.RawFileSystem.Forget(nodeid, nlookup)
}

func (c *countingFS) GetAttr(cancel <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	c.s.request(opGetattr)
	return c.RawFileSystem.GetAttr(cancel, in, out)
}

func (c *countingFS) SetAttr(cancel <-chan struct{}, in *fuse.SetAttrIn, out *fuse.AttrOut) fuse.Status {
	c.s.request(opSetattr)
	return c.RawFileSystem.SetAttr(cancel, in, out)
}

func (c *countingFS) Mknod(cancel <-chan struct{}, in *fuse.MknodIn, name string, out *fuse.EntryOut) fuse.Status {
	c.s.request(opMknod)
	return c.RawFileSystem.Mknod(cancel, in, name, out)
}

func (c *countingFS) Mkdir(cancel <-chan struct{}, in *fuse.MkdirIn, name string, out *fuse.EntryOut) fuse.Status {
	c.s.request(opMkdir)
	return c.RawFileSystem.Mkdir(cancel, in, name, out)
}

func (c *countingFS) Unlink(cancel <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	c.s.request(opUnlink)
	return c.RawFileSystem.Unlink(cancel, h, name)
}

func (c *countingFS) Rmdir(cancel <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	c.s.request(opRmdir)
	return c.RawFileSystem.Rmdir(cancel, h, name)
}

func (c *countingFS) Rename(cancel <-chan struct{}, in *fuse.RenameIn, oldName, newName string) fuse.Status {
	c.s.request(opRename)
	return c.RawFileSystem.Rename(cancel, in, oldName, newName)
}

func (c *countingFS) Link(cancel <-chan struct{}, in *fuse.LinkIn, name string, out *fuse.EntryOut) fuse.Status {
	c.s.request(opLink)
	return c.RawFileSystem.Link(cancel, in, name, out)
}

func (c *countingFS) Symlink(cancel <-chan struct{}, h *fuse.InHeader, target, name string, out *fuse.EntryOut) fuse.Status {
	c.s.request(opSymlink)
	return c.RawFileSystem.Symlink(cancel, h, target, name, out)
}

func (c *countingFS) Readlink(cancel <-chan struct{}, h *fuse.InHeader) ([]byte, fuse.Status) {
	c.s.request(opReadlink)
	return c.RawFileSystem.Readlink(cancel, h)
}

func (c *countingFS) Access(cancel <-chan struct{}, in *fuse.AccessIn) fuse.Status {
	c.s.request(opAccess)
	return c.RawFileSystem.Access(cancel, in)
}

func (c *countingFS) GetXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string, dest []byte) (uint32, fuse.Status) {
	c.s.request(opGetxattr)
	return c.RawFileSystem.GetXAttr(cancel, h, attr, dest)
}

func (c *countingFS) ListXAttr(cancel <-chan struct{}, h *fuse.InHeader, dest []byte) (uint32, fuse.Status) {
	c.s.request(opListxattr)
	return c.RawFileSystem.ListXAttr(cancel, h, dest)
}

func (c *countingFS) SetXAttr(cancel <-chan struct{}, in *fuse.SetXAttrIn, attr string, data []byte) fuse.Status {
	c.s.request(opSetxattr)
	return c.RawFileSystem.SetXAttr(cancel, in, attr, data)
}

func (c *countingFS) RemoveXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string) fuse.Status {
	c.s.request(opRemovexattr)
	return c.RawFileSystem.RemoveXAttr(cancel, h, attr)
}

func (c *countingFS) Create(cancel <-chan struct{}, in *fuse.CreateIn, name string, out *fuse.CreateOut) fuse.Status {
	c.s.request(opCreate)
	return c.RawFileSystem.Create(cancel, in, name, out)
}

func (c *countingFS) Tmpfile(cancel <-chan struct{}, in *fuse.CreateIn, out *fuse.CreateOut) fuse.Status {
	c.s.request(opTmpfile)
	return c.RawFileSystem.Tmpfile(cancel, in, out)
}

func (c *countingFS) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	c.s.request(opOpen)
	return c.RawFileSystem.Open(cancel, in, out)
}

func (c *countingFS) Read(cancel <-chan struct{}, in *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	c.s.request(opRead)
	return c.RawFileSystem.Read(cancel, in, buf)
}

func (c *countingFS) Lseek(cancel <-chan struct{}, in *fuse.LseekIn, out *fuse.LseekOut) fuse.Status {
	c.s.request(opLseek)
	return c.RawFileSystem.Lseek(cancel, in, out)
}

func (c *countingFS) GetLk(cancel <-chan struct{}, in *fuse.LkIn, out *fuse.LkOut) fuse.Status {
	c.s.request(opGetlk)
	return c.RawFileSystem.GetLk(cancel, in, out)
}

func (c *countingFS) SetLk(cancel <-chan struct{}, in *fuse.LkIn) fuse.Status {
	c.s.request(opSetlk)
	return c.RawFileSystem.SetLk(cancel, in)
}

func (c *countingFS) SetLkw(cancel <-chan struct{}, in *fuse.LkIn) fuse.Status {
	c.s.request(opSetlkw)
	return c.RawFileSystem.SetLkw(cancel, in)
}

func (c *countingFS) Release(cancel <-chan struct{}, in *fuse.ReleaseIn) {
	c.s.request(opRelease)
	c.RawFileSystem.Release(cancel, in)
}

func (c *countingFS) Write(cancel <-chan struct{}, in *fuse.WriteIn, data []byte) (uint32, fuse.Status) {
	c.s.request(opWrite)
	return c.RawFileSystem.Write(cancel, in, data)
}

func (c *countingFS) Writev(cancel <-chan struct{}, in *fuse.WriteIn, data [][]byte) (uint32, fuse.Status) {
	c.s.request(opWrite)
	return c.RawFileSystem.Writev(cancel, in, data)
}

func (c *countingFS) CopyFileRange(cancel <-chan struct{}, in *fuse.CopyFileRangeIn) (uint32, fuse.Status) {
	c.s.request(opCopyFileRange)
	return c.RawFileSystem.CopyFileRange(cancel, in)
}

func (c *countingFS) Ioctl(cancel <-chan struct{}, in *fuse.IoctlIn, inbuf []byte, out *fuse.IoctlOut, outbuf []byte) fuse.Status {
	c.s.request(opIoctl)
	return c.RawFileSystem.Ioctl(cancel, in, inbuf, out, outbuf)
}

func (c *countingFS) Flush(cancel <-chan struct{}, in *fuse.FlushIn) fuse.Status {
	c.s.request(opFlush)
	return c.RawFileSystem.Flush(cancel, in)
}

func (c *countingFS) Fsync(cancel <-chan struct{}, in *fuse.FsyncIn) fuse.Status {
	c.s.request(opFsync)
	return c.RawFileSystem.Fsync(cancel, in)
}

func (c *countingFS) Fallocate(cancel <-chan struct{}, in *fuse.FallocateIn) fuse.Status {
	c.s.request(opFallocate)
	return c.RawFileSystem.Fallocate(cancel, in)
}

func (c *countingFS) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	c.s.request(opOpendir)
	return c.RawFileSystem.OpenDir(cancel, in, out)
}

func (c *countingFS) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	c.s.request(opReaddir)
	return c.RawFileSystem.ReadDir(cancel, in, out)
}

func (c *countingFS) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	c.s.request(opReaddirplus)
	return c.RawFileSystem.ReadDirPlus(cancel, in, out)
}

func (c *countingFS) ReleaseDir(in *fuse.ReleaseIn) {
	c.s.request(opReleasedir)
	c.RawFileSystem.ReleaseDir(in)
}

func (c *countingFS) FsyncDir(cancel <-chan struct{}, in *fuse.FsyncIn) fuse.Status {
	c.s.request(opFsyncdir)
	return c.RawFileSystem.FsyncDir(cancel, in)
}

func (c *countingFS) StatFs(cancel <-chan struct{}, h *fuse.InHeader, out *fuse.StatfsOut) fuse.Status {
	c.s.request(opStatfs)
	return c.RawFileSystem.StatFs(cancel, h, out)
}

func (c *countingFS) Statx(cancel <-chan struct{}, in *fuse.StatxIn, out *fuse.StatxOut) fuse.Status {
	c.s.request(opStatx)
	return c.RawFileSystem.Statx(cancel, in, out)
}
