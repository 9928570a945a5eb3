package replay

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestSyscallsMatchCPython runs testdata/triton_like.py (Triton's cache
// calls in Python) under strace and compares its syscalls with the
// replay's, for a hit and for a miss. The replay models CPython 3.11;
// other versions make different calls (3.14 drops the ioctl and lseeks),
// so the test needs that version, and strace.
func TestSyscallsMatchCPython(t *testing.T) {
	strace, err1 := exec.LookPath("strace")
	python, err2 := exec.LookPath("python3")
	if err1 != nil || err2 != nil {
		// make test installs strace; it must not pass without this check.
		if os.Getenv("CI") == "true" {
			t.Fatalf("strace (%v) and python3 (%v) are needed in CI", err1, err2)
		}
		t.Skip("SKIPPED: needs strace and python3")
	}
	if v, err := exec.Command(python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])").Output(); err != nil || strings.TrimSpace(string(v)) != "3.11" {
		t.Skipf("the replay models CPython 3.11; python3 is %s", v)
	}
	src := testdata(t, "vector-add-cache")
	script, _ := filepath.Abs(filepath.Join("testdata", "triton_like.py"))
	traceOf := func(args ...string) []string {
		t.Helper()
		out := filepath.Join(t.TempDir(), "strace")
		cmd := exec.Command(strace, append([]string{"-qq", "-o", out,
			"-e", "trace=stat,lstat,newfstatat,fstat,statx,mkdir,openat,ioctl,lseek,read,write,close,rename,rmdir",
			python, script}, args...)...)
		if b, err := cmd.CombinedOutput(); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("strace does not run in CI (%v): %s", err, b)
			}
			t.Skipf("SKIPPED: strace does not run here (%v): %s", err, b)
		}
		data, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		var lines []string
		on := false
		for _, l := range strings.Split(string(data), "\n") {
			switch {
			case strings.Contains(l, "/__replay_begin__"):
				on = true
			case strings.Contains(l, "/__replay_end__"):
				on = false
			case on && l != "":
				lines = append(lines, normalizeStrace(l))
			}
		}
		return lines
	}

	root := extracted(t, src)
	py := traceOf("hit", root, cudaKey, "add_kernel")
	r, err := HitNamed(root, cudaKey, "add_kernel", src)
	if err != nil {
		t.Fatal(err)
	}
	compareTraces(t, "hit", py, normalizeTmp(normalizeFDs(r.Trace)))

	fresh := filepath.Join(t.TempDir(), "cache")
	py = traceOf("miss", fresh, cudaKey, "add_kernel", src)
	if err := os.RemoveAll(fresh); err != nil {
		t.Fatal(err)
	}
	p := newPyos()
	if _, err := p.miss(fresh, cudaKey, src); err != nil {
		t.Fatal(err)
	}
	compareTraces(t, "miss", py, normalizeTmp(normalizeFDs(p.trace)))
}

func compareTraces(t *testing.T, what string, py, replay []string) {
	t.Helper()
	if !slices.Equal(py, replay) {
		for i := range max(len(py), len(replay)) {
			var a, b string
			if i < len(py) {
				a = py[i]
			}
			if i < len(replay) {
				b = replay[i]
			}
			if a != b {
				t.Fatalf("%s: syscall %d differs:\n python: %s\n replay: %s", what, i, a, b)
			}
		}
	}
}

var (
	straceAlignRE = regexp.MustCompile(`\s+= `)
	straceErrRE   = regexp.MustCompile(` = -1 (E[A-Z]+) \(.*\)$`)
	straceStatRE  = regexp.MustCompile(`^(?:newfstatat|statx|stat|lstat)\((?:AT_FDCWD, )?("(?:[^"\\]|\\.)*"), .* = (\S+)$`)
	straceFstRE   = regexp.MustCompile(`^(?:newfstatat|statx)\((\d+), "", .* = (\S+)$|^fstat\((\d+), .* = (\S+)$`)
	straceOpenRE  = regexp.MustCompile(`^openat\(AT_FDCWD, ("(?:[^"\\]|\\.)*"), ([A-Z_|]+)(, 0666)?\) = \d+$`)
	straceRWRE    = regexp.MustCompile(`^(read|write)\(\d+, .*, (\d+)\) = (\S+)$`)
	straceFdRE    = regexp.MustCompile(`^(ioctl|lseek|close)\(\d+(, TCGETS|, 0, SEEK_CUR)?.*\) = (\S+)$`)
	tmpRE         = regexp.MustCompile(`tmp\.pid_\d+_[0-9a-f-]{36}`)
)

// normalizeStrace writes an strace line as the replay's trace does, with
// FD for descriptor numbers.
func normalizeStrace(l string) string {
	l = straceAlignRE.ReplaceAllString(l, " = ")
	l = straceErrRE.ReplaceAllString(l, " = $1")
	switch {
	case straceFstRE.MatchString(l):
		m := straceFstRE.FindStringSubmatch(l)
		return "fstat(FD) = " + m[2] + m[4]
	case straceStatRE.MatchString(l):
		m := straceStatRE.FindStringSubmatch(l)
		return "stat(" + m[1] + ") = " + m[2]
	case straceOpenRE.MatchString(l):
		m := straceOpenRE.FindStringSubmatch(l)
		return normalizeTmp([]string{"openat(" + m[1] + ", " + m[2] + m[3] + ") = FD"})[0]
	case straceRWRE.MatchString(l):
		m := straceRWRE.FindStringSubmatch(l)
		return m[1] + "(FD, " + m[2] + ") = " + m[3]
	case straceFdRE.MatchString(l):
		m := straceFdRE.FindStringSubmatch(l)
		return m[1] + "(FD" + m[2] + ") = " + m[3]
	}
	return normalizeTmp([]string{l})[0]
}

func normalizeTmp(trace []string) []string {
	out := make([]string, len(trace))
	for i, l := range trace {
		out[i] = tmpRE.ReplaceAllString(l, "tmp.X")
	}
	return out
}
