package replay

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"cargohold/triton"
)

// Miss replays a local compile of key into root: it writes the files of
// srcDir/KEY the way Triton's FileCacheManager.put does, group file last
// with its child paths rewritten to root, then reads the entry back with
// the HIT sequence and compares it with the source.
func Miss(root, key, srcDir string) error {
	_, err := newPyos().miss(root, key, srcDir)
	return err
}

func (p *pyos) miss(root, key, srcDir string) (Result, error) {
	start := time.Now()
	res := Result{Key: key, Outcome: OutcomeMiss}
	err := p.doMiss(&res, root, srcDir)
	return res, p.finish(&res, "miss", start, err)
}

func (p *pyos) doMiss(res *Result, root, srcDir string) error {
	if !triton.IsKey(res.Key) {
		return fmt.Errorf("%q is not a cache KEY", res.Key)
	}
	root, err := filepath.Abs(root)
	if err != nil {
		return err
	}
	name, err := p.putKey(root, res.Key, srcDir)
	if err != nil {
		return err
	}
	res.Name = name
	if err := p.doHit(res, root, name, srcDir); err != nil {
		return fmt.Errorf("read back: %w", err)
	}
	return nil
}

// putKey writes the files of srcDir/KEY into root/KEY as Triton's
// compile does, and says the name a HIT needs.
func (p *pyos) putKey(root, key, srcDir string) (string, error) {
	src := filepath.Join(srcDir, key)
	files, name, err := putOrder(src)
	if err != nil {
		return "", err
	}
	kd := filepath.Join(root, key)
	if _, _, err := p.makedirs(kd); err != nil {
		return "", err
	}
	for _, f := range files {
		data, err := os.ReadFile(filepath.Join(src, f))
		if err != nil {
			return "", fmt.Errorf("source: %w", err)
		}
		if triton.IsGroupFile(f) {
			// Triton writes the absolute paths put() returned.
			if data, err = triton.RewriteGroup(data, root); err != nil {
				return "", fmt.Errorf("source %s: %w", f, err)
			}
		}
		if err := p.put(kd, f, data); err != nil {
			return "", err
		}
	}
	return name, nil
}

// put is FileCacheManager.put: write into a fresh tmp dir, rename into
// the KEY dir, remove the tmp dir and try (and fail) to remove the KEY dir.
func (p *pyos) put(kd, name string, data []byte) error {
	tmp := filepath.Join(kd, "tmp.pid_"+strconv.Itoa(os.Getpid())+"_"+uuid4())
	if _, _, err := p.makedirs(tmp); err != nil {
		return err
	}
	if err := p.writeFile(filepath.Join(tmp, name), data); err != nil {
		return err
	}
	if err := p.replace(filepath.Join(tmp, name), filepath.Join(kd, name)); err != nil {
		return err
	}
	return p.removeTmp(tmp)
}

// putOrder lists a source KEY dir's files in the order Triton's compile()
// writes them: the group's children in group order, any other files, the
// group file last. name is what a HIT needs: the kernel name, or the
// launcher's .so when there is no group file.
func putOrder(src string) (files []string, name string, err error) {
	des, err := os.ReadDir(src)
	if err != nil {
		return nil, "", fmt.Errorf("source: %w", err)
	}
	var group string
	have := map[string]bool{}
	var sos []string
	for _, de := range des {
		n := de.Name()
		if !de.Type().IsRegular() {
			continue
		}
		switch {
		case triton.IsGroupFile(n) && group != "":
			return nil, "", fmt.Errorf("source %s holds several group files", src)
		case triton.IsGroupFile(n):
			group = n
		default:
			have[n] = true
			if strings.HasSuffix(n, ".so") {
				sos = append(sos, n)
			}
		}
	}
	if group != "" {
		data, err := os.ReadFile(filepath.Join(src, group))
		if err != nil {
			return nil, "", fmt.Errorf("source: %w", err)
		}
		children, err := triton.ParseGroup(data)
		if err != nil {
			return nil, "", fmt.Errorf("source %s: %w", group, err)
		}
		for _, c := range children {
			if have[c.Name] {
				files = append(files, c.Name)
				delete(have, c.Name)
			}
		}
		name = strings.TrimSuffix(strings.TrimPrefix(group, triton.GroupPrefix), triton.GroupSuffix)
	} else if len(sos) == 1 {
		name = sos[0]
	} else {
		return nil, "", fmt.Errorf("source %s holds neither a group file nor one launcher .so", src)
	}
	rest := make([]string, 0, len(have))
	for n := range have {
		rest = append(rest, n)
	}
	sort.Strings(rest)
	files = append(files, rest...)
	if group != "" {
		files = append(files, group)
	}
	return files, name, nil
}
