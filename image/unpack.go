package image

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"

	"cargohold/gpu"
	"cargohold/layer"
	"cargohold/resolver"
	"cargohold/triton"
)

// Unpacked says what Unpack did, KEY by KEY.
type Unpacked struct {
	Targets   []gpu.Target // the image's targets (labels, else kernel JSONs)
	Installed []string     // KEY dirs written
	Kept      []string     // KEY dirs already present locally, left alone
	Unfit     []string     // KEY dirs whose kernels fit no local GPU
	Reason    string       // why nothing was extracted, when nothing was
}

// Streamer opens a layer's whole blob, verified (*resolver.Resolver).
type Streamer interface {
	Stream(ctx context.Context, l resolver.LayerRef) (*resolver.Stream, error)
}

// Unpack extracts the entries of im that fit the local targets into dir,
// streaming its layers through r. Group files are rewritten to dir. An
// image whose labels name no fitting target is not downloaded at all.
func Unpack(ctx context.Context, r Streamer, im *resolver.Image, dir string, local []gpu.Target, log *slog.Logger) (*Unpacked, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	res := &Unpacked{}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("image: unpack: %w", err)
	}
	sum, lerr := triton.ParseLabels(im.Labels)
	switch {
	case lerr == nil:
		res.Targets = sum.Targets
		if !gpu.AnyFits(sum.Targets, local) {
			res.Reason = fmt.Sprintf("no target of the image (%s) fits the local GPU (%s)", gpu.FormatList(sum.Targets), gpu.FormatList(local))
			return res, nil
		}
	case errors.Is(lerr, triton.ErrNoLabels):
		log.Info("image has no cache labels; learning targets from its kernel JSONs", "image", im.Ref)
	default:
		log.Warn("ignoring malformed cache labels; learning targets from its kernel JSONs", "image", im.Ref, "err", lerr)
	}
	if err := os.MkdirAll(abs, 0o755); err != nil {
		return nil, fmt.Errorf("image: unpack: %w", err)
	}
	// Staged inside dir so that installing a KEY dir is a rename on one
	// filesystem; its name is not a KEY, so Triton never looks at it.
	stage, err := os.MkdirTemp(abs, ".cargohold-unpack-")
	if err != nil {
		return nil, fmt.Errorf("image: unpack: %w", err)
	}
	defer os.RemoveAll(stage)
	for i := range im.Layers {
		if err := stageLayer(ctx, r, im, i, stage); err != nil {
			return nil, err
		}
	}
	return res, install(stage, abs, local, res, log)
}

// stageLayer writes every cache file of layer i under stage/KEY/. Later
// layers overwrite earlier ones, as in any image.
func stageLayer(ctx context.Context, r Streamer, im *resolver.Image, i int, stage string) error {
	rc, err := r.Stream(ctx, im.LayerRef(i))
	if err != nil {
		return fmt.Errorf("image: unpack layer %d: %w", i, err)
	}
	defer rc.Close()
	err = layer.Walk(rc, func(key string, f layer.File, content io.Reader) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		kd := filepath.Join(stage, key)
		if err := os.MkdirAll(kd, 0o755); err != nil {
			return err
		}
		mode := os.FileMode(0o644)
		if f.Mode&0o111 != 0 {
			mode = 0o755
		}
		out, err := os.OpenFile(filepath.Join(kd, f.Name), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
		if err != nil {
			return err
		}
		n, err := io.Copy(out, content)
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err == nil && n != f.Size {
			err = fmt.Errorf("%s/%s: got %d bytes, header says %d", key, f.Name, n, f.Size)
		}
		return err
	})
	if err == nil {
		// The blob's digest is checked at its end: read past the tar's end
		// (padding, the eStargz footer) before trusting what was staged.
		_, err = io.Copy(io.Discard, rc)
	}
	if err != nil {
		return fmt.Errorf("image: unpack layer %d: %w", i, err)
	}
	return nil
}

// install moves each fitting staged KEY dir into dir, never over an
// existing one. Launcher and other non-kernel entries go with the kernels:
// they are installed when some kernel of the image fits.
func install(stage, dir string, local []gpu.Target, res *Unpacked, log *slog.Logger) error {
	des, err := os.ReadDir(stage)
	if err != nil {
		return fmt.Errorf("image: unpack: %w", err)
	}
	var entries []triton.Entry
	var all []gpu.Target
	fitting := false
	for _, de := range des {
		e, _, err := triton.ScanEntry(filepath.Join(stage, de.Name()))
		if err != nil {
			return fmt.Errorf("image: unpack: %w", err)
		}
		entries = append(entries, e)
		all = append(all, e.Targets()...)
		fitting = fitting || gpu.AnyFits(e.Targets(), local)
	}
	if res.Targets == nil {
		res.Targets = gpu.Dedup(all)
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Key < entries[j].Key })
	for _, e := range entries {
		ok := fitting
		if e.Kind == triton.KindKernel {
			ok = gpu.AnyFits(e.Targets(), local)
		}
		if !ok {
			res.Unfit = append(res.Unfit, e.Key)
			continue
		}
		switch err := triton.InstallEntry(filepath.Join(stage, e.Key), dir); {
		case err == nil:
			res.Installed = append(res.Installed, e.Key)
		case errors.Is(err, os.ErrExist):
			log.Debug("kept local entry", "key", e.Key)
			res.Kept = append(res.Kept, e.Key)
		default:
			return fmt.Errorf("image: unpack: install %s: %w", e.Key, err)
		}
	}
	if len(res.Installed)+len(res.Kept) == 0 {
		res.Reason = fmt.Sprintf("no kernel of the image (%s) fits the local GPU (%s)", gpu.FormatList(res.Targets), gpu.FormatList(local))
	}
	return nil
}
