package replay

import (
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// pyos performs file-system calls the way CPython 3.11's os and io modules
// do, one syscall per step, and records each in a trace (strace style).
type pyos struct {
	trace []string
	// rmdir is unix.Rmdir; a test puts in a filesystem that removes
	// non-empty dirs, which no local filesystem does.
	rmdir func(string) error
	// flockFn is unix.Flock (where nil); a test puts in a filesystem
	// whose flock always succeeds.
	flockFn func(fd, how int) error
	// inPlace holds what this replay wrote in place (not renamed in), by
	// path, for readWritten.
	inPlace map[string][]byte
}

func newPyos() *pyos { return &pyos{rmdir: unix.Rmdir} }

func (p *pyos) log(format string, err error, args ...any) {
	res := "0"
	if err != nil {
		res = errnoName(err)
	}
	p.trace = append(p.trace, fmt.Sprintf(format, args...)+" = "+res)
}

func (p *pyos) logN(format string, n int, err error, args ...any) {
	if err != nil {
		p.log(format, err, args...)
		return
	}
	p.trace = append(p.trace, fmt.Sprintf(format, args...)+fmt.Sprintf(" = %d", n))
}

// replayOnly runs f, marking the trace lines it adds as the replay's own
// checks, which the framework does not make.
func (p *pyos) replayOnly(f func()) {
	n := len(p.trace)
	f()
	for i := n; i < len(p.trace); i++ {
		p.trace[i] += " [replay only]"
	}
}

func errnoName(err error) string {
	var e unix.Errno
	if errors.As(err, &e) {
		if n := unix.ErrnoName(e); n != "" {
			return n
		}
	}
	return err.Error()
}

// retry repeats a call interrupted by a signal, as CPython does (PEP 475).
func retry(f func() error) error {
	for {
		if err := f(); err != unix.EINTR {
			return err
		}
	}
}

// stat is os.stat.
func (p *pyos) stat(path string) (unix.Stat_t, error) {
	var st unix.Stat_t
	err := retry(func() error { return unix.Stat(path, &st) })
	p.log("stat(%q)", err, path)
	if err != nil {
		return st, fmt.Errorf("stat %s: %w", path, err)
	}
	return st, nil
}

// exists is os.path.exists: any stat error means no.
func (p *pyos) exists(path string) (unix.Stat_t, bool) {
	st, err := p.stat(path)
	return st, err == nil
}

func (p *pyos) isdir(path string) bool {
	st, ok := p.exists(path)
	return ok && st.Mode&unix.S_IFMT == unix.S_IFDIR
}

// makedirs is os.makedirs(name, exist_ok=True). created says whether the
// last mkdir made the dir; mkdirErr is its error when it did not.
func (p *pyos) makedirs(name string) (created bool, mkdirErr, err error) {
	head, tail := pySplit(name)
	if tail == "" {
		head, tail = pySplit(head)
	}
	if head != "" && tail != "" {
		if _, ok := p.exists(head); !ok {
			// Python ignores FileExistsError here: another process may
			// have made it meanwhile.
			if _, _, err := p.makedirs(head); err != nil && !errors.Is(err, unix.EEXIST) {
				return false, nil, err
			}
		}
	}
	mkdirErr = retry(func() error { return unix.Mkdir(name, 0o777) })
	p.log("mkdir(%q, 0777)", mkdirErr, name)
	if mkdirErr == nil {
		return true, nil, nil
	}
	if !p.isdir(name) {
		return false, mkdirErr, fmt.Errorf("mkdir %s: %w", name, mkdirErr)
	}
	return false, mkdirErr, nil
}

// pySplit is posixpath.split: the head keeps no trailing slash unless it
// is all slashes.
func pySplit(p string) (head, tail string) {
	i := strings.LastIndexByte(p, '/') + 1
	head, tail = p[:i], p[i:]
	if head != "" && strings.Trim(head, "/") != "" {
		head = strings.TrimRight(head, "/")
	}
	return head, tail
}

// readFile is open(path).read() (or Path.read_bytes()): the sizes are what
// fstat said just before reading, and what came back.
func (p *pyos) readFile(path string) (data []byte, fstatSize int64, err error) {
	var fd int
	err = retry(func() (e error) { fd, e = unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0); return })
	p.logN("openat(%q, O_RDONLY|O_CLOEXEC)", fd, err, path)
	if err != nil {
		return nil, 0, fmt.Errorf("open %s: %w", path, err)
	}
	defer func() {
		cerr := unix.Close(fd)
		p.log("close(%d)", cerr, fd)
		if err == nil && cerr != nil {
			err = fmt.Errorf("close %s: %w", path, cerr)
		}
	}()
	var st unix.Stat_t
	if err := p.fstat(fd, &st); err != nil {
		return nil, 0, fmt.Errorf("fstat %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return nil, 0, fmt.Errorf("open %s: %w", path, unix.EISDIR)
	}
	p.isatty(fd)
	for i := 0; i < 2; i++ { // BufferedReader's and FileIO.readall's tell()
		if err := p.tell(fd); err != nil {
			return nil, 0, fmt.Errorf("lseek %s: %w", path, err)
		}
	}
	if err := p.fstat(fd, &st); err != nil {
		return nil, 0, fmt.Errorf("fstat %s: %w", path, err)
	}
	buf := make([]byte, st.Size+1)
	n := 0
	for {
		if n == len(buf) { // the file grew: CPython enlarges its buffer
			buf = append(buf, make([]byte, len(buf)/8+64)...)
		}
		var m int
		err := retry(func() (e error) { m, e = unix.Read(fd, buf[n:]); return })
		p.logN("read(%d, %d)", m, err, fd, len(buf)-n)
		if err != nil {
			return nil, 0, fmt.Errorf("read %s: %w", path, err)
		}
		if m == 0 {
			break
		}
		n += m
	}
	return buf[:n], st.Size, nil
}

func (p *pyos) fstat(fd int, st *unix.Stat_t) error {
	err := retry(func() error { return unix.Fstat(fd, st) })
	p.log("fstat(%d)", err, fd)
	return err
}

// isatty is the ioctl io.open sends to decide on line buffering. A regular
// file answers ENOTTY (a FUSE file ENOTTY or ENOSYS); any answer is
// ignored, as Python treats every error as "not a tty".
func (p *pyos) isatty(fd int) {
	_, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	p.log("ioctl(%d, TCGETS)", err, fd)
}

func (p *pyos) tell(fd int) error {
	var off int64
	err := retry(func() (e error) { off, e = unix.Seek(fd, 0, unix.SEEK_CUR); return })
	p.logN("lseek(%d, 0, SEEK_CUR)", int(off), err, fd)
	return err
}

// writeFile is open(path, "wb").write(data), the way FileCacheManager.put
// writes into its tmp dir.
func (p *pyos) writeFile(path string, data []byte) error {
	return p.write(path, data, false)
}

// write is open(path, "wb").write(data), or open(path, "w").write(data)
// when text: TextIOWrapper asks for the position once more than a binary
// file does. Python's json.dump writes in pieces, which its buffer joins;
// the replay writes once.
func (p *pyos) write(path string, data []byte, text bool) (err error) {
	var fd int
	err = retry(func() (e error) {
		fd, e = unix.Open(path, unix.O_WRONLY|unix.O_CREAT|unix.O_TRUNC|unix.O_CLOEXEC, 0o666)
		return
	})
	p.logN("openat(%q, O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC, 0666)", fd, err, path)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	defer func() {
		cerr := unix.Close(fd)
		p.log("close(%d)", cerr, fd)
		if err == nil && cerr != nil {
			err = fmt.Errorf("close %s: %w", path, cerr)
		}
	}()
	var st unix.Stat_t
	if err := p.fstat(fd, &st); err != nil {
		return fmt.Errorf("fstat %s: %w", path, err)
	}
	p.isatty(fd)
	tells := 1
	if text {
		tells = 2
	}
	for range tells {
		if err := p.tell(fd); err != nil {
			return fmt.Errorf("lseek %s: %w", path, err)
		}
	}
	for len(data) > 0 {
		var n int
		err := retry(func() (e error) { n, e = unix.Write(fd, data); return })
		p.logN("write(%d, %d)", n, err, fd, len(data))
		if err != nil {
			return fmt.Errorf("write %s: %w", path, err)
		}
		data = data[n:]
	}
	return nil
}

// replace is os.replace.
func (p *pyos) replace(from, to string) error {
	err := retry(func() error { return unix.Rename(from, to) })
	p.log("rename(%q, %q)", err, from, to)
	if err != nil {
		return fmt.Errorf("rename %s: %w", from, err)
	}
	return nil
}

// removeTmp is os.removedirs(tmp) where tmp's parent is a KEY dir that
// holds at least the file just renamed into it: rmdir(tmp), then rmdir(KEY)
// must fail, which is where Python stops. The replay stops there in any
// case: it never prunes the cache root.
func (p *pyos) removeTmp(tmp string) error {
	err := retry(func() error { return p.rmdir(tmp) })
	p.log("rmdir(%q)", err, tmp)
	if err != nil {
		return fmt.Errorf("rmdir %s: %w", tmp, err)
	}
	key := filepath.Dir(tmp)
	err = retry(func() error { return p.rmdir(key) })
	p.log("rmdir(%q)", err, key)
	return pruneResult(key, err)
}

// pruneResult judges rmdir(KEY) of a KEY dir that holds files: it must
// fail ENOTEMPTY (POSIX also allows EEXIST). A success is
// ErrRemovedNonEmpty; another error is wrong too, though Python would
// swallow it.
func pruneResult(key string, err error) error {
	switch {
	case err == nil:
		return fmt.Errorf("rmdir %s: %w", key, ErrRemovedNonEmpty)
	case errors.Is(err, unix.ENOTEMPTY), errors.Is(err, unix.EEXIST):
		return nil
	default:
		return fmt.Errorf("rmdir %s: %w (want ENOTEMPTY)", key, err)
	}
}

// uuid4 is str(uuid.uuid4()).
func uuid4() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// listdir is os.listdir: glibc's opendir (openat O_DIRECTORY, fstat),
// getdents64 until it returns 0, closedir. The names come unsorted, "."
// and ".." dropped, as Python returns them.
func (p *pyos) listdir(dir string) (names []string, err error) {
	var fd int
	err = retry(func() (e error) {
		fd, e = unix.Open(dir, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_DIRECTORY, 0)
		return
	})
	p.logN("openat(%q, O_RDONLY|O_NONBLOCK|O_CLOEXEC|O_DIRECTORY)", fd, err, dir)
	if err != nil {
		return nil, fmt.Errorf("listdir %s: %w", dir, err)
	}
	defer func() {
		cerr := unix.Close(fd)
		p.log("close(%d)", cerr, fd)
		if err == nil && cerr != nil {
			err = fmt.Errorf("listdir %s: close: %w", dir, cerr)
		}
	}()
	var st unix.Stat_t
	if err := p.fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("listdir %s: fstat: %w", dir, err)
	}
	buf := make([]byte, 32768)
	for {
		var n int
		err := retry(func() (e error) { n, e = unix.Getdents(fd, buf); return })
		p.logN("getdents64(%d, %d)", n, err, fd, len(buf))
		if err != nil {
			return nil, fmt.Errorf("listdir %s: %w", dir, err)
		}
		if n == 0 {
			break
		}
		_, _, names = unix.ParseDirent(buf[:n], -1, names)
	}
	return names, nil
}

