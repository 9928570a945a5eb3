package store

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"
)

// TestConcurrentPutOpen hammers a small store from many goroutines with
// puts and opens of the same and of different digests, so that eviction,
// pinning and racing Puts of one digest all happen at once.
func TestConcurrentPutOpen(t *testing.T) {
	const (
		blobs   = 12
		size    = 8 << 10
		workers = 8
		rounds  = 300
	)
	s := mustOpen(t, t.TempDir(), 5*size)
	var bs [blobs][]byte
	var ds [blobs]digest.Digest
	for i := range bs {
		bs[i], ds[i] = blob(i, size)
	}
	var wg sync.WaitGroup
	errc := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for range rounds {
				i := rng.IntN(blobs)
				if w%2 == 0 {
					i = rng.IntN(3) // half the workers fight over three digests
				}
				if err := s.Put(ds[i], bytes.NewReader(bs[i])); err != nil && !errors.Is(err, ErrFull) {
					errc <- err
					return
				}
				f, err := s.Open(ds[i])
				if errors.Is(err, fs.ErrNotExist) {
					continue // evicted by someone else meanwhile
				}
				if err != nil {
					errc <- err
					return
				}
				got, err := io.ReadAll(f)
				f.Close()
				if err != nil {
					errc <- err
					return
				}
				if digest.FromBytes(got) != ds[i] {
					errc <- errors.New("read content that does not match its digest")
					return
				}
				_ = s.Has(ds[rng.IntN(blobs)])
				if st := s.Stats(); st.Bytes > s.limit {
					errc <- errors.New("limit exceeded")
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	checkConsistent(t, s)
	if st := s.Stats(); st.Pinned != 0 || st.Evictions == 0 {
		t.Fatalf("stats after the run: %+v", st)
	}
}
