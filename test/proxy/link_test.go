package proxy

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"
)

// TestBandwidth: the cap holds over concurrent responses together, and
// bodies stay intact.
func TestBandwidth(t *testing.T) {
	e := newEnv(t)
	img := e.push(t, "test/img:v1")
	ds := layerDigests(t, img)
	full := e.blob(t, "test/img", ds[0])
	const rate = 8 << 10 // bytes/s
	e.p.SetBandwidth(rate)
	url := fmt.Sprintf("%s/v2/test/img/blobs/%s", e.p.URL, ds[0])
	// 4 responses of 1 KiB: 4 KiB at 8 KiB/s take at least 0.5s.
	const n, size = 4, 1 << 10
	if len(full) < size {
		t.Fatalf("layer of %d bytes", len(full))
	}
	start := time.Now()
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			resp, body, err := e.get(t.Context(), url, http.Header{"Range": {fmt.Sprintf("bytes=0-%d", size-1)}})
			switch {
			case err != nil:
				errs[i] = err
			case resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, full[:size]):
				errs[i] = fmt.Errorf("%s, %d bytes", resp.Status, len(body))
			}
		})
	}
	wg.Wait()
	took := time.Since(start)
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if want := time.Duration(n * size * int64(time.Second) / rate); took < want {
		t.Fatalf("%d bytes under a %d bytes/s cap took %v, want at least %v", n*size, rate, took, want)
	}
	// Removing the cap: quick again.
	e.p.SetBandwidth(0)
	start = time.Now()
	if _, _, err := e.get(t.Context(), url, http.Header{"Range": {fmt.Sprintf("bytes=0-%d", size-1)}}); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("uncapped GET took %v", took)
	}
}

// TestStallRanges: large ranges wait, small ones and requests without a
// Range pass, until the stall ends.
func TestStallRanges(t *testing.T) {
	e := newEnv(t)
	img := e.push(t, "test/img:v1")
	d := layerDigests(t, img)[0]
	url := fmt.Sprintf("%s/v2/test/img/blobs/%s", e.p.URL, d)
	e.p.SetStallRanges(100)
	for _, h := range []http.Header{{"Range": {"bytes=0-99"}}, nil} {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		resp, _, err := e.get(ctx, url, h)
		cancel()
		if err != nil || resp.StatusCode/100 != 2 {
			t.Fatalf("GET with Range %v during a range stall: %v %v", h, resp, err)
		}
	}
	res := make(chan error, 1)
	go func() {
		_, _, err := e.get(t.Context(), url, http.Header{"Range": {"bytes=0-100"}})
		res <- err
	}()
	waitPending(t, e.p, 1)
	select {
	case err := <-res:
		t.Fatalf("101-byte range answered during the stall: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	e.p.SetStallRanges(0)
	if err := <-res; err != nil {
		t.Fatalf("released range: %v", err)
	}
}

func TestRangeLen(t *testing.T) {
	for h, want := range map[string]int64{"bytes=0-99": 100, "bytes=5-5": 1, "": 0, "bytes=5-": 0, "bytes=0-1,4-5": 0, "bytes=9-1": 0} {
		if got := rangeLen(h); got != want {
			t.Errorf("rangeLen(%q) = %d, want %d", h, got, want)
		}
	}
}