// sortedListdir is sorted(os.listdir(dir)): Python sorts by code point,
// which for UTF-8 names is byte order.
func (p *pyos) sortedListdir(dir string) ([]string, error) {
	names, err := p.listdir(dir)
	sort.Strings(names)
	return names, err
}

// pathMkdir is pathlib's Path.mkdir(parents=True, exist_ok=True): mkdir,
// on ENOENT the parents first and mkdir again, on any other error a stat
// that must find a dir.
func (p *pyos) pathMkdir(dir string) error {
	err := retry(func() error { return unix.Mkdir(dir, 0o777) })
	p.log("mkdir(%q, 0777)", err, dir)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.ENOENT) && filepath.Dir(dir) != dir:
		if err := p.pathMkdir(filepath.Dir(dir)); err != nil {
			return err
		}
		return p.pathMkdirOnce(dir)
	case p.isdir(dir):
		return nil
	}
	return fmt.Errorf("mkdir %s: %w", dir, err)
}

// pathMkdirOnce is Path.mkdir(exist_ok=True) without parents.
func (p *pyos) pathMkdirOnce(dir string) error {
	err := retry(func() error { return unix.Mkdir(dir, 0o777) })
	p.log("mkdir(%q, 0777)", err, dir)
	if err == nil || p.isdir(dir) {
		return nil
	}
	return fmt.Errorf("mkdir %s: %w", dir, err)
}

