package triton

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path"
	"strings"
)

// GroupPrefix and GroupSuffix frame a group file's name: __grp__<name>.json.
const (
	GroupPrefix = "__grp__"
	GroupSuffix = ".json"
)

// ImageRoot is the root that group files' child paths were stored under in
// images of cargohold before cache kinds: ".triton/cache/<KEY>/<file>", the
// relative form the original tool's successor restores. Images now store
// group files as they are (the build host's absolute paths); RewriteGroup
// takes either form.
const ImageRoot = ".triton/cache"

// IsGroupFile reports whether a file name is a group file.
func IsGroupFile(name string) bool {
	return strings.HasPrefix(name, GroupPrefix) && strings.HasSuffix(name, GroupSuffix)
}

// Child is one member of a group file, in file order.
type Child struct {
	Name string // file name, the map key
	Path string // the path as written
}

// ParseGroup reads a group file's child paths in file order.
func ParseGroup(data []byte) ([]Child, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil {
		return nil, fmt.Errorf("triton: group file: %w", err)
	}
	raw, ok := top["child_paths"]
	if !ok {
		return nil, fmt.Errorf("triton: group file has no child_paths")
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, fmt.Errorf("triton: group file: child_paths is not an object")
	}
	var out []Child
	for dec.More() {
		var c Child
		tok, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("triton: group file: %w", err)
		}
		c.Name, _ = tok.(string)
		if err := dec.Decode(&c.Path); err != nil {
			return nil, fmt.Errorf("triton: group file: child %q: %w", c.Name, err)
		}
		out = append(out, c)
	}
	return out, nil
}

// RewriteGroup rewrites every child path of a group file to
// root/<KEY>/<file>, keeping the members' order, and writes the file the way
// Python's json.dumps does. KEY and file are the last two elements of the old
// path, so absolute paths from the compiling machine and the image's relative
// form both work. root may be relative (ImageRoot).
func RewriteGroup(data []byte, root string) ([]byte, error) {
	children, err := ParseGroup(data)
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	b.WriteString(`{"child_paths": {`)
	for i, c := range children {
		dir, file := path.Split(strings.TrimRight(c.Path, "/"))
		key := path.Base(strings.TrimRight(dir, "/"))
		if !IsKey(key) || file == "" {
			return nil, fmt.Errorf("triton: group file: child %q: path %q does not end in <KEY>/<file>", c.Name, c.Path)
		}
		if i > 0 {
			b.WriteString(", ")
		}
		writeJSONString(&b, c.Name)
		b.WriteString(": ")
		writeJSONString(&b, strings.TrimRight(root, "/")+"/"+key+"/"+file)
	}
	b.WriteString("}}")
	// Keep trailing whitespace (a final newline) as it was.
	b.Write(data[len(bytes.TrimRight(data, " \t\r\n")):])
	return b.Bytes(), nil
}

// writeJSONString quotes s as Python's json.dumps does (ensure_ascii).
func writeJSONString(b *bytes.Buffer, s string) {
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"':
			b.WriteString(`\"`)
		case r == '\\':
			b.WriteString(`\\`)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x20 || r > 0x7e:
			if r > 0xffff {
				r -= 0x10000
				fmt.Fprintf(b, `\u%04x\u%04x`, 0xd800+(r>>10), 0xdc00+(r&0x3ff))
			} else {
				fmt.Fprintf(b, `\u%04x`, r)
			}
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
}
