// Command mcvcheck runs MCV's own checks of a cache image, built from MCV's
// source together with mcv (test/mcv copies it to cmd/mcvcheck there): the
// summary-label preflight and the manifest check that mcv -e runs only on
// a GPU host with -b (its CLI skips it otherwise), against the GPU target
// given by flags instead of detected hardware. It extracts with MCV's
// extractor into -d, the manifest into -m.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/redhat-et/GKM/mcv/pkg/accelerator/devices"
	"github.com/redhat-et/GKM/mcv/pkg/cache"
	"github.com/redhat-et/GKM/mcv/pkg/config"
	"github.com/redhat-et/GKM/mcv/pkg/constants"
	"github.com/redhat-et/GKM/mcv/pkg/preflightcheck"
)

func main() {
	ref := flag.String("i", "", "image")
	dir := flag.String("d", "", "extract the cache here")
	mdir := flag.String("m", "", "extract the manifest here")
	backend := flag.String("backend", "cuda", "GPU backend")
	arch := flag.String("arch", "75", "GPU arch")
	warp := flag.Int("warp", 32, "warp size")
	ptx := flag.Int("ptx", 0, "PTX version")
	flag.Parse()
	if err := run(*ref, *dir, *mdir, devices.TritonGPUInfo{Backend: *backend, Arch: *arch, WarpSize: *warp, PTXVersion: *ptx}); err != nil {
		fmt.Fprintln(os.Stderr, "mcvcheck:", err)
		os.Exit(1)
	}
}

func run(ref, dir, mdir string, gpu devices.TritonGPUInfo) error {
	if _, err := config.Initialize(mdir); err != nil {
		return err
	}
	r, err := name.ParseReference(ref)
	if err != nil {
		return err
	}
	img, err := remote.Image(r)
	if err != nil {
		return err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	labels := cf.Config.Labels
	ct, err := preflightcheck.DetectCacheTypeFromLabels(labels)
	if err != nil {
		return err
	}
	fmt.Println("type:", ct)
	devs := []devices.TritonGPUInfo{gpu}
	if _, _, err := preflightcheck.CompareCacheSummaryLabelToGPU(img, labels, devs); err != nil {
		return fmt.Errorf("summary check: %w", err)
	}
	fmt.Println("summary check: ok")
	constants.ExtractCacheDir, constants.ExtractManifestDir = dir, mdir
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	var n int64
	for _, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			return err
		}
		_, b, err := cache.ExtractCacheDirectory(rc, ct)
		rc.Close()
		if err != nil {
			return err
		}
		n += b
	}
	fmt.Println("extracted bytes:", n)
	mp := filepath.Join(mdir, constants.ManifestFileName)
	if _, err := os.Stat(mp); err != nil {
		return fmt.Errorf("no manifest: %w", err)
	}
	if err := preflightcheck.CompareCacheManifestToGPU(mp, ct, devs); err != nil {
		return fmt.Errorf("manifest check: %w", err)
	}
	fmt.Println("manifest check: ok")
	return nil
}