// writeAtomic is torch._inductor's write_atomic(path, content, make_dirs):
// write ".<pid>.<tid>.tmp" in the target's dir (text where content is a
// str), then rename it over the target. The tid stands for
// threading.get_ident(); only its uniqueness among running writers
// matters.
func (p *pyos) writeAtomic(path string, data []byte, makeDirs, text bool) error {
	dir := filepath.Dir(path)
	if makeDirs {
		if err := p.pathMkdir(dir); err != nil {
			return err
		}
	}
	tmp := filepath.Join(dir, "."+strconv.Itoa(os.Getpid())+"."+strconv.Itoa(unix.Gettid())+".tmp")
	if err := p.write(tmp, data, text); err != nil {
		return err
	}
	return p.replace(tmp, path)
}

// openFlags is os.open(path, flags, mode), logged with the flags named.
func (p *pyos) openFlags(path string, flags int, names string, mode uint32) (int, error) {
	var fd int
	err := retry(func() (e error) { fd, e = unix.Open(path, flags|unix.O_CLOEXEC, mode); return })
	p.logN("openat(%q, %s|O_CLOEXEC, %#o)", fd, err, path, names, mode)
	if err != nil {
		return -1, fmt.Errorf("open %s: %w", path, err)
	}
	return fd, nil
}

func (p *pyos) close(fd int) error {
	err := unix.Close(fd)
	p.log("close(%d)", err, fd)
	return err
}

// flock is fcntl.flock.
func (p *pyos) flock(fd, how int, name string) error {
	f := p.flockFn
	if f == nil {
		f = unix.Flock
	}
	err := retry(func() error { return f(fd, how) })
	p.log("flock(%d, %s)", err, fd, name)
	return err
}
