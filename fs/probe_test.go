package fs

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// probe is another process looking at the mount. The kernel keeps its
// caches per mount, not per process: what one process changes must show to
// every other at once, and a probe checks that from outside the process
// that serves the mount (and makes the changes).
type probe struct {
	t   *testing.T
	in  io.WriteCloser
	out *bufio.Reader
}

// startProbe starts this test binary as TestHelperProbe; it is stopped at
// cleanup.
func startProbe(t *testing.T) *probe {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProbe$", "-test.count=1")
	cmd.Env = append(os.Environ(), "CARGOHOLD_FS_PROBE=1")
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		in.Close()
		cmd.Wait()
	})
	p := &probe{t: t, in: in, out: bufio.NewReader(out)}
	if got := p.do("hello"); got != "hello" {
		t.Fatalf("probe: %q", got)
	}
	return p
}

// do sends one command and returns the probe's one-line answer.
func (p *probe) do(args ...string) string {
	p.t.Helper()
	if _, err := fmt.Fprintln(p.in, strings.Join(args, "\t")); err != nil {
		p.t.Fatalf("probe %v: %v", args, err)
	}
	line, err := p.out.ReadString('\n')
	if err != nil {
		p.t.Fatalf("probe %v: %v", args, err)
	}
	return strings.TrimSuffix(line, "\n")
}

// stat is what the probe's stat(2) of path says: "size=… mode=… mtime=…
// nlink=…", or "ENOENT" and the like.
func (p *probe) stat(path string) string { return p.do("stat", path) }

// read is the content the probe reads from path, quoted, or the errno.
func (p *probe) read(path string) string { return p.do("read", path) }

// statOf formats a stat as the probe does, for comparing with the truth
// (the upper dir, looked at directly).
func statOf(st *syscall.Stat_t) string {
	return fmt.Sprintf("size=%d mode=%o mtime=%d.%09d nlink=%d", st.Size, st.Mode, st.Mtim.Sec, st.Mtim.Nsec, st.Nlink)
}

// TestHelperProbe answers a probe's commands, one a line, tab-separated:
// stat PATH, read PATH, open NAME PATH, pread NAME, close NAME, ls DIR. It
// runs only as a probe (startProbe).
func TestHelperProbe(t *testing.T) {
	if os.Getenv("CARGOHOLD_FS_PROBE") == "" {
		t.Skip("helper process of the visibility tests")
	}
	fds := map[string]*os.File{}
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		args := strings.Split(in.Text(), "\t")
		fmt.Println(probeAnswer(args, fds))
	}
}

func probeAnswer(args []string, fds map[string]*os.File) string {
	errno := func(err error) string {
		var e syscall.Errno
		if errors.As(err, &e) {
			return e.Error()
		}
		return err.Error()
	}
	switch {
	case args[0] == "hello":
		return "hello"
	case args[0] == "stat" && len(args) == 2:
		var st syscall.Stat_t
		if err := syscall.Stat(args[1], &st); err != nil {
			return errno(err)
		}
		return statOf(&st)
	case args[0] == "read" && len(args) == 2:
		data, err := os.ReadFile(args[1])
		if err != nil {
			return errno(err)
		}
		return strconv.Quote(string(data))
	case args[0] == "open" && len(args) == 3:
		f, err := os.Open(args[2])
		if err != nil {
			return errno(err)
		}
		fds[args[1]] = f
		return "ok"
	case args[0] == "pread" && len(args) == 2:
		f := fds[args[1]]
		fi, err := f.Stat()
		if err != nil {
			return errno(err)
		}
		buf := make([]byte, fi.Size()+1)
		n, err := f.ReadAt(buf, 0)
		if err != nil && !errors.Is(err, io.EOF) {
			return errno(err)
		}
		return strconv.Quote(string(buf[:n]))
	case args[0] == "close" && len(args) == 2:
		fds[args[1]].Close()
		delete(fds, args[1])
		return "ok"
	case args[0] == "ls" && len(args) == 2:
		des, err := os.ReadDir(args[1])
		if err != nil {
			return errno(err)
		}
		var names []string
		for _, de := range des {
			names = append(names, de.Name())
		}
		slices.Sort(names)
		return strings.Join(names, ",")
	}
	return fmt.Sprintf("bad command %q", args)
}
