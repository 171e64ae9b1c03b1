package cache

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// check verifies the invariants of s's indexes: the order tree is sorted with
// correct separator keys, holds Len extensions, and the id index and the
// per-type trees hold exactly the same extensions.
func (s *Snapshot) check() error {
	var prev string
	n := 0
	var bad error
	s.order.each(func(en entry) bool {
		if n > 0 && en.e.ID <= prev {
			bad = fmt.Errorf("order: %q after %q", en.e.ID, prev)
			return false
		}
		if e, ok := s.ids.get(en.e.ID); !ok || e != en.e {
			bad = fmt.Errorf("ids: %q missing or different", en.e.ID)
			return false
		}
		prev = en.e.ID
		n++
		return true
	})
	if bad != nil {
		return bad
	}
	if n != s.count {
		return fmt.Errorf("order holds %d, count %d", n, s.count)
	}
	if err := checkKeys(s.order.root, s.order.key); err != nil {
		return err
	}
	if c := hamtCount(s.ids.root); c != n {
		return fmt.Errorf("ids holds %d, order %d", c, n)
	}
	for t := range s.byType {
		var want []string
		s.order.each(func(en entry) bool {
			if en.e.Serves() && typeIndex(en.e.Type) == t {
				want = append(want, en.e.ID)
			}
			return true
		})
		var got []string
		s.byType[t].each(func(e *Extension) bool { got = append(got, e.ID); return true })
		if !slices.Equal(got, want) {
			return fmt.Errorf("byType[%d] = %v, want %v", t, got, want)
		}
		if err := checkKeys(s.byType[t].root, s.byType[t].key); err != nil {
			return err
		}
	}
	return nil
}

func checkKeys[T any](n *bnode[T], key func(T) string) error {
	if n == nil || n.leaf() {
		if n != nil && (len(n.items) == 0 || len(n.items) > btreeMax) {
			return fmt.Errorf("leaf of %d items", len(n.items))
		}
		return nil
	}
	if len(n.kids) != len(n.keys) || len(n.kids) == 0 || len(n.kids) > btreeMax {
		return fmt.Errorf("inner node of %d kids, %d keys", len(n.kids), len(n.keys))
	}
	for i, k := range n.kids {
		t := btree[T]{root: k, key: key}
		if f := t.first(k); f != n.keys[i] {
			return fmt.Errorf("key %q for a child starting at %q", n.keys[i], f)
		}
		if i > 0 && n.keys[i-1] >= n.keys[i] {
			return fmt.Errorf("keys out of order: %q, %q", n.keys[i-1], n.keys[i])
		}
		if err := checkKeys(k, key); err != nil {
			return err
		}
	}
	return nil
}

func hamtCount(n *hnode) int {
	if n == nil {
		return 0
	}
	c := len(n.coll)
	for _, s := range n.slots {
		if s.sub != nil {
			c += hamtCount(s.sub)
		} else {
			c++
		}
	}
	return c
}

// TestPersistentTrees applies random puts and deletes to the trees, checking
// each version against a sorted slice, and that older versions are unchanged.
func TestPersistentTrees(t *testing.T) {
	t.Parallel()
	r := rand.New(rand.NewPCG(1, 2))
	exts := map[string]*Extension{}
	var tr btree[*Extension] = btree[*Extension]{key: extID}
	var h hamt
	type version struct {
		tr   btree[*Extension]
		h    hamt
		want []string
	}
	var history []version
	for step := range 6000 {
		id := fmt.Sprintf("x%04d", r.IntN(1500))
		if r.IntN(3) == 0 || step > 5000 {
			tr, h = tr.del(id), h.del(id)
			delete(exts, id)
		} else {
			e := &Extension{ID: id, TimeoutMS: step}
			tr, h = tr.set(e), h.set(e)
			exts[id] = e
		}
		if step%250 == 0 || step > 5900 {
			var want []string
			for id := range exts {
				want = append(want, id)
			}
			slices.Sort(want)
			history = append(history, version{tr, h, want})
		}
	}
	for i, v := range history {
		var got []string
		v.tr.each(func(e *Extension) bool { got = append(got, e.ID); return true })
		if !slices.Equal(got, v.want) {
			t.Fatalf("version %d: tree holds %d ids, want %d", i, len(got), len(v.want))
		}
		if err := checkKeys(v.tr.root, extID); err != nil {
			t.Fatalf("version %d: %v", i, err)
		}
		if c := hamtCount(v.h.root); c != len(v.want) {
			t.Fatalf("version %d: hamt holds %d, want %d", i, c, len(v.want))
		}
		for _, id := range v.want {
			if e, ok := v.tr.get(id); !ok || e.ID != id {
				t.Fatalf("version %d: tree get %q", i, id)
			}
			if e, ok := v.h.get(id); !ok || e.ID != id {
				t.Fatalf("version %d: hamt get %q", i, id)
			}
		}
		for _, id := range []string{"", "x", "x9999", "y"} {
			if _, ok := v.tr.get(id); ok {
				t.Fatalf("version %d: tree has %q", i, id)
			}
			if _, ok := v.h.get(id); ok {
				t.Fatalf("version %d: hamt has %q", i, id)
			}
		}
	}
	if last := history[len(history)-1]; len(last.want) > 0 && !strings.HasPrefix(last.want[0], "x") {
		t.Fatal("unreachable")
	}
}

// TestHamtCollisions exercises the collision lists below the last trie level
// (ids whose 64-bit hashes are equal).
func TestHamtCollisions(t *testing.T) {
	t.Parallel()
	a, b, b2 := &Extension{ID: "a"}, &Extension{ID: "b"}, &Extension{ID: "b"}
	n := hset(nil, a, 0, 64)
	n = hset(n, b, 0, 64)
	m := hset(n, b2, 0, 64)
	if len(n.coll) != 2 || len(m.coll) != 2 || m.coll[1] != b2 || n.coll[1] != b {
		t.Fatalf("collision lists %v, %v", n.coll, m.coll)
	}
	d, removed := hdel(m, "a", 0, 64)
	if !removed || len(d.coll) != 1 || d.coll[0] != b2 || len(m.coll) != 2 {
		t.Fatalf("delete: removed %v, left %v, old %v", removed, d.coll, m.coll)
	}
	if _, removed := hdel(m, "zz", 0, 64); removed {
		t.Fatal("deleted an absent id")
	}
}
