package catalog

import (
	"bufio"
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"

	"cargohold/gpu"
	"cargohold/kind"
)

// StateFile is the name of the persisted catalog in Config.StateDir. (The
// name is kept from when the catalog was called the KEY index.)
const StateFile = "index.json"

// stateVersion changes whenever stateFile changes incompatibly; a file of
// another version is not loaded (the next refresh rebuilds it). 2: records
// list every layer holding a KEY dir (imageRec.Earlier); a version 1 record
// named only the last one and, reused by its memo key, would never learn
// the others.
const stateVersion = 2

// ErrStaleState says the persisted catalog was built for other local targets
// or in another format; it is not used.
var ErrStaleState = errors.New("persisted catalog does not match this configuration")

// stateFile is index.json: the images (records, shared by memo key) and the
// entries listing them, by source as written so that a reordered or
// changed source list still maps.
type stateFile struct {
	Version int          `json:"version"`
	Kind    kind.Kind    `json:"kind,omitempty"` // "": Triton (older files)
	Targets []gpu.Target `json:"targets"`
	Entries []stateEntry `json:"entries"`
	Images  []*imageRec  `json:"images"`
}

type stateEntry struct {
	Ref    string `json:"ref"`
	Source string `json:"source"`
	Memo   string `json:"memo"`
}

// save writes s to StateDir/index.json atomically (temp file, fsync,
// rename); no StateDir, nothing to do.
func (cat *Catalog) save(s *snapshot) error {
	if cat.cfg.StateDir == "" {
		return nil
	}
	st := stateFile{Version: stateVersion, Kind: cat.cfg.Kind, Targets: cat.cfg.Targets}
	seen := map[*imageRec]bool{}
	for _, e := range s.entries {
		st.Entries = append(st.Entries, stateEntry{Ref: e.ref, Source: cat.sources[e.source].raw, Memo: e.rec.Memo})
		if !seen[e.rec] {
			seen[e.rec] = true
			st.Images = append(st.Images, e.rec)
		}
	}
	fail := func(err error) error { return fmt.Errorf("catalog: save to %s: %w", cat.cfg.StateDir, err) }
	if err := os.MkdirAll(cat.cfg.StateDir, 0o755); err != nil {
		return fail(err)
	}
	tmp, err := os.CreateTemp(cat.cfg.StateDir, "."+StateFile+".*")
	if err != nil {
		return fail(err)
	}
	defer os.Remove(tmp.Name())
	w := bufio.NewWriterSize(tmp, 1<<20)
	err = st.write(w)
	if err == nil {
		err = w.Flush()
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(cat.cfg.StateDir, StateFile)); err != nil {
		return fail(err)
	}
	return nil
}

// write encodes st as json.Marshal would (but for newlines), an image
// record at a time: the whole file is never in memory.
func (st *stateFile) write(w io.Writer) error {
	head := *st
	head.Images = nil
	b, err := json.Marshal(&head) // ...,"images":null}
	if err != nil || st.Images == nil {
		if err == nil {
			_, err = w.Write(append(b, '\n'))
		}
		return err
	}
	if _, err := w.Write(bytes.TrimSuffix(b, []byte("null}"))); err != nil {
		return err
	}
	enc := json.NewEncoder(w)
	sep := "["
	for _, rec := range st.Images {
		if _, err := io.WriteString(w, sep); err != nil {
			return err
		}
		if err := enc.Encode(rec); err != nil {
			return err
		}
		sep = ","
	}
	if sep == "[" { // an empty, non-nil list
		if _, err := io.WriteString(w, "["); err != nil {
			return err
		}
	}
	_, err = io.WriteString(w, "]}\n")
	return err
}

// read decodes a state file an image record at a time: the file is never
// held whole.
func (st *stateFile) read(r io.Reader) error {
	dec := json.NewDecoder(r)
	if err := delim(dec, '{'); err != nil {
		return err
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		switch tok {
		case "version":
			err = dec.Decode(&st.Version)
		case "kind":
			err = dec.Decode(&st.Kind)
		case "targets":
			err = dec.Decode(&st.Targets)
		case "entries":
			err = dec.Decode(&st.Entries)
		case "images":
			err = st.readImages(dec)
		default:
			var skip json.RawMessage
			err = dec.Decode(&skip)
		}
		if err != nil {
			return err
		}
	}
	return delim(dec, '}')
}

func (st *stateFile) readImages(dec *json.Decoder) error {
	tok, err := dec.Token()
	if err != nil || tok == nil { // null: no images
		return err
	}
	if tok != json.Delim('[') {
		return fmt.Errorf("images: got %v, want [", tok)
	}
	st.Images = st.Images[:0]
	for dec.More() {
		var rec *imageRec
		if err := dec.Decode(&rec); err != nil {
			return err
		}
		if rec == nil {
			return fmt.Errorf("images: null record")
		}
		st.Images = append(st.Images, rec)
	}
	return delim(dec, ']')
}

