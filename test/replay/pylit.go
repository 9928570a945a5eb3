package replay

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// The Python literals vLLM writes to vllm_compile_cache.py (pprint of a
// dict) and reads back with ast.literal_eval: dicts, tuples, lists,
// strings, numbers, None, True, False. Parsing them strictly lets the replay
// fail where literal_eval would.
type (
	pyTuple []any
	pyList  []any
	pyDict  []pyItem // in file order
	pyNum   string   // a number as written
	pyConst string   // None, True or False
)

type pyItem struct{ K, V any }

// parsePyLiteral parses one Python literal that makes up all of data.
func parsePyLiteral(data []byte) (any, error) {
	if !utf8.Valid(data) {
		return nil, fmt.Errorf("python literal: not UTF-8")
	}
	l := &pyLexer{s: string(data)}
	v, err := l.value(0)
	if err != nil {
		return nil, err
	}
	l.space()
	if l.i != len(l.s) {
		return nil, l.errorf("trailing text")
	}
	return v, nil
}

type pyLexer struct {
	s string
	i int
}

func (l *pyLexer) errorf(format string, args ...any) error {
	line := 1 + strings.Count(l.s[:l.i], "\n")
	return fmt.Errorf("python literal: line %d: %s", line, fmt.Sprintf(format, args...))
}

// space skips blanks, newlines and comments.
func (l *pyLexer) space() {
	for l.i < len(l.s) {
		switch c := l.s[l.i]; {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f':
			l.i++
		case c == '\\' && strings.HasPrefix(l.s[l.i:], "\\\n"):
			l.i += 2
		case c == '#':
			for l.i < len(l.s) && l.s[l.i] != '\n' {
				l.i++
			}
		default:
			return
		}
	}
}

const maxPyDepth = 64

func (l *pyLexer) value(depth int) (any, error) {
	if depth > maxPyDepth {
		return nil, l.errorf("nested too deep")
	}
	l.space()
	if l.i == len(l.s) {
		return nil, l.errorf("unexpected end")
	}
	switch c := l.s[l.i]; {
	case c == '{':
		return l.dict(depth)
	case c == '(':
		return l.seq(depth, ')')
	case c == '[':
		return l.seq(depth, ']')
	case c == '\'' || c == '"':
		// Adjacent string literals concatenate, as in Python source.
		var b strings.Builder
		for l.i < len(l.s) && (l.s[l.i] == '\'' || l.s[l.i] == '"') {
			s, err := l.str()
			if err != nil {
				return nil, err
			}
			b.WriteString(s)
			l.space()
		}
		return b.String(), nil
	case c == '-' || c == '+' || c == '.' || (c >= '0' && c <= '9'):
		return l.num()
	case strings.HasPrefix(l.s[l.i:], "None"), strings.HasPrefix(l.s[l.i:], "True"):
		l.i += 4
		return pyConst(l.s[l.i-4 : l.i]), nil
	case strings.HasPrefix(l.s[l.i:], "False"):
		l.i += 5
		return pyConst("False"), nil
	}
	return nil, l.errorf("unexpected %q", l.s[l.i])
}

func (l *pyLexer) num() (any, error) {
	start := l.i
	if l.s[l.i] == '-' || l.s[l.i] == '+' {
		l.i++
	}
	for l.i < len(l.s) && strings.IndexByte("0123456789._eExXabcdefABCDEFoO+-", l.s[l.i]) >= 0 {
		if (l.s[l.i] == '+' || l.s[l.i] == '-') && !strings.ContainsAny(l.s[l.i-1:l.i], "eE") {
			break
		}
		l.i++
	}
	n := strings.ReplaceAll(l.s[start:l.i], "_", "")
	if _, err := strconv.ParseFloat(n, 64); err != nil {
		if _, err := strconv.ParseInt(n, 0, 64); err != nil {
			return nil, l.errorf("bad number %q", l.s[start:l.i])
		}
	}
	return pyNum(n), nil
}

