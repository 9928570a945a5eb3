package proxy

import (
	"io"
	"net/http"
	"strings"
)

// flip is a FlipByte rule.
type flip struct {
	substr string
	offset int64
}

// offsetsFor returns the body offsets that rules corrupt in a response to
// path.
func offsetsFor(rules []flip, path string) []int64 {
	var offs []int64
	for _, f := range rules {
		if strings.Contains(path, f.substr) {
			offs = append(offs, f.offset)
		}
	}
	return offs
}

// writer counts the status and body bytes sent to the client and corrupts
// the bytes at flips, body offsets of a 2xx response.
type writer struct {
	http.ResponseWriter
	out     io.Writer       // where body bytes go: the ResponseWriter, or paced (SetRate)
	link    *link           // bandwidth cap
	closing <-chan struct{} // the proxy closes: a wait for the link ends
	gone    <-chan struct{} // the client went away: likewise
	flips   []int64
	status  int
	n       int64
	flipped bool
}

func (w *writer) WriteHeader(code int) {
	// 1xx responses are interim; the final status comes later.
	if w.status == 0 && code >= 200 {
		w.status = code
		if code >= 300 {
			w.flips = nil
		}
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *writer) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	out := p
	for _, off := range w.flips {
		if off >= w.n && off < w.n+int64(len(p)) {
			if &out[0] == &p[0] {
				// The caller's buffer is not ours to change.
				out = append([]byte(nil), p...)
			}
			out[off-w.n] ^= 0xff
			w.flipped = true
		}
	}
	dst := w.out
	if dst == nil {
		dst = w.ResponseWriter
	}
	written := 0
	for written < len(out) {
		chunk := out[written:min(len(out), written+linkChunk)]
		if !w.link.wait(len(chunk), w.closing, w.gone) {
			return written, http.ErrAbortHandler
		}
		n, err := dst.Write(chunk)
		written += n
		w.n += int64(n)
		if err != nil {
			return written, err
		}
	}
	return written, nil
}

// Flush passes flushes through so streamed responses stream.
func (w *writer) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the connection's writer.
func (w *writer) Unwrap() http.ResponseWriter { return w.ResponseWriter }
