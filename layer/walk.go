package layer

import (
	"archive/tar"
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/klauspost/compress/gzip"
	digest "github.com/opencontainers/go-digest"

	"cargohold/kind"
)

// Walk reads a whole layer blob as a stream (gzip, eStargz or plain tar) and
// calls fn for each regular file io.<kind>.cache/<unit>/<file> that its
// kind takes (kind.Classify), in layer order, with its kind (a layer of
// another tool may hold several: the caller picks); a file that appears
// twice is passed twice, and the later one wins as in tar extraction.
// content yields exactly f.Size bytes; what fn leaves unread is drained. f
// carries Name, Size and Mode only.
//
// For an eStargz blob the TOC comes last: Walk then checks the digest of
// every file it passed against the TOC and returns a *VerifyError if one
// disagrees, so a caller must treat what fn wrote as provisional until Walk
// returns nil. An error from fn is returned as is.
func Walk(r io.Reader, fn func(k kind.Kind, unit string, f File, content io.Reader) error) error {
	return WalkSkipped(r, fn, nil)
}

// WalkSkipped is Walk that also tells skipped the name of every entry
// outside the caches, or under a prefix but not taken by its kind (what an
// Index records in Skipped); skipped may be nil.
func WalkSkipped(r io.Reader, fn func(k kind.Kind, unit string, f File, content io.Reader) error, skipped func(name string)) error {
	br := bufio.NewReaderSize(r, 64<<10)
	head, _ := br.Peek(4)
	var src io.Reader = br
	gz := false
	switch {
	case bytes.HasPrefix(head, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return fmt.Errorf("layer: walk: gzip: %w", err)
		}
		defer zr.Close()
		src, gz = zr, true
	case len(head) == 4 && binary.LittleEndian.Uint32(head) == 0xfd2fb528:
		return fmt.Errorf("layer: walk: zstd-compressed layers are not supported")
	}
	tr := tar.NewReader(src)
	passed := map[string]passedFile{} // tar name -> what fn was given
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("layer: walk: %w", err)
		}
		if h.Typeflag == tar.TypeXGlobalHeader {
			continue
		}
		if gz && h.Name == estargz.TOCTarName {
			if err := checkWalkTOC(tr, h.Size, passed); err != nil {
				return err
			}
			continue
		}
		e, err := checkEntry(h.Name, tarType(h.Typeflag))
		if err != nil {
			return err
		}
		if e.p == placeSkip && skipped != nil {
			skipped(h.Name)
		}
		if e.p != placeFile {
			continue
		}
		sum := sha256.New()
		f := File{Name: e.file, Size: h.Size, Mode: uint32(h.Mode & 0o777)}
		if err := fn(e.kind, e.unit, f, io.TeeReader(tr, sum)); err != nil {
			return err
		}
		if _, err := io.Copy(sum, tr); err != nil {
			return fmt.Errorf("layer: walk: %s: %w", h.Name, err)
		}
		passed[h.Name] = passedFile{e.unit, e.file, digest.NewDigest(digest.SHA256, sum).String()}
	}
}

type passedFile struct{ key, file, digest string }

// checkWalkTOC compares the digests in an eStargz TOC with the files passed.
func checkWalkTOC(r io.Reader, size int64, passed map[string]passedFile) error {
	if size > maxTOCSize {
		return fmt.Errorf("layer: walk: TOC JSON of %d bytes, more than the %d allowed", size, maxTOCSize)
	}
	err := decodeTOC(json.NewDecoder(r), func(e *tocEntry) error {
		if e.Type != "reg" || e.Digest == "" {
			return nil
		}
		if p, ok := passed[e.Name]; ok && p.digest != e.Digest {
			return &VerifyError{Key: p.key, File: p.file,
				Err: fmt.Errorf("%w: digest %s, TOC says %s", ErrMismatch, p.digest, e.Digest)}
		}
		return nil
	})
	var ve *VerifyError
	if err != nil && !errors.As(err, &ve) {
		return fmt.Errorf("layer: walk: %w", err)
	}
	return err
}
