package cli

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/term"
)

// Progress draws a one-line bar for a transfer on a terminal and nothing
// otherwise, so logs and CI output stay clean.
type Progress struct {
	w     io.Writer
	label string
	on    bool

	mu   sync.Mutex
	last time.Time
}

// NewProgress returns a bar that draws only when w is a terminal.
func NewProgress(w io.Writer, label string) *Progress {
	f, ok := w.(*os.File)
	return &Progress{w: w, label: label, on: ok && term.IsTerminal(int(f.Fd()))}
}

// Update draws done of total bytes, at most ten times a second.
func (p *Progress) Update(done, total int64) {
	if p == nil || !p.on {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if time.Since(p.last) < 100*time.Millisecond && done < total {
		return
	}
	p.last = time.Now()
	const width = 30
	frac := 0.0
	if total > 0 {
		frac = float64(done) / float64(total)
	}
	n := int(frac * width)
	fmt.Fprintf(p.w, "\r%s [%s%s] %s/%s", p.label, strings.Repeat("=", n), strings.Repeat(" ", width-n), Bytes(done), Bytes(total))
}

// Done ends the bar's line.
func (p *Progress) Done() {
	if p != nil && p.on {
		fmt.Fprintln(p.w)
	}
}

// Bytes formats a byte count for people: 1.5 MiB.
func Bytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
