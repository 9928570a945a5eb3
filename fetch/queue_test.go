package fetch

import (
	"slices"
	"testing"
)

// TestCommitQueue: layer order, except that a dir a lookup waits for goes
// next; each dir once.
func TestCommitQueue(t *testing.T) {
	q := newCommitQueue(5)
	var got []int
	got = append(got, q.next()) // 0
	q.hurry(3)
	q.hurry(0) // taken already
	got = append(got, q.next(), q.next())
	q.hurry(4)
	q.hurry(4)
	for i := q.next(); i >= 0; i = q.next() {
		got = append(got, i)
	}
	if want := []int{0, 3, 1, 4, 2}; !slices.Equal(got, want) {
		t.Fatalf("order %v, want %v", got, want)
	}
}
