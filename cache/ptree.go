package cache

import (
	"hash/maphash"
	"math/bits"
	"slices"
	"strings"
)

// Persistent (copy-on-write) structures behind a Snapshot. A node is never
// modified once a snapshot can reach it: an update copies the nodes on the path
// from the root to the changed item and shares every other node with the
// previous snapshot, so applying k changes to n extensions costs O(k log n) time
// and memory, and readers of either snapshot need no lock.

// btreeMax is the most items of a leaf and children of an inner node. Smaller
// nodes copy less per update, larger ones make the tree shallower; 32 measured
// best for one-row deltas at 1,000 to 100,000 extensions (BenchmarkApplyOneRow).
const btreeMax = 32

// bnode is a node of a persistent B+tree ordered by id: a leaf holds items, an
// inner node children and, for each child, the smallest id below it.
type bnode[T any] struct {
	items []T
	kids  []*bnode[T]
	keys  []string // keys[i] is the first id of kids[i]
}

// btree is a persistent B+tree of items with unique ids, in ascending id order
// (bytewise). The zero value is empty. key returns an item's id.
type btree[T any] struct {
	root *bnode[T]
	key  func(T) string
}

func (n *bnode[T]) leaf() bool { return n.kids == nil }

// childFor is the index of the child whose range holds id.
func (n *bnode[T]) childFor(id string) int {
	// The last child whose first id is <= id; the first child for smaller ids.
	i, found := slices.BinarySearch(n.keys, id)
	if found {
		return i
	}
	return max(0, i-1)
}

func (t btree[T]) search(n *bnode[T], id string) (int, bool) {
	return slices.BinarySearchFunc(n.items, id, func(it T, id string) int { return strings.Compare(t.key(it), id) })
}

// get returns the item with id. It does not allocate.
func (t btree[T]) get(id string) (T, bool) {
	n := t.root
	if n == nil {
		var zero T
		return zero, false
	}
	for !n.leaf() {
		n = n.kids[n.childFor(id)]
	}
	i, ok := t.search(n, id)
	if !ok {
		var zero T
		return zero, false
	}
	return n.items[i], true
}

// buildBtree returns the tree of items, which must be sorted by id without
// duplicates. The items slice is retained.
func buildBtree[T any](items []T, key func(T) string) btree[T] {
	t := btree[T]{key: key}
	if len(items) == 0 {
		return t
	}
	// Leaves of at most btreeMax items, filled evenly (full leaves would split on
	// the first insert).
	level := make([]*bnode[T], 0, (len(items)+btreeMax-1)/btreeMax)
	for _, part := range evenParts(len(items), btreeMax*3/4) {
		level = append(level, &bnode[T]{items: items[part[0]:part[1]:part[1]]})
	}
	for len(level) > 1 {
		up := make([]*bnode[T], 0, (len(level)+btreeMax-1)/btreeMax)
		for _, part := range evenParts(len(level), btreeMax*3/4) {
			kids := level[part[0]:part[1]:part[1]]
			keys := make([]string, len(kids))
			for i, k := range kids {
				keys[i] = t.first(k)
			}
			up = append(up, &bnode[T]{kids: kids, keys: keys})
		}
		level = up
	}
	t.root = level[0]
	return t
}

// evenParts splits [0, n) into ceil(n/size) ranges of nearly equal length.
func evenParts(n, size int) [][2]int {
	parts := (n + size - 1) / size
	out := make([][2]int, parts)
	lo := 0
	for i := range out {
		hi := lo + (n-lo)/(parts-i)
		out[i] = [2]int{lo, hi}
		lo = hi
	}
	return out
}

func (t btree[T]) first(n *bnode[T]) string {
	if n.leaf() {
		return t.key(n.items[0])
	}
	return n.keys[0]
}

// set returns the tree with it inserted or replacing the item of the same id.
func (t btree[T]) set(it T) btree[T] {
	if t.root == nil {
		return btree[T]{root: &bnode[T]{items: []T{it}}, key: t.key}
	}
	a, b := t.setIn(t.root, it)
	if b == nil {
		return btree[T]{root: a, key: t.key}
	}
	return btree[T]{root: &bnode[T]{kids: []*bnode[T]{a, b}, keys: []string{t.first(a), t.first(b)}}, key: t.key}
}

