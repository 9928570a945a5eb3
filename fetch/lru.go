package fetch

import (
	"container/list"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// indexLRU keeps the most recently used layer indexes in memory. A layer
// index costs about 2 KB per KEY dir, and an Engine behind an index of many
// images would otherwise hold every one of them; one that drops out is
// reloaded from the disk cache (no request). Not safe for concurrent use:
// Engine.mu guards it.
type indexLRU struct {
	max   int
	order *list.List                // front: most recently used; values *lruItem
	items map[v1.Hash]*list.Element // by layer digest
}

type lruItem struct {
	layer v1.Hash
	ix    *indexed
}

// newIndexLRU keeps up to n indexes; none when n <= 0.
func newIndexLRU(n int) *indexLRU {
	return &indexLRU{max: n, order: list.New(), items: map[v1.Hash]*list.Element{}}
}

// get returns the index of layer d, nil when not kept, and marks it used.
func (c *indexLRU) get(d v1.Hash) *indexed {
	el := c.items[d]
	if el == nil {
		return nil
	}
	c.order.MoveToFront(el)
	return el.Value.(*lruItem).ix
}

// put keeps ix as layer d's, dropping the least recently used index when
// over max.
func (c *indexLRU) put(d v1.Hash, ix *indexed) {
	if c.max <= 0 {
		return
	}
	if el := c.items[d]; el != nil {
		el.Value.(*lruItem).ix = ix
		c.order.MoveToFront(el)
		return
	}
	c.items[d] = c.order.PushFront(&lruItem{layer: d, ix: ix})
	for c.order.Len() > c.max {
		old := c.order.Back()
		c.order.Remove(old)
		delete(c.items, old.Value.(*lruItem).layer)
	}
}