func delim(dec *json.Decoder, d json.Delim) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	if tok != d {
		return fmt.Errorf("got %v, want %v", tok, d)
	}
	return nil
}

// Load reads the persisted catalog (StateDir/index.json) and installs it,
// without any network request; lookups then answer at once and the next
// Refresh reuses every image record whose manifest digest is unchanged.
// Entries of sources no longer configured are dropped. A missing file is an
// error matching fs.ErrNotExist; a file built for other targets or in
// another format matches ErrStaleState. Load does not replace a catalog a
// Refresh already installed.
func (cat *Catalog) Load() error {
	cat.refreshMu.Lock()
	defer cat.refreshMu.Unlock()
	if cat.cfg.StateDir == "" {
		return fmt.Errorf("catalog: load: no state dir: %w", os.ErrNotExist)
	}
	p := filepath.Join(cat.cfg.StateDir, StateFile)
	f, err := os.Open(p)
	if err != nil {
		return fmt.Errorf("catalog: load: %w", err)
	}
	defer f.Close()
	var st stateFile
	if err := st.read(bufio.NewReaderSize(f, 1<<20)); err != nil {
		return fmt.Errorf("catalog: load %s: %w", p, err)
	}
	if st.Version != stateVersion {
		return fmt.Errorf("catalog: load %s: version %d, want %d: %w", p, st.Version, stateVersion, ErrStaleState)
	}
	if k := cmp.Or(st.Kind, kind.Triton); k != cat.cfg.Kind {
		return fmt.Errorf("catalog: load %s: built for %s caches, this catalog serves %s: %w", p, k, cat.cfg.Kind, ErrStaleState)
	}
	if !slices.Equal(gpu.Dedup(st.Targets), cat.cfg.Targets) {
		return fmt.Errorf("catalog: load %s: built for targets %q, local targets are %q: %w", p,
			gpu.FormatList(st.Targets), gpu.FormatList(cat.cfg.Targets), ErrStaleState)
	}
	recs := make(map[string]*imageRec, len(st.Images))
	for _, rec := range st.Images {
		if err := rec.check(); err != nil {
			return fmt.Errorf("catalog: load %s: %w", p, err)
		}
		recs[rec.Memo] = rec
	}
	srcIdx := map[string]int{}
	for i := len(cat.sources) - 1; i >= 0; i-- {
		srcIdx[cat.sources[i].raw] = i
	}
	var entries []*entry
	for _, se := range st.Entries {
		i, ok := srcIdx[se.Source]
		rec := recs[se.Memo]
		if !ok || rec == nil {
			continue
		}
		entries = append(entries, &entry{ref: se.Ref, source: i, rec: rec})
	}
	dropped := len(entries) != len(st.Entries)
	if cat.cur.Load() != nil {
		return nil
	}
	s := newSnapshot(entries, map[string]error{}, nil)
	s.saved = !dropped // the file says the same

	cat.install(s)
	cat.log.Info("catalog loaded", "file", p, "images", len(s.entries), "keys", len(s.keys))
	if cat.cfg.Refreshed != nil {
		cat.cfg.Refreshed()
	}
	return nil
}

// check rejects a record whose indexes point outside its slices: a
// hand-edited or corrupt file must not make Lookup panic.
func (rec *imageRec) check() error {
	for i, set := range rec.Earlier {
		if !ascending(set) || int(set[len(set)-1]) >= len(rec.Layers) {
			return fmt.Errorf("image %s: earlier layer set %d %v: not ascending layer indexes", rec.Image, i, set)
		}
	}
	for _, k := range rec.Keys {
		if int(k.Layer) >= len(rec.Layers) || int(k.Kernel) > len(rec.Kernels) || int(k.Earlier) > len(rec.Earlier) {
			return fmt.Errorf("image %s: KEY %s: layer %d / kernel %d / earlier %d out of range", rec.Image, k.Key,
				k.Layer, k.Kernel, k.Earlier)
		}
		if k.Earlier > 0 && rec.Earlier[k.Earlier-1][len(rec.Earlier[k.Earlier-1])-1] >= k.Layer {
			return fmt.Errorf("image %s: KEY %s: earlier layers %v not before layer %d", rec.Image, k.Key,
				rec.Earlier[k.Earlier-1], k.Layer)
		}
	}
	return nil
}

// ascending: non-empty and strictly increasing.
func ascending(set []uint16) bool {
	for i := 1; i < len(set); i++ {
		if set[i] <= set[i-1] {
			return false
		}
	}
	return len(set) > 0
}
