package cache

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"iter"
	"math/bits"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
)

// Snapshot is one immutable, versioned state of the registry. All methods are
// safe for concurrent use without locks. Extensions and slices returned by a
// Snapshot are shared with every other reader and must not be modified.
//
// Its indexes are persistent (copy-on-write) trees: Apply shares every part
// that a revision did not change with the snapshot it was applied to, so a
// delta touching k extensions costs O(k log n), not O(n).
type Snapshot struct {
	revision   int64
	source     string
	count      int
	sum        [32]byte // checksum v2: the sum of the per-extension hashes modulo 2^256
	checksumV2 string   // sum in hex
	// checksum is the v1 checksum, computed on first use: it is a hash over
	// every per-extension hash in id order, O(n) for every snapshot.
	checksum atomic.Pointer[string]

	order  btree[entry]                // every extension with its hash, ascending id
	ids    hamt                        // id -> extension, including disabled ones
	byType [numTypes]btree[*Extension] // extensions that serve, per type, ascending id

	// Slices for All and ByType, made on first use (they cost O(n) to make).
	all   atomic.Pointer[[]*Extension]
	typed [numTypes]atomic.Pointer[[]*Extension]
}

// entry is an extension with its per-extension hashes.
type entry struct {
	e  *Extension
	h  [32]byte  // SHA-256 of the v2 (RFC 8785) canonical aggregate
	h1 *[32]byte // SHA-256 of the v1 canonical aggregate when it differs from h (rare)
}

// v1 returns the entry's v1 per-extension hash.
func (en *entry) v1() *[32]byte {
	if en.h1 != nil {
		return en.h1
	}
	return &en.h
}

func entryID(en entry) string   { return en.e.ID }
func extID(e *Extension) string { return e.ID }

// New validates and normalizes exts (the input is not retained or modified),
// sorts them by id, hashes them and returns the snapshot. Every problem of
// every extension is reported (joined *ValidationError values wrapping
// ErrInvalid); duplicate ids are an error.
func New(revision int64, source string, exts []Extension) (*Snapshot, error) {
	items := make([]Extension, len(exts))
	entries := make([]entry, len(exts))
	errs := make([]error, len(exts))
	forChunks(len(exts), func(lo, hi int) {
		n := getNormalizer()
		defer putNormalizer(n)
		for i := lo; i < hi; i++ {
			items[i] = cloneExtension(&exts[i])
			if err := n.normalize(&items[i], false); err != nil {
				errs[i] = err
				continue
			}
			entries[i].e = &items[i]
			entries[i].h, entries[i].h1 = n.hashes(&items[i])
		}
	})
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return build(revision, source, entries)
}

