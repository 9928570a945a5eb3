package fs

import (
	"bufio"
	"fmt"
	"os"
	"strings"
)

// MountType says whether the absolute, clean path mp is a mount point in
// this mount namespace, and its file system type ("fuse.cargohold" for a
// cargohold-fs mount).
func MountType(mp string) (string, bool) {
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
