package layer

import (
	"archive/tar"
	"fmt"
	"strings"

	"github.com/containerd/stargz-snapshotter/estargz"

	"cargohold/triton"
)

// kind is an entry's type, the same for tar headers and eStargz TOC entries.
type kind int

const (
	kindFile kind = iota
	kindDir
	kindSymlink
	kindHardlink
	kindDevice // char, block, fifo
	kindOther  // sparse files and anything else that is not plain data
)

// place says what an entry that passed checkEntry is.
type place int

const (
	placeIgnore place = iota // layer structure or eStargz metadata; not recorded
	placeSkip                // not part of the cache; recorded in Index.Skipped
	placeFile                // io.triton.cache/<KEY>/<file>, a regular file
)

func tarKind(flag byte) kind {
	switch flag {
	case tar.TypeReg:
		return kindFile
	case tar.TypeDir:
		return kindDir
	case tar.TypeSymlink:
		return kindSymlink
	case tar.TypeLink:
		return kindHardlink
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		return kindDevice
	}
	return kindOther
}

func tocKind(typ string) kind {
	switch typ {
	case "reg":
		return kindFile
	case "dir":
		return kindDir
	case "symlink":
		return kindSymlink
	case "hardlink":
		return kindHardlink
	case "char", "block", "fifo":
		return kindDevice
	}
	return kindOther
}

// maxNameLen is NAME_MAX of Linux file systems.
const maxNameLen = 255

// checkEntry is the one guard every format passes its entries through. It
// returns the KEY and file name of a cache file, or says the entry is to be
// ignored or skipped, or returns an *UnsafeEntryError.
func checkEntry(name string, k kind) (key, file string, p place, err error) {
	unsafe := func(reason string) (string, string, place, error) {
		return "", "", placeIgnore, &UnsafeEntryError{Path: name, Reason: reason}
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
	if trimmed != prefixDir && !strings.HasPrefix(trimmed, Prefix) {
		switch trimmed {
		case "", ".", estargz.TOCTarName, estargz.PrefetchLandmark, estargz.NoPrefetchLandmark:
			return "", "", placeIgnore, nil
		}
		return "", "", placeSkip, nil
	}
	switch k {
	case kindSymlink, kindHardlink:
		return unsafe("link under " + Prefix)
	case kindDevice:
		return unsafe("device or fifo under " + Prefix)
	case kindOther:
		return unsafe("unsupported entry type under " + Prefix)
	}
	if trimmed != n && k != kindDir {
		return unsafe("non-directory name ends in /")
	}
	rest := strings.TrimPrefix(strings.TrimPrefix(trimmed, prefixDir), "/")
	if rest == "" {
		if k == kindDir {
			return "", "", placeIgnore, nil
		}
		return "", "", placeSkip, nil
	}
	els := strings.Split(rest, "/")
	for _, el := range els {
		if el == "" || el == "." {
			return unsafe("not a clean path")
		}
		// What no file system holds (NAME_MAX) or no Triton writes: a name
		// listed but never openable, or one that breaks lines in logs and
		// listings.
		if len(el) > maxNameLen {
			return unsafe(fmt.Sprintf("name element of %d bytes (the most is %d)", len(el), maxNameLen))
		}
		if strings.ContainsFunc(el, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			return unsafe("control character in name")
		}
	}
	switch {
	case len(els) == 1 && k == kindDir && triton.IsKey(els[0]):
		return "", "", placeIgnore, nil
	case len(els) == 2 && k == kindFile && triton.IsKey(els[0]):
		return els[0], els[1], placeFile, nil
	}
	// Stray files, non-KEY dirs, subdirs of a KEY dir and anything deeper:
	// Triton never looks there.
	return "", "", placeSkip, nil
}
