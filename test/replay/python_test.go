package replay

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"cargohold/test/cachetest"
)

// TestSyscallsMatchCPython runs testdata/triton_like.py (Triton's cache
// calls in Python) under strace and compares its syscalls with the
// replay's, for a hit and for a miss. The replay models CPython 3.11;
// other versions make different calls (3.14 drops the ioctl and lseeks),
// so the test needs that version, and strace.
func TestSyscallsMatchCPython(t *testing.T) {
	src := testdata(t, "vector-add-cache")
	traceOf := straceOf(t, "triton_like.py")
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

// straceOf finds python3 3.11 and strace (or skips, and fails in CI) and
// returns a function that runs testdata/script under strace and gives the
// normalized syscalls made between its begin and end markers.
func straceOf(t *testing.T, script string) func(args ...string) []string {
	t.Helper()
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
		// A CI python3 that is not 3.11 would leave the replay unchecked.
		if os.Getenv("CI") == "true" {
			t.Fatalf("the replay models CPython 3.11; python3 is %q (%v)", v, err)
		}
		t.Skipf("the replay models CPython 3.11; python3 is %s", v)
	}
	script, _ = filepath.Abs(filepath.Join("testdata", script))
	return func(args ...string) []string {
		t.Helper()
		out := filepath.Join(t.TempDir(), "strace")
		cmd := exec.Command(strace, append([]string{"-qq", "-o", out,
			"-e", "trace=stat,lstat,newfstatat,fstat,statx,mkdir,openat,ioctl,lseek,read,write,close,rename,rmdir,getdents64,flock,fchmod,unlink",
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
	straceOpenRE  = regexp.MustCompile(`^openat\(AT_FDCWD, ("(?:[^"\\]|\\.)*"), ([A-Z_|]+)(, 0[0-7]+)?\) = \d+$`)
	straceRWRE    = regexp.MustCompile(`^(read|write)\(\d+, .*, (\d+)\) = (\S+)$`)
	straceFdRE    = regexp.MustCompile(`^(ioctl|lseek|close)\(\d+(, TCGETS|, 0, SEEK_CUR)?.*\) = (\S+)$`)
	straceDentsRE = regexp.MustCompile(`^getdents64\(\d+, .*, (\d+)\) = (\S+)$`)
	straceFlockRE = regexp.MustCompile(`^(flock|fchmod)\(\d+, ([A-Z_|0-7]+)\) = (\S+)$`)
	tmpRE         = regexp.MustCompile(`tmp\.pid_\d+_[0-9a-f-]{36}|tmp\.[0-9a-f-]{36}|/\.\d+\.\d+\.tmp`)
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
	case straceDentsRE.MatchString(l):
		m := straceDentsRE.FindStringSubmatch(l)
		return "getdents64(FD, " + m[1] + ") = " + m[2]
	case straceFlockRE.MatchString(l):
		m := straceFlockRE.FindStringSubmatch(l)
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
		out[i] = tmpRE.ReplaceAllStringFunc(l, func(m string) string {
			if strings.HasPrefix(m, "/.") {
				return "/.X.tmp"
			}
			return "tmp.X"
		})
	}
	return out
}

// replayTrace is a replay's trace as strace would show it: descriptor
// numbers and tmp names normalized, the replay's own checks left out.
func replayTrace(trace []string) []string {
	trace = slices.DeleteFunc(slices.Clone(trace), func(l string) bool { return strings.Contains(l, "[replay only]") })
	return normalizeTmp(normalizeFDs(trace))
}

// TestTorchSyscallsMatchCPython runs testdata/torch_like.py (vLLM's and
// Inductor's cache calls in Python) under strace and compares its syscalls
// with the replay's: vLLM hits of both formats and misses of the binary
// one, Inductor hits and misses of every kind of unit.
func TestTorchSyscallsMatchCPython(t *testing.T) {
	traceOf := straceOf(t, "torch_like.py")
	for _, c := range []struct{ data, old, hash, name string }{
		{binaryData, binaryOldRoot, binaryHash, binaryName},
		{legacyData, legacyOldRoot, legacyHash, legacyName},
	} {
		_, root := relocated(t, c.data, c.old)
		py := traceOf("vllm-hit", root, c.hash, c.name)
		r, err := VLLMHit(root, c.hash, c.name, "")
		if err != nil {
			t.Fatal(err)
		}
		compareTraces(t, "vllm hit "+c.data, py, replayTrace(r.Trace))
	}
	src := cachetest.VLLMTestdata(t, binaryData)
	for _, atomic := range []bool{false, true} {
		fresh := filepath.Join(t.TempDir(), "vllm")
		py := traceOf("vllm-miss", fresh, binaryHash, binaryName, src, map[bool]string{true: "atomic", false: "inplace"}[atomic])
		if err := os.RemoveAll(fresh); err != nil {
			t.Fatal(err)
		}
		r, err := VLLMMiss(fresh, binaryHash, binaryName, src, atomic)
		if err != nil {
			t.Fatal(err)
		}
		compareTraces(t, fmt.Sprintf("vllm miss atomic=%v", atomic), py, replayTrace(r.Trace))
	}

	isrc := inductorSource(t)
	root := inductorServed(t, isrc)
	units := []string{fxUnitR4, aotUnit, wrapperSY, "mk/daced2c375a5dbfd18acb2d27eb2c6528fd9176a925e4c5b844e24d453cb60bf.best_config",
		"triton/0/" + cudaKey, timingsUnit, "locks/k.lock"}
	py := traceOf(append([]string{"inductor-hit", root}, units...)...)
	os.RemoveAll(filepath.Join(root, "locks")) // as it was before Python's run
	p := newPyos()
	for _, u := range units {
		if _, err := p.inductorHit(root, u, ""); err != nil {
			t.Fatal(err)
		}
	}
	compareTraces(t, "inductor hits", py, replayTrace(p.trace))

	fresh := filepath.Join(t.TempDir(), "inductor")
	py = traceOf(append([]string{"inductor-miss", fresh, isrc}, units...)...)
	if err := os.RemoveAll(fresh); err != nil {
		t.Fatal(err)
	}
	os.Mkdir(fresh, 0o755)
	p = newPyos()
	for _, u := range units {
		if err := p.inductorPut(fresh, u, isrc); err != nil {
			t.Fatal(err)
		}
	}
	compareTraces(t, "inductor misses", py, replayTrace(p.trace))
}
