package layer

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	digest "github.com/opencontainers/go-digest"

	"cargohold/triton"
)

// Built describes a layer written by Build.
type Built struct {
	Digest           digest.Digest // of the compressed blob
	DiffID           digest.Digest // of the uncompressed tar
	TOCDigest        digest.Digest // of the eStargz TOC JSON
	Size             int64         // compressed
	UncompressedSize int64
}

// Annotations are the layer descriptor annotations of an eStargz layer.
func (b Built) Annotations() map[string]string {
	return map[string]string{
		AnnotationTOCDigest:        b.TOCDigest.String(),
		AnnotationUncompressedSize: strconv.FormatInt(b.UncompressedSize, 10),
	}
}

// Fixed build parameters: changing any of them changes every image digest.
const (
	compressionLevel = 6       // gzip's default: level 9 costs about twice the time for ~1% less
	chunkSize        = 4 << 20 // estargz's default, written down so it cannot drift
	maxGroupFileSize = 16 << 20
)

// epoch is every entry's mtime.
var epoch = time.Unix(0, 0)

// Build writes the eStargz layer of a Triton cache dir to w: a no-prefetch
// landmark (as estargz.Build writes it), io.triton.cache/, then per KEY in
// the order of entries (the layer's order, which the caller decides:
// image.Pack sorts them, or puts an access order first) its dir and its
// files in sorted order. Entries carry mtime 0,
// uid/gid 0, no owner names, mode 0755 (dirs, executables) or 0644. Group
// files are stored with child paths rewritten to triton.ImageRoot. entries
// come from triton.Scan(dir); files are read again, without following
// symlinks.
func Build(ctx context.Context, w io.Writer, dir string, entries []triton.Entry) (Built, error) {
	es := entries
	seen := make(map[string]bool, len(es))
	for _, e := range es {
		if !triton.IsKey(e.Key) {
			return Built{}, fmt.Errorf("layer: build: %q is not a cache KEY", e.Key)
		}
		if seen[e.Key] {
			return Built{}, fmt.Errorf("layer: build: KEY %s listed twice", e.Key)
		}
		seen[e.Key] = true
	}

	out := &countWriter{w: w, h: sha256.New()}
	comp := &countingCompressor{GzipCompressor: estargz.NewGzipCompressorWithLevel(compressionLevel)}
	sw := estargz.NewWriterWithCompressor(out, comp) // sequential, unlike estargz.Build
	sw.ChunkSize = chunkSize

	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := writeTar(ctx, pw, dir, es)
		pw.CloseWithError(err)
		done <- err
	}()
	err := sw.AppendTar(pr)
	pr.Close() // unblocks writeTar if AppendTar stopped early
	if werr := <-done; werr != nil && !errors.Is(werr, io.ErrClosedPipe) {
		return Built{}, fmt.Errorf("layer: build: %w", werr)
	}
	if err != nil {
		return Built{}, fmt.Errorf("layer: build: estargz: %w", err)
	}
	tocDigest, err := sw.Close()
	if err != nil {
		return Built{}, fmt.Errorf("layer: build: estargz close: %w", err)
	}
	if out.err != nil {
		return Built{}, fmt.Errorf("layer: build: write: %w", out.err)
	}
	return Built{
		Digest:           digest.NewDigest(digest.SHA256, out.h),
		DiffID:           digest.Digest(sw.DiffID()),
		TOCDigest:        tocDigest,
		Size:             out.n,
		UncompressedSize: comp.n,
	}, nil
}

