package resolver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"
)

// ErrStalled: a registry request got no answer, or its body no bytes, for
// Options.Timeout. Errors wrapping it wrap context.DeadlineExceeded too.
var ErrStalled = errors.New("stalled")

// watch sends req through next with a watchdog: the response headers must
// come within d, and then the body must never go d without a byte (a large
// body on a slow link is fine as long as it moves). The watchdog cancels the
// request with ErrStalled as cause; errors then say so. A request with a
// body (an upload) is not watched: its answer waits for the upload.
func watch(next func(*http.Request) (*http.Response, error), req *http.Request, d time.Duration) (*http.Response, error) {
	if d <= 0 || (req.Body != nil && req.Body != http.NoBody) {
		return next(req)
	}
	ctx, cancel := context.WithCancelCause(req.Context())
	// It is a deadline that passed, too (not a caller's cancel).
	stall := fmt.Errorf("%w: no answer or body bytes from %s for %v: %w", ErrStalled, req.URL.Host, d, context.DeadlineExceeded)
	w := &watchedBody{ctx: ctx, cancel: cancel, d: d}
	w.t = time.AfterFunc(d, func() { cancel(stall) })
	resp, err := next(req.WithContext(ctx))
	if err != nil {
		w.stop()
		if errors.Is(context.Cause(ctx), ErrStalled) {
			err = fmt.Errorf("%s %s: %w", req.Method, req.URL.Redacted(), context.Cause(ctx))
		}
		return nil, err
	}
	w.rc = resp.Body
	resp.Body = w
	return resp, nil
}

// watchedBody re-arms the watchdog on every read that returns bytes and
// stops it at the end of the body.
type watchedBody struct {
	rc     io.ReadCloser
	ctx    context.Context
	cancel context.CancelCauseFunc
	d      time.Duration

	once sync.Once
	t    *time.Timer
}

func (w *watchedBody) Read(p []byte) (int, error) {
	n, err := w.rc.Read(p)
	if n > 0 {
		w.t.Reset(w.d)
	}
	if err != nil {
		if err != io.EOF && errors.Is(context.Cause(w.ctx), ErrStalled) {
			err = context.Cause(w.ctx)
		}
		if err == io.EOF {
			w.t.Stop()
		}
	}
	return n, err
}

func (w *watchedBody) Close() error {
	err := w.rc.Close()
	w.stop()
	return err
}

// stop ends the watch and releases the request's context.
func (w *watchedBody) stop() {
	w.once.Do(func() {
		w.t.Stop()
		w.cancel(nil)
	})
}
