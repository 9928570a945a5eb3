package layer

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
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
//
// Gzip members are compressed on GOMAXPROCS goroutines; the bytes are the
// same for any number (see writer).
func Build(ctx context.Context, w io.Writer, dir string, entries []triton.Entry) (Built, error) {
	return buildWith(ctx, w, dir, entries, defaultWriterOptions(runtime.GOMAXPROCS(0)))
}

func buildWith(ctx context.Context, w io.Writer, dir string, entries []triton.Entry, o writerOptions) (Built, error) {
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
	if err := ctx.Err(); err != nil {
		return Built{}, fmt.Errorf("layer: build: %w", err)
	}
	sw := newWriter(ctx, w, o)
	if err := writeEntries(ctx, sw, dir, es); err != nil {
		sw.abort(err)
		return Built{}, fmt.Errorf("layer: build: %w", err)
	}
	built, err := sw.close()
	if err != nil {
		return Built{}, fmt.Errorf("layer: build: %w", err)
	}
	return built, nil
}

// header is the tar header of every entry: only name, type, mode and size
// vary.
func header(name string, typ byte, mode, size int64) *tar.Header {
	return &tar.Header{Typeflag: typ, Name: name, Mode: mode, Size: size, ModTime: epoch, Format: tar.FormatPAX}
}

// writeEntries writes the layer's entries in order.
func writeEntries(ctx context.Context, sw *writer, dir string, es []triton.Entry) error {
	landmark := []byte{0xf} // estargz's landmark content
	if err := sw.file(header(estargz.NoPrefetchLandmark, tar.TypeReg, 0o644, int64(len(landmark))), bytes.NewReader(landmark)); err != nil {
		return err
	}
	if err := sw.header(header(Prefix, tar.TypeDir, 0o755, 0)); err != nil {
		return err
	}
	for _, e := range es {
		if err := sw.header(header(Prefix+e.Key+"/", tar.TypeDir, 0o755, 0)); err != nil {
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
			if err := writeFile(sw, filepath.Join(dir, e.Key, name), tarName); err != nil {
				return err
			}
		}
	}
	return nil
}

func writeFile(sw *writer, path, tarName string) error {
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
		return sw.file(header(tarName, tar.TypeReg, mode, int64(len(data))), bytes.NewReader(data))
	}
	err = sw.file(header(tarName, tar.TypeReg, mode, st.Size()), f)
	if errors.Is(err, io.EOF) {
		return fmt.Errorf("%s: changed while building? %w", path, err)
	}
	return err
}