// setIn returns the copy of n with it set; b is non-nil when the copy split in two.
func (t btree[T]) setIn(n *bnode[T], it T) (a, b *bnode[T]) {
	id := t.key(it)
	if n.leaf() {
		i, found := t.search(n, id)
		if found {
			items := slices.Clone(n.items)
			items[i] = it
			return &bnode[T]{items: items}, nil
		}
		items := make([]T, 0, len(n.items)+1)
		items = append(items, n.items[:i]...)
		items = append(items, it)
		items = append(items, n.items[i:]...)
		if len(items) <= btreeMax {
			return &bnode[T]{items: items}, nil
		}
		h := len(items) / 2
		return &bnode[T]{items: items[:h:h]}, &bnode[T]{items: items[h:]}
	}
	i := n.childFor(id)
	ca, cb := t.setIn(n.kids[i], it)
	grow := 0
	if cb != nil {
		grow = 1
	}
	kids := make([]*bnode[T], 0, len(n.kids)+grow)
	keys := make([]string, 0, len(n.kids)+grow)
	kids = append(kids, n.kids[:i]...)
	keys = append(keys, n.keys[:i]...)
	kids = append(kids, ca)
	keys = append(keys, t.first(ca))
	if cb != nil {
		kids = append(kids, cb)
		keys = append(keys, t.first(cb))
	}
	kids = append(kids, n.kids[i+1:]...)
	keys = append(keys, n.keys[i+1:]...)
	if len(kids) <= btreeMax {
		return &bnode[T]{kids: kids, keys: keys}, nil
	}
	h := len(kids) / 2
	return &bnode[T]{kids: kids[:h:h], keys: keys[:h:h]}, &bnode[T]{kids: kids[h:], keys: keys[h:]}
}

// del returns the tree without the item of id (the same tree when absent).
func (t btree[T]) del(id string) btree[T] {
	if t.root == nil {
		return t
	}
	r, removed := t.delIn(t.root, id)
	if !removed {
		return t
	}
	for r != nil && !r.leaf() && len(r.kids) == 1 {
		r = r.kids[0]
	}
	return btree[T]{root: r, key: t.key}
}

// delIn returns the copy of n without id (nil when it is left empty).
func (t btree[T]) delIn(n *bnode[T], id string) (*bnode[T], bool) {
	if n.leaf() {
		i, found := t.search(n, id)
		if !found {
			return n, false
		}
		if len(n.items) == 1 {
			return nil, true
		}
		return &bnode[T]{items: slices.Delete(slices.Clone(n.items), i, i+1)}, true
	}
	i := n.childFor(id)
	c, removed := t.delIn(n.kids[i], id)
	if !removed {
		return n, false
	}
	if c == nil {
		if len(n.kids) == 1 {
			return nil, true
		}
		return &bnode[T]{kids: slices.Delete(slices.Clone(n.kids), i, i+1), keys: slices.Delete(slices.Clone(n.keys), i, i+1)}, true
	}
	// A leaf left small is merged into a neighbour, so that deletions do not
	// leave the tree sparse.
	if j := i + 1; c.leaf() && len(c.items) < btreeMax/4 && (j < len(n.kids) || i > 0) {
		lo := i
		if j >= len(n.kids) {
			lo, j = i-1, i
		}
		left, right := n.kids[lo], n.kids[j]
		if lo == i {
			left = c
		} else {
			right = c
		}
		if len(left.items)+len(right.items) <= btreeMax {
			merged := &bnode[T]{items: slices.Concat(left.items, right.items)}
			kids := slices.Clone(n.kids)
			keys := slices.Clone(n.keys)
			kids[lo], keys[lo] = merged, t.first(merged)
			return &bnode[T]{kids: slices.Delete(kids, j, j+1), keys: slices.Delete(keys, j, j+1)}, true
		}
	}
	kids := slices.Clone(n.kids)
	keys := slices.Clone(n.keys)
	kids[i], keys[i] = c, t.first(c)
	return &bnode[T]{kids: kids, keys: keys}, true
}

// each calls fn for every item in id order until fn returns false; it reports
// whether it went through all of them. It does not allocate.
func (t btree[T]) each(fn func(T) bool) bool {
	if t.root == nil {
		return true
	}
	return eachIn(t.root, fn)
}

func eachIn[T any](n *bnode[T], fn func(T) bool) bool {
	if n.leaf() {
		for _, it := range n.items {
			if !fn(it) {
				return false
			}
		}
		return true
	}
	for _, k := range n.kids {
		if !eachIn(k, fn) {
			return false
		}
	}
	return true
}

// leaves calls fn for every leaf in order until it returns false.
func (t btree[T]) leaves(fn func(*bnode[T]) bool) {
	if t.root != nil {
		leavesIn(t.root, fn)
	}
}

func leavesIn[T any](n *bnode[T], fn func(*bnode[T]) bool) bool {
	if n.leaf() {
		return fn(n)
	}
	for _, k := range n.kids {
		if !leavesIn(k, fn) {
			return false
		}
	}
	return true
}

// hamt is a persistent hash array mapped trie from id to extension: Lookup and
// Get in a few pointer hops without allocating, updates copying O(log n) small
// nodes. The zero value is empty.
type hamt struct{ root *hnode }

// hnode is a trie node: slots for the set bits of bitmap, in bit order. Below
// the last level (64 bits of hash used) a node holds colliding extensions in coll.
type hnode struct {
	bitmap uint64
	slots  []hslot
	coll   []*Extension
}

