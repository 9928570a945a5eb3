package layer

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"syscall"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	digest "github.com/opencontainers/go-digest"

	"cargohold/kind"
	"cargohold/triton"
)

// Built describes a layer written by BuildSource.
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

// Source is what a layer holds: the units of a cache of kind Kind rooted at
// Dir, in layer order (each unit's files contiguous, so that one ranged
// read fetches a unit), and MCV's manifest file (nil: none).
type Source struct {
	Kind     kind.Kind
	Dir      string
	Units    []kind.Unit
	Manifest []byte
}

// BuildSource writes the eStargz layer of c to w: a no-prefetch landmark
// (as estargz.Build writes it), the manifest under io.<kind>.manifest/,
// io.<kind>.cache/, then per unit in the order of c.Units (the caller
// decides: image.Pack sorts them by path, or puts an access order first)
// the dirs above it not yet written, its dir and its files in sorted order.
// Entries carry mtime 0, uid/gid 0, no owner names, mode 0755 (dirs,
// executables) or 0644. Files are stored as they are on disk (group files
// keep the build host's absolute child paths: MCV extracts them as they
// are, and cargohold rewrites them where it installs or serves them); a
// group file that does not parse is an error. Files are read again from
// c.Dir, without following symlinks.
//
// Gzip members are compressed on GOMAXPROCS goroutines; the bytes are the
// same for any number (see writer).
func BuildSource(ctx context.Context, w io.Writer, c Source) (Built, error) {
	return buildWith(ctx, w, c, defaultWriterOptions(runtime.GOMAXPROCS(0)))
}

func buildWith(ctx context.Context, w io.Writer, c Source, o writerOptions) (Built, error) {
	if !c.Kind.Valid() {
		return Built{}, fmt.Errorf("layer: build: unknown cache kind %q", c.Kind)
	}
	seen := make(map[string]bool, len(c.Units))
	for _, u := range c.Units {
		if !kind.IsUnit(c.Kind, u.Path) || kind.CheckPath(u.Path) != nil {
			return Built{}, fmt.Errorf("layer: build: %q is not a unit of a %s cache", u.Path, c.Kind)
		}
		if seen[u.Path] {
			return Built{}, fmt.Errorf("layer: build: unit %s listed twice", u.Path)
		}
		seen[u.Path] = true
	}
	if err := ctx.Err(); err != nil {
		return Built{}, fmt.Errorf("layer: build: %w", err)
	}
	sw := newWriter(ctx, w, o)
	if err := writeEntries(ctx, sw, c); err != nil {
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
func writeEntries(ctx context.Context, sw *writer, c Source) error {
	landmark := []byte{0xf} // estargz's landmark content
	if err := sw.file(header(estargz.NoPrefetchLandmark, tar.TypeReg, 0o644, int64(len(landmark))), bytes.NewReader(landmark)); err != nil {
		return err
	}
	if c.Manifest != nil {
		mp := c.Kind.ManifestPath()
		if err := sw.header(header(path.Dir(mp)+"/", tar.TypeDir, 0o755, 0)); err != nil {
			return err
		}
		if err := sw.file(header(mp, tar.TypeReg, 0o644, int64(len(c.Manifest))), bytes.NewReader(c.Manifest)); err != nil {
			return err
		}
	}
	prefix := c.Kind.Prefix()
	if err := sw.header(header(prefix, tar.TypeDir, 0o755, 0)); err != nil {
		return err
	}
	written := map[string]bool{}
	for _, u := range c.Units {
		for _, d := range append(kind.ParentDirs(u.Path), u.Path) {
			if written[d] {
				continue
			}
			written[d] = true
			if err := sw.header(header(prefix+d+"/", tar.TypeDir, 0o755, 0)); err != nil {
				return err
			}
		}
		names := make([]string, len(u.Files))
		for i, f := range u.Files {
			names[i] = f.Name
		}
		slices.Sort(names)
		for i, name := range names {
			if i > 0 && names[i-1] == name {
				return fmt.Errorf("%s/%s listed twice", u.Path, name)
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			tarName := prefix + u.Path + "/" + name
			// Build only what the readers accept.
			if e, err := checkEntry(tarName, typeFile); err != nil || e.p != placeFile || e.unit != u.Path {
				return fmt.Errorf("%s: not a cache file name (%v)", tarName, err)
			}
			src := filepath.Join(c.Dir, filepath.FromSlash(u.Path), name)
			if err := writeFile(sw, src, tarName, u.Triton && triton.IsGroupFile(name)); err != nil {
				return err
			}
		}
	}
	return nil
}

// writeFile writes the file at path as tarName; group says it is a Triton
// group file, checked to parse.
func writeFile(sw *writer, path, tarName string, group bool) error {
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
	if group {
		data, err := io.ReadAll(io.LimitReader(f, maxGroupFileSize+1))
		if err != nil {
			return err
		}
		if len(data) > maxGroupFileSize {
			return fmt.Errorf("%s: group file larger than %d bytes", path, maxGroupFileSize)
		}
		// Stored as it is; whoever installs or serves it rewrites it,
		// which must then work.
		if _, err := triton.RewriteGroup(data, "/"); err != nil {
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