// writeTar writes the layer's tar stream, the input of the eStargz writer.
func writeTar(ctx context.Context, w io.Writer, dir string, es []triton.Entry) error {
	tw := tar.NewWriter(w)
	header := func(name string, typ byte, mode, size int64) *tar.Header {
		return &tar.Header{Typeflag: typ, Name: name, Mode: mode, Size: size, ModTime: epoch, Format: tar.FormatPAX}
	}
	landmark := []byte{0xf} // estargz's landmark content
	if err := tw.WriteHeader(header(estargz.NoPrefetchLandmark, tar.TypeReg, 0o644, int64(len(landmark)))); err != nil {
		return err
	}
	if _, err := tw.Write(landmark); err != nil {
		return err
	}
	if err := tw.WriteHeader(header(Prefix, tar.TypeDir, 0o755, 0)); err != nil {
		return err
	}
	for _, e := range es {
		if err := tw.WriteHeader(header(Prefix+e.Key+"/", tar.TypeDir, 0o755, 0)); err != nil {
			return err
		}
		names := make([]string, len(e.Files))
		for i, f := range e.Files {
			names[i] = f.Name
		}
		slices.Sort(names)
		for i, name := range names {
			if i > 0 && names[i-1] == name {
				return fmt.Errorf("%s/%s listed twice", e.Key, name)
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			tarName := Prefix + e.Key + "/" + name
			// Build only what the readers accept.
			if _, _, p, err := checkEntry(tarName, kindFile); err != nil || p != placeFile {
				return fmt.Errorf("%s: not a cache file name (%v)", tarName, err)
			}
			if err := writeFile(tw, filepath.Join(dir, e.Key, name), tarName, header); err != nil {
				return err
			}
		}
	}
	return tw.Close()
}

func writeFile(tw *tar.Writer, path, tarName string, header func(string, byte, int64, int64) *tar.Header) error {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s: not a regular file", path)
	}
	mode := int64(0o644)
	if st.Mode().Perm()&0o111 != 0 {
		mode = 0o755
	}
	if triton.IsGroupFile(filepath.Base(path)) {
		data, err := io.ReadAll(io.LimitReader(f, maxGroupFileSize+1))
		if err != nil {
			return err
		}
		if len(data) > maxGroupFileSize {
			return fmt.Errorf("%s: group file larger than %d bytes", path, maxGroupFileSize)
		}
		if data, err = triton.RewriteGroup(data, triton.ImageRoot); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if err := tw.WriteHeader(header(tarName, tar.TypeReg, mode, int64(len(data)))); err != nil {
			return err
		}
		_, err = tw.Write(data)
		return err
	}
	if err := tw.WriteHeader(header(tarName, tar.TypeReg, mode, st.Size())); err != nil {
		return err
	}
	if _, err := io.CopyN(tw, f, st.Size()); err != nil {
		return fmt.Errorf("%s: changed while building? %w", path, err)
	}
	return nil
}

// countWriter hashes and counts what goes to w.
type countWriter struct {
	w   io.Writer
	h   hash.Hash
	n   int64
	err error
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.h.Write(p[:n])
	c.n += int64(n)
	if err != nil && c.err == nil {
		c.err = err
	}
	return n, err
}

// countingCompressor counts the uncompressed bytes of an eStargz blob: what
// goes into each gzip member, and the TOC tar, which the estargz writer
// passes through diffHash.
type countingCompressor struct {
	*estargz.GzipCompressor
	n int64
}

func (c *countingCompressor) Writer(w io.Writer) (estargz.WriteFlushCloser, error) {
	zw, err := c.GzipCompressor.Writer(w)
	if err != nil {
		return nil, err
	}
	return countingWFC{zw, &c.n}, nil
}

func (c *countingCompressor) WriteTOCAndFooter(w io.Writer, off int64, toc *estargz.JTOC, diffHash hash.Hash) (digest.Digest, error) {
	if diffHash == nil {
		diffHash = sha256.New()
	}
	return c.GzipCompressor.WriteTOCAndFooter(w, off, toc, countingHash{diffHash, &c.n})
}

type countingWFC struct {
	estargz.WriteFlushCloser
	n *int64
}

func (c countingWFC) Write(p []byte) (int, error) {
	n, err := c.WriteFlushCloser.Write(p)
	*c.n += int64(n)
	return n, err
}

type countingHash struct {
	hash.Hash
	n *int64
}

func (c countingHash) Write(p []byte) (int, error) {
	n, err := c.Hash.Write(p)
	*c.n += int64(n)
	return n, err
}