// hslot holds either an extension (sub nil) or a subtree.
type hslot struct {
	e   *Extension
	sub *hnode
}

const (
	hamtBits = 6
	hamtMask = 1<<hamtBits - 1
)

var hamtSeed = maphash.MakeSeed()

func hashID(id string) uint64 { return maphash.String(hamtSeed, id) }

// get returns the extension with id. It does not allocate.
func (h hamt) get(id string) (*Extension, bool) {
	hv := hashID(id)
	n := h.root
	for shift := uint(0); n != nil; shift += hamtBits {
		if n.coll != nil {
			for _, e := range n.coll {
				if e.ID == id {
					return e, true
				}
			}
			return nil, false
		}
		bit := uint64(1) << ((hv >> shift) & hamtMask)
		if n.bitmap&bit == 0 {
			return nil, false
		}
		s := &n.slots[bits.OnesCount64(n.bitmap&(bit-1))]
		if s.sub == nil {
			if s.e.ID == id {
				return s.e, true
			}
			return nil, false
		}
		n = s.sub
	}
	return nil, false
}

// set returns the map with e stored under e.ID.
func (h hamt) set(e *Extension) hamt {
	return hamt{root: hset(h.root, e, hashID(e.ID), 0)}
}

func hset(n *hnode, e *Extension, hv uint64, shift uint) *hnode {
	if shift >= 64 {
		out := &hnode{}
		if n != nil {
			out.coll = slices.Clone(n.coll)
		}
		for i, x := range out.coll {
			if x.ID == e.ID {
				out.coll[i] = e
				return out
			}
		}
		out.coll = append(out.coll, e)
		return out
	}
	if n == nil {
		return &hnode{bitmap: 1 << ((hv >> shift) & hamtMask), slots: []hslot{{e: e}}}
	}
	bit := uint64(1) << ((hv >> shift) & hamtMask)
	i := bits.OnesCount64(n.bitmap & (bit - 1))
	if n.bitmap&bit == 0 {
		slots := make([]hslot, 0, len(n.slots)+1)
		slots = append(slots, n.slots[:i]...)
		slots = append(slots, hslot{e: e})
		slots = append(slots, n.slots[i:]...)
		return &hnode{bitmap: n.bitmap | bit, slots: slots}
	}
	slots := slices.Clone(n.slots)
	s := &slots[i]
	switch {
	case s.sub != nil:
		s.sub = hset(s.sub, e, hv, shift+hamtBits)
	case s.e.ID == e.ID:
		s.e = e
	default:
		sub := hset(nil, s.e, hashID(s.e.ID), shift+hamtBits)
		*s = hslot{sub: hset(sub, e, hv, shift+hamtBits)}
	}
	return &hnode{bitmap: n.bitmap, slots: slots}
}

// del returns the map without id.
func (h hamt) del(id string) hamt {
	r, removed := hdel(h.root, id, hashID(id), 0)
	if !removed {
		return h
	}
	return hamt{root: r}
}

func hdel(n *hnode, id string, hv uint64, shift uint) (*hnode, bool) {
	if n == nil {
		return nil, false
	}
	if n.coll != nil {
		for i, x := range n.coll {
			if x.ID == id {
				if len(n.coll) == 1 {
					return nil, true
				}
				return &hnode{coll: slices.Delete(slices.Clone(n.coll), i, i+1)}, true
			}
		}
		return n, false
	}
	bit := uint64(1) << ((hv >> shift) & hamtMask)
	if n.bitmap&bit == 0 {
		return n, false
	}
	i := bits.OnesCount64(n.bitmap & (bit - 1))
	s := n.slots[i]
	if s.sub != nil {
		sub, removed := hdel(s.sub, id, hv, shift+hamtBits)
		if !removed {
			return n, false
		}
		slots := slices.Clone(n.slots)
		switch {
		case sub != nil && sub.coll == nil && len(sub.slots) == 1 && sub.slots[0].sub == nil:
			slots[i] = hslot{e: sub.slots[0].e} // a lone extension moves up
		case sub != nil && len(sub.coll) == 1:
			slots[i] = hslot{e: sub.coll[0]}
		case sub != nil:
			slots[i] = hslot{sub: sub}
		default:
			return removeSlot(n, bit, i), true
		}
		return &hnode{bitmap: n.bitmap, slots: slots}, true
	}
	if s.e.ID != id {
		return n, false
	}
	return removeSlot(n, bit, i), true
}

func removeSlot(n *hnode, bit uint64, i int) *hnode {
	if len(n.slots) == 1 {
		return nil
	}
	return &hnode{bitmap: n.bitmap &^ bit, slots: slices.Delete(slices.Clone(n.slots), i, i+1)}
}

func popcount(x uint64) int { return bits.OnesCount64(x) }