// seq parses a tuple or list. A parenthesized single value without a comma
// is that value, not a tuple.
func (l *pyLexer) seq(depth int, end byte) (any, error) {
	l.i++
	var items []any
	comma := false
	for {
		l.space()
		if l.i < len(l.s) && l.s[l.i] == end {
			l.i++
			break
		}
		v, err := l.value(depth + 1)
		if err != nil {
			return nil, err
		}
		items = append(items, v)
		l.space()
		if l.i < len(l.s) && l.s[l.i] == ',' {
			l.i++
			comma = true
			continue
		}
		if l.i < len(l.s) && l.s[l.i] == end {
			l.i++
			break
		}
		return nil, l.errorf("want ',' or %q", end)
	}
	if end == ']' {
		return pyList(items), nil
	}
	if len(items) == 1 && !comma {
		return items[0], nil
	}
	return pyTuple(items), nil
}

func (l *pyLexer) dict(depth int) (any, error) {
	l.i++
	var d pyDict
	for {
		l.space()
		if l.i < len(l.s) && l.s[l.i] == '}' {
			l.i++
			return d, nil
		}
		k, err := l.value(depth + 1)
		if err != nil {
			return nil, err
		}
		l.space()
		if l.i >= len(l.s) || l.s[l.i] != ':' {
			return nil, l.errorf("want ':'")
		}
		l.i++
		v, err := l.value(depth + 1)
		if err != nil {
			return nil, err
		}
		d = append(d, pyItem{k, v})
		l.space()
		if l.i < len(l.s) && l.s[l.i] == ',' {
			l.i++
			continue
		}
		if l.i < len(l.s) && l.s[l.i] == '}' {
			l.i++
			return d, nil
		}
		return nil, l.errorf("want ',' or '}'")
	}
}

// str parses one quoted string (no prefixes, no triple quotes: repr never
// writes them) with Python's escapes.
func (l *pyLexer) str() (string, error) {
	q := l.s[l.i]
	l.i++
	var b strings.Builder
	for {
		if l.i >= len(l.s) || l.s[l.i] == '\n' {
			return "", l.errorf("unterminated string")
		}
		c := l.s[l.i]
		l.i++
		switch {
		case c == q:
			return b.String(), nil
		case c != '\\':
			b.WriteByte(c)
			continue
		}
		if l.i >= len(l.s) {
			return "", l.errorf("unterminated string")
		}
		e := l.s[l.i]
		l.i++
		switch e {
		case '\\', '\'', '"':
			b.WriteByte(e)
		case 'n':
			b.WriteByte('\n')
		case 't':
			b.WriteByte('\t')
		case 'r':
			b.WriteByte('\r')
		case '\n':
		case 'x', 'u', 'U':
			n := map[byte]int{'x': 2, 'u': 4, 'U': 8}[e]
			if l.i+n > len(l.s) {
				return "", l.errorf("bad \\%c escape", e)
			}
			r, err := strconv.ParseUint(l.s[l.i:l.i+n], 16, 32)
			if err != nil || r > utf8.MaxRune {
				return "", l.errorf("bad \\%c escape", e)
			}
			l.i += n
			b.WriteRune(rune(r))
		default:
			return "", l.errorf("unsupported escape \\%c", e)
		}
	}
}

// pyRepr writes v back as Python's repr would, closely enough to compare
// two parsed literals.
func pyRepr(v any) string {
	switch v := v.(type) {
	case string:
		return strconv.Quote(v)
	case pyNum:
		return string(v)
	case pyConst:
		return string(v)
	case pyTuple:
		parts := make([]string, len(v))
		for i, x := range v {
			parts[i] = pyRepr(x)
		}
		if len(parts) == 1 {
			return "(" + parts[0] + ",)"
		}
		return "(" + strings.Join(parts, ", ") + ")"
	case pyList:
		parts := make([]string, len(v))
		for i, x := range v {
			parts[i] = pyRepr(x)
		}
		return "[" + strings.Join(parts, ", ") + "]"
	case pyDict:
		parts := make([]string, len(v))
		for i, it := range v {
			parts[i] = pyRepr(it.K) + ": " + pyRepr(it.V)
		}
		return "{" + strings.Join(parts, ", ") + "}"
	}
	return fmt.Sprintf("<%T>", v)
}
