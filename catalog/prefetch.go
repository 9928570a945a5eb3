package catalog

// prefetchAfter starts the background prefetch (fetch.Engine.Prefetch) of
// the layer that served l, once per layer for the Catalog's life: the KEYs
// of l's image held in that layer alone that fit the local targets by the
// image's labels, and whose first location is that layer (a KEY another
// image serves first would never be read from this one). Images without
// usable labels are not prefetched: their fit is known only per fetched
// kernel. Only layers that have served a lookup are prefetched, so a
// repository of many models is not pulled whole for the one in use.
func (cat *Catalog) prefetchAfter(s *snapshot, l loc) {
	rec := l.e.rec
	if rec.Unlabelled || rec.LabelError != "" {
		return
	}
	layer := rec.Layers[l.k.Layer]
	id := layer.Desc.Digest.String()
	cat.prefetchMu.Lock()
	done := cat.prefetched[id]
	cat.prefetched[id] = true
	cat.prefetchMu.Unlock()
	if done {
		return
	}
	var keys []string
	for i := range rec.Keys {
		k := &rec.Keys[i]
		if k.Layer != l.k.Layer || k.Earlier != 0 {
			continue
		}
		if first := s.keys[k.Key]; len(first) > 0 && first[0].k == k {
			keys = append(keys, k.Key)
		}
	}
	cat.log.Info("prefetching the KEY dirs of a layer that served a lookup", "image", rec.Image, "layer", id, "keys", len(keys))
	cat.eng.Prefetch(layer, keys)
}