// build assembles a snapshot from normalized extensions with their hashes.
func build(revision int64, source string, entries []entry) (*Snapshot, error) {
	n := len(entries)
	cmp := func(a, b entry) int { return strings.Compare(a.e.ID, b.e.ID) }
	if !slices.IsSortedFunc(entries, cmp) {
		slices.SortFunc(entries, cmp)
	}
	var errs []error
	for j := 1; j < n; j++ {
		if entries[j-1].e.ID == entries[j].e.ID {
			errs = append(errs, &ValidationError{ID: entries[j].e.ID, Field: "id", Rule: "must be unique (duplicate extension id)"})
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	s := &Snapshot{revision: revision, source: source}
	s.fill(entries)
	return s, nil
}

// fill builds every index of s from entries (sorted by id, unique).
func (s *Snapshot) fill(entries []entry) {
	s.count = len(entries)
	s.order = buildBtree(entries, entryID)
	s.ids = buildHamt(entries)
	var counts [numTypes]int
	for _, en := range entries {
		if en.e.Serves() {
			counts[typeIndex(en.e.Type)]++
		}
	}
	var typed [numTypes][]*Extension
	for t := range typed {
		typed[t] = make([]*Extension, 0, counts[t])
	}
	for _, en := range entries {
		if en.e.Serves() {
			t := typeIndex(en.e.Type)
			typed[t] = append(typed[t], en.e)
		}
	}
	for t := range typed {
		s.byType[t] = buildBtree(typed[t], extID)
		s.typed[t].Store(&typed[t])
	}
	var sum [32]byte
	for i := range entries {
		sum = add256(sum, &entries[i].h)
	}
	s.setSum(sum)
}

// setSum sets the v2 checksum.
func (s *Snapshot) setSum(sum [32]byte) {
	s.sum = sum
	s.checksumV2 = hex.EncodeToString(sum[:])
}

// add256 returns a + b modulo 2^256, both big-endian.
func add256(a [32]byte, b *[32]byte) [32]byte {
	var out [32]byte
	var carry uint64
	for i := 24; i >= 0; i -= 8 {
		var x uint64
		x, carry = bits.Add64(binary.BigEndian.Uint64(a[i:]), binary.BigEndian.Uint64(b[i:]), carry)
		binary.BigEndian.PutUint64(out[i:], x)
	}
	return out
}

// sub256 returns a - b modulo 2^256, both big-endian.
func sub256(a [32]byte, b *[32]byte) [32]byte {
	var out [32]byte
	var borrow uint64
	for i := 24; i >= 0; i -= 8 {
		var x uint64
		x, borrow = bits.Sub64(binary.BigEndian.Uint64(a[i:]), binary.BigEndian.Uint64(b[i:]), borrow)
		binary.BigEndian.PutUint64(out[i:], x)
	}
	return out
}

// checksumV1 is the lowercase hex SHA-256 of the concatenated v1
// per-extension hashes, in id order.
func (s *Snapshot) checksumV1() string {
	d := sha256.New()
	var buf [64 * sha256.Size]byte
	k := 0
	s.order.each(func(en entry) bool {
		copy(buf[k*sha256.Size:], en.v1()[:])
		if k++; k == 64 {
			d.Write(buf[:])
			k = 0
		}
		return true
	})
	d.Write(buf[:k*sha256.Size])
	return hex.EncodeToString(d.Sum(nil))
}

// buildHamt returns the id index of entries, building it in place (its nodes
// are not shared until it is returned).
func buildHamt(entries []entry) hamt {
	var root *hnode
	for _, en := range entries {
		root = hsetOwned(root, en.e, hashID(en.e.ID), 0)
	}
	return hamt{root: root}
}

// hsetOwned is hset for a trie that nobody else can see yet: it changes nodes
// in place.
func hsetOwned(n *hnode, e *Extension, hv uint64, shift uint) *hnode {
	if n == nil || shift >= 64 {
		return hset(n, e, hv, shift)
	}
	bit := uint64(1) << ((hv >> shift) & hamtMask)
	i := popcount(n.bitmap & (bit - 1))
	if n.bitmap&bit == 0 {
		n.slots = slices.Insert(n.slots, i, hslot{e: e})
		n.bitmap |= bit
		return n
	}
	s := &n.slots[i]
	switch {
	case s.sub != nil:
		s.sub = hsetOwned(s.sub, e, hv, shift+hamtBits)
	case s.e.ID == e.ID:
		s.e = e
	default:
		sub := hset(nil, s.e, hashID(s.e.ID), shift+hamtBits)
		*s = hslot{sub: hsetOwned(sub, e, hv, shift+hamtBits)}
	}
	return n
}

// forChunks runs fn over [0, n) in chunks on up to GOMAXPROCS goroutines.
func forChunks(n int, fn func(lo, hi int)) {
	workers := runtime.GOMAXPROCS(0)
	if n < 1024 || workers == 1 {
		fn(0, n)
		return
	}
	chunk := max(256, n/(workers*8))
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				hi := int(next.Add(int64(chunk)))
				lo := hi - chunk
				if lo >= n {
					return
				}
				fn(lo, min(hi, n))
			}
		})
	}
	wg.Wait()
}

// Revision returns the registry revision the snapshot reflects.
func (s *Snapshot) Revision() int64 { return s.revision }

// Source returns where the snapshot came from, e.g. "database" or "fixtures".
func (s *Snapshot) Source() string { return s.source }

// Checksum returns the snapshot's protocol v1 checksum in lowercase hex: the
// SHA-256 of the concatenated per-extension hashes (SHA-256 of each canonical
// aggregate, see Canonical) of every extension, disabled ones included, in
// ascending id order. The empty registry's checksum is the SHA-256 of the
// empty string. It is computed on the first call for each snapshot, in
// O(n): code that follows every revision compares ChecksumV2 instead.
func (s *Snapshot) Checksum() string {
	if p := s.checksum.Load(); p != nil {
		return *p
	}
	sum := s.checksumV1()
	s.checksum.CompareAndSwap(nil, &sum)
	return *s.checksum.Load()
}

// KnownChecksum returns the v1 checksum if it has been computed (Checksum),
// else "".
func (s *Snapshot) KnownChecksum() string {
	if p := s.checksum.Load(); p != nil {
		return *p
	}
	return ""
}

// ChecksumV2 returns the snapshot's protocol v2 checksum: the sum modulo
// 2^256 of the per-extension hashes, each the SHA-256 of the extension's
// RFC 8785 canonical aggregate (CanonicalV2) read as a big-endian number,
// written as 64 lowercase hex digits. The empty registry's is 64 zeros. Apply
// updates it in O(changed extensions).
func (s *Snapshot) ChecksumV2() string { return s.checksumV2 }

// Len returns the number of extensions, including disabled ones.
func (s *Snapshot) Len() int { return s.count }

