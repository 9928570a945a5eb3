package layer

import (
	"archive/tar"
	"fmt"
	"strings"

	"github.com/containerd/stargz-snapshotter/estargz"

	"cargohold/kind"
)

// etype is an entry's type, the same for tar headers and eStargz TOC
// entries.
type etype int

const (
	typeFile etype = iota
	typeDir
	typeSymlink
	typeHardlink
	typeDevice // char, block, fifo
	typeOther  // sparse files and anything else that is not plain data
)

// place says what an entry that passed checkEntry is.
type place int

const (
	placeIgnore   place = iota // layer structure or eStargz metadata; not recorded
	placeSkip                  // not part of the cache; recorded in Index.Skipped
	placeFile                  // io.<kind>.cache/<unit>/<file>, a regular file of a unit
	placeManifest              // io.<kind>.manifest/manifest.json, MCV's manifest (Index.Manifest)
)

func tarType(flag byte) etype {
	switch flag {
	case tar.TypeReg:
		return typeFile
	case tar.TypeDir:
		return typeDir
	case tar.TypeSymlink:
		return typeSymlink
	case tar.TypeLink:
		return typeHardlink
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		return typeDevice
	}
	return typeOther
}

func tocType(typ string) etype {
	switch typ {
	case "reg":
		return typeFile
	case "dir":
		return typeDir
	case "symlink":
		return typeSymlink
	case "hardlink":
		return typeHardlink
	case "char", "block", "fifo":
		return typeDevice
	}
	return typeOther
}

// maxNameLen is NAME_MAX of Linux file systems.
const maxNameLen = 255

// entry is what checkEntry says of an entry.
type entry struct {
	p    place
	kind kind.Kind // placeFile: the kind whose prefix holds it
	unit string    // placeFile: its unit (a slice of the entry's name)
	file string    // placeFile: its name in the unit
}

// cachePrefixes are the dirs that hold a cache in a layer, by kind.
var cachePrefixes = func() map[string]kind.Kind {
	m := map[string]kind.Kind{}
	for _, k := range kind.All {
		m[strings.TrimSuffix(k.Prefix(), "/")] = k
	}
	return m
}()

// checkEntry is the one guard every format passes its entries through. It
// says where a cache file belongs (kind.Classify under the kind's prefix
// io.<kind>.cache/), or that the entry is to be ignored (layer structure,
// eStargz metadata, directories, MCV's manifest) or skipped (recorded: not
// part of a cache the kinds take), or returns an *UnsafeEntryError for an
// entry under a cache prefix that could escape or subvert the cache dir.
func checkEntry(name string, t etype) (entry, error) {
	unsafe := func(reason string) (entry, error) {
		return entry{}, &UnsafeEntryError{Path: name, Reason: reason}
	}
	n := strings.TrimPrefix(name, "./") // tar's usual relative form
	if strings.HasPrefix(n, "/") {
		return unsafe("absolute path")
	}
	if strings.ContainsRune(n, 0) {
		return unsafe("NUL in name")
	}
	trimmed := strings.TrimSuffix(n, "/")
	for _, el := range strings.Split(trimmed, "/") {
		if el == ".." {
			return unsafe(`".." path element`)
		}
	}
	top, rest, _ := strings.Cut(trimmed, "/")
	k, ok := cachePrefixes[top]
	if !ok {
		switch {
		case trimmed == "", trimmed == ".", trimmed == estargz.TOCTarName, trimmed == estargz.PrefetchLandmark,
			trimmed == estargz.NoPrefetchLandmark:
			return entry{p: placeIgnore}, nil
		case isManifest(top, rest, t):
			if t == typeFile {
				return entry{p: placeManifest, kind: kind.Kind(strings.TrimSuffix(strings.TrimPrefix(top, "io."), ".manifest"))}, nil
			}
			return entry{p: placeIgnore}, nil
		}
		return entry{p: placeSkip}, nil
	}
	switch t {
	case typeSymlink, typeHardlink:
		return unsafe("link under " + top + "/")
	case typeDevice:
		return unsafe("device or fifo under " + top + "/")
	case typeOther:
		return unsafe("unsupported entry type under " + top + "/")
	}
	if trimmed != n && t != typeDir {
		return unsafe("non-directory name ends in /")
	}
	if rest == "" {
		if t == typeDir {
			return entry{p: placeIgnore}, nil
		}
		return entry{p: placeSkip}, nil
	}
	for _, el := range strings.Split(rest, "/") {
		if el == "" || el == "." {
			return unsafe("not a clean path")
		}
		// What no file system holds (NAME_MAX) or no framework writes: a
		// name listed but never openable, or one that breaks lines in logs
		// and listings.
		if len(el) > maxNameLen {
			return unsafe(fmt.Sprintf("name element of %d bytes (the most is %d)", len(el), maxNameLen))
		}
		if strings.ContainsFunc(el, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			return unsafe("control character in name")
		}
	}
	if t == typeDir {
		// Dirs are implied by the files under them; one the kind does not
		// take is named.
		if ok, why := kind.ClassifyDir(k, rest); !ok && why != "" {
			return entry{p: placeSkip}, nil
		}
		return entry{p: placeIgnore}, nil
	}
	pl, ok, _ := kind.Classify(k, rest)
	if !ok {
		// Stray files, non-KEY dirs, subdirs of a KEY dir, local-only
		// paths: the framework never looks there, or must not be served
		// them.
		return entry{p: placeSkip}, nil
	}
	return entry{p: placeFile, kind: k, unit: pl.Unit, file: pl.File}, nil
}

// isManifest: MCV's manifest beside the cache, io.<kind>.manifest/ and its
// manifest.json; cargohold reads it only to inspect an image.
func isManifest(top, rest string, t etype) bool {
	k, ok := strings.CutPrefix(top, "io.")
	if k, ok = strings.CutSuffix(k, ".manifest"); !ok || !kind.Kind(k).Valid() {
		return false
	}
	return (rest == "" && t == typeDir) || (rest == "manifest.json" && t == typeFile)
}
