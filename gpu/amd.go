package gpu

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// EnvHSAOverride is ROCm's variable that makes every GPU report another
// gfx version ("9.0.10" for gfx90a); ROCm, and so Triton, then compile for
// that version, so detection applies it too.
const EnvHSAOverride = "HSA_OVERRIDE_GFX_VERSION"

// kfdNodes is the KFD topology under the sysfs root: one directory per
// node (CPUs and GPUs), each with a "properties" file of "key value" lines.
// Reading it needs no ROCm library.
const kfdNodes = "sys/class/kfd/kfd/topology/nodes"

// gfxVersion is a GPU ISA version, major.minor.stepping.
type gfxVersion struct{ major, minor, stepping int }

// arch prints the name Triton uses: "gfx" + decimal major + hex minor +
// hex stepping, so 9.0.10 is gfx90a and 11.0.0 is gfx1100.
func (v gfxVersion) arch() string {
	return fmt.Sprintf("gfx%d%x%x", v.major, v.minor, v.stepping)
}

func (v gfxVersion) valid() bool {
	return v.major > 0 && v.minor >= 0 && v.minor < 16 && v.stepping >= 0 && v.stepping < 16
}

// gfxFromTarget decodes KFD's gfx_target_version, major*10000 +
// minor*100 + stepping (90010 is 9.0.10).
func gfxFromTarget(n int) gfxVersion {
	return gfxVersion{major: n / 10000, minor: n / 100 % 100, stepping: n % 100}
}

// parseHSAOverride reads "major.minor.stepping" as ROCm takes it.
func parseHSAOverride(s string) (gfxVersion, error) {
	parts := strings.Split(strings.TrimSpace(s), ".")
	if len(parts) != 3 {
		return gfxVersion{}, fmt.Errorf("want major.minor.stepping like 9.0.10")
	}
	var n [3]int
	for i, p := range parts {
		v, err := strconv.Atoi(p)
		if err != nil || v < 0 {
			return gfxVersion{}, fmt.Errorf("want major.minor.stepping like 9.0.10")
		}
		n[i] = v
	}
	v := gfxVersion{n[0], n[1], n[2]}
	if !v.valid() {
		return gfxVersion{}, fmt.Errorf("version %d.%d.%d has no gfx name", v.major, v.minor, v.stepping)
	}
	return v, nil
}

// kfdNode is one topology node.
type kfdNode struct {
	id    int
	props map[string]int64
	name  string
}

// detectAMD lists AMD GPUs from the KFD topology under root and gives the
// report line. Only a malformed hsaOverride is an error: a host without
// the topology, or with unreadable nodes, is reported, not failed.
func detectAMD(root, hsaOverride string) ([]Device, string, error) {
	var override *gfxVersion
	if strings.TrimSpace(hsaOverride) != "" {
		v, err := parseHSAOverride(hsaOverride)
		if err != nil {
			return nil, "", fmt.Errorf("gpu: %s=%q: %w", EnvHSAOverride, hsaOverride, err)
		}
		override = &v
	}

	dir := filepath.Join(root, kfdNodes)
	nodes, problems, err := readKFD(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, "no AMD GPU: no KFD topology at " + dir, nil
	}
	if err != nil {
		return nil, "no AMD GPU: " + err.Error(), nil
	}

	var devs []Device
	for _, n := range nodes {
		gtv, simds := n.props["gfx_target_version"], n.props["simd_count"]
		if gtv == 0 || simds == 0 {
			continue // a CPU node
		}
		v := gfxFromTarget(int(gtv))
		if override != nil {
			v = *override
		}
		if !v.valid() {
			problems = append(problems, fmt.Sprintf("node %d: gfx_target_version %d has no gfx name", n.id, gtv))
			continue
		}
		arch := v.arch()
		name := n.name
		if name == "" {
			name = arch
		}
		devs = append(devs, Device{
			Index:   len(devs),
			Backend: "hip",
			Name:    name,
			Target:  Target{Backend: "hip", Arch: arch, WarpSize: DefaultWarpSize("hip", arch)},
		})
	}

	var line string
	if len(devs) == 0 {
		line = "no AMD GPU: KFD topology has no GPU node"
	} else {
		line = fmt.Sprintf("KFD: %d GPU(s)", len(devs))
		if override != nil {
			line += fmt.Sprintf(", %s=%s applied", EnvHSAOverride, strings.TrimSpace(hsaOverride))
		}
	}
	if len(problems) > 0 {
		line += "; " + strings.Join(problems, "; ")
	}
	return devs, line, nil
}

// readKFD reads every node directory in node-number order, which is the
// order ROCm numbers its agents in. Nodes that cannot be read are listed
// as problems.
func readKFD(dir string) ([]kfdNode, []string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil, fmt.Errorf("read KFD topology: %w", err)
	}
	var nodes []kfdNode
	var problems []string
	for _, e := range ents {
		id, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, e.Name(), "properties"))
		if err != nil {
			problems = append(problems, fmt.Sprintf("node %d: %v", id, err))
			continue
		}
		n := kfdNode{id: id, props: parseProperties(data)}
		if name, err := os.ReadFile(filepath.Join(dir, e.Name(), "name")); err == nil {
			n.name = strings.TrimSpace(string(name))
		}
		nodes = append(nodes, n)
	}
	sort.Slice(nodes, func(i, j int) bool { return nodes[i].id < nodes[j].id })
	return nodes, problems, nil
}

// parseProperties reads "key value" lines; lines that are not a key and
// an integer are skipped.
func parseProperties(data []byte) map[string]int64 {
	props := map[string]int64{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 2 {
			continue
		}
		if v, err := strconv.ParseInt(f[1], 10, 64); err == nil {
			props[f[0]] = v
		}
	}
	return props
}