// Lookup returns the extension with the given id when it can serve requests
// (Extension.Serves: enabled, or disabled with enabled routed versions in
// rollout; Choose decides per request). A disabled extension without such
// versions is known (see Get) but never invoked, so Lookup reports it as
// absent. Lookup does not allocate.
func (s *Snapshot) Lookup(id string) (*Extension, bool) {
	e, ok := s.ids.get(id)
	if !ok || !e.Serves() {
		return nil, false
	}
	return e, true
}

// Get returns the extension with the given id, enabled or not. Get does not
// allocate.
func (s *Snapshot) Get(id string) (*Extension, bool) {
	return s.ids.get(id)
}

// ByType returns the extensions of a type that can serve requests (see
// Lookup) in ascending id order (nil for an unknown type). The slice is shared
// and read-only. The first call on a snapshot made by Apply builds the slice
// (O(extensions of the type)); later calls do not allocate. OfType iterates
// without building it.
func (s *Snapshot) ByType(typ string) []*Extension {
	t := typeIndex(typ)
	if t < 0 {
		return nil
	}
	if p := s.typed[t].Load(); p != nil {
		return (*p)[:len(*p):len(*p)]
	}
	l := make([]*Extension, 0, 16)
	s.byType[t].each(func(e *Extension) bool { l = append(l, e); return true })
	l = slices.Clip(l)
	s.typed[t].CompareAndSwap(nil, &l)
	p := s.typed[t].Load()
	return (*p)[:len(*p):len(*p)]
}

// OfType iterates over the extensions of a type that can serve requests (see
// Lookup), in ascending id order, without allocating a slice.
func (s *Snapshot) OfType(typ string) iter.Seq[*Extension] {
	return func(yield func(*Extension) bool) {
		if t := typeIndex(typ); t >= 0 {
			s.byType[t].each(yield)
		}
	}
}

// All returns every extension, disabled ones included, in ascending id order.
// The slice is shared and read-only. The first call on a snapshot made by
// Apply builds the slice (O(n)); later calls do not allocate. Extensions
// iterates without building it.
func (s *Snapshot) All() []*Extension {
	if p := s.all.Load(); p != nil {
		return (*p)[:len(*p):len(*p)]
	}
	l := make([]*Extension, 0, s.count)
	s.order.each(func(en entry) bool { l = append(l, en.e); return true })
	s.all.CompareAndSwap(nil, &l)
	p := s.all.Load()
	return (*p)[:len(*p):len(*p)]
}

// Extensions iterates over every extension, disabled ones included, in
// ascending id order, without allocating a slice.
func (s *Snapshot) Extensions() iter.Seq[*Extension] {
	return func(yield func(*Extension) bool) {
		s.order.each(func(en entry) bool { return yield(en.e) })
	}
}

// Hash returns the per-extension hash: the SHA-256 of the v2 (RFC 8785)
// canonical aggregate (CanonicalV2).
func (s *Snapshot) Hash(id string) ([32]byte, bool) {
	en, ok := s.order.get(id)
	return en.h, ok
}

// Diff returns the sorted ids whose aggregate differs between s and o:
// present in only one of them, or with a different per-extension hash. It
// returns nil when they hold the same extensions. A nil snapshot is empty.
// Parts that s and o share (one was applied to the other) are skipped whole.
func (s *Snapshot) Diff(o *Snapshot) []string {
	if s != nil && o != nil && s.order.root == o.order.root {
		return nil
	}
	var a, b []*bnode[entry]
	if s != nil {
		s.order.leaves(func(n *bnode[entry]) bool { a = append(a, n); return true })
	}
	if o != nil {
		o.order.leaves(func(n *bnode[entry]) bool { b = append(b, n); return true })
	}
	var out []string
	ia, ib, pa, pb := 0, 0, 0, 0
	for ia < len(a) && ib < len(b) {
		if pa == 0 && pb == 0 && a[ia] == b[ib] { // a shared leaf, hence identical
			ia++
			ib++
			continue
		}
		x, y := a[ia].items[pa], b[ib].items[pb]
		adv := 0
		switch c := strings.Compare(x.e.ID, y.e.ID); {
		case c < 0:
			out = append(out, x.e.ID)
			adv = 1
		case c > 0:
			out = append(out, y.e.ID)
			adv = 2
		default:
			if x.e != y.e && x.h != y.h {
				out = append(out, x.e.ID)
			}
			adv = 3
		}
		if adv&1 != 0 {
			if pa++; pa == len(a[ia].items) {
				ia, pa = ia+1, 0
			}
		}
		if adv&2 != 0 {
			if pb++; pb == len(b[ib].items) {
				ib, pb = ib+1, 0
			}
		}
	}
	for ; ia < len(a); ia, pa = ia+1, 0 {
		for _, en := range a[ia].items[pa:] {
			out = append(out, en.e.ID)
		}
	}
	for ; ib < len(b); ib, pb = ib+1, 0 {
		for _, en := range b[ib].items[pb:] {
			out = append(out, en.e.ID)
		}
	}
	return out
}
