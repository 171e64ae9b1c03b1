package cache

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
)

// Snapshot is one immutable, versioned state of the registry. All methods are
// safe for concurrent use without locks. Extensions and slices returned by a
// Snapshot are shared with every other reader and must not be modified.
type Snapshot struct {
	revision int64
	source   string
	checksum string

	all    []*Extension          // every extension, ascending id
	hashes []byte                // per-extension SHA-256, 32 bytes each, aligned with all
	index  map[string]*Extension // id -> extension, including disabled ones
	byType [numTypes][]*Extension
}

// New validates and normalizes exts (the input is not retained or modified),
// sorts them by id, hashes them and returns the snapshot. Every problem of
// every extension is reported (joined *ValidationError values wrapping
// ErrInvalid); duplicate ids are an error.
func New(revision int64, source string, exts []Extension) (*Snapshot, error) {
	items := make([]Extension, len(exts))
	hs := make([][32]byte, len(exts))
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
			hs[i] = n.hash(&items[i])
		}
	})
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return build(revision, source, items, hs)
}

// build assembles a snapshot from normalized extensions and their hashes.
func build(revision int64, source string, items []Extension, hs [][32]byte) (*Snapshot, error) {
	n := len(items)
	perm := make([]int32, n)
	for i := range perm {
		perm[i] = int32(i)
	}
	cmp := func(a, b int32) int { return strings.Compare(items[a].ID, items[b].ID) }
	if !slices.IsSortedFunc(perm, cmp) {
		slices.SortFunc(perm, cmp)
	}
	s := &Snapshot{
		revision: revision,
		source:   source,
		all:      make([]*Extension, n),
		hashes:   make([]byte, n*sha256.Size),
		index:    make(map[string]*Extension, n),
	}
	var errs []error
	for j, i := range perm {
		e := &items[i]
		s.all[j] = e
		copy(s.hashes[j*sha256.Size:], hs[i][:])
		if j > 0 && s.all[j-1].ID == e.ID {
			errs = append(errs, &ValidationError{ID: e.ID, Field: "id", Rule: "must be unique (duplicate extension id)"})
		}
		s.index[e.ID] = e
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	var counts [numTypes]int
	for _, e := range s.all {
		if e.Serves() {
			counts[typeIndex(e.Type)]++
		}
	}
	for t := range s.byType {
		s.byType[t] = make([]*Extension, 0, counts[t])
	}
	for _, e := range s.all {
		if e.Serves() {
			t := typeIndex(e.Type)
			s.byType[t] = append(s.byType[t], e)
		}
	}
	s.checksum = checksum(s.hashes)
	return s, nil
}

// checksum is the lowercase hex SHA-256 of the concatenated per-extension hashes.
func checksum(hashes []byte) string {
	sum := sha256.Sum256(hashes)
	return hex.EncodeToString(sum[:])
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

// Checksum returns the snapshot checksum in lowercase hex: the SHA-256 of the
// concatenated per-extension hashes (SHA-256 of each canonical aggregate, see
// Canonical) of every extension, disabled ones included, in ascending id
// order. The empty registry's checksum is the SHA-256 of the empty string.
func (s *Snapshot) Checksum() string { return s.checksum }

// Len returns the number of extensions, including disabled ones.
func (s *Snapshot) Len() int { return len(s.all) }

// Lookup returns the extension with the given id when it can serve requests
// (Extension.Serves: enabled, or disabled with enabled routed versions in
// rollout; Choose decides per request). A disabled extension without such
// versions is known (see Get) but never invoked, so Lookup reports it as
// absent. Lookup does not allocate.
func (s *Snapshot) Lookup(id string) (*Extension, bool) {
	e, ok := s.index[id]
	if !ok || !e.Serves() {
		return nil, false
	}
	return e, true
}

// Get returns the extension with the given id, enabled or not.
func (s *Snapshot) Get(id string) (*Extension, bool) {
	e, ok := s.index[id]
	return e, ok
}

// ByType returns the extensions of a type that can serve requests (see Lookup) in ascending id order (nil
// for an unknown type). The slice is shared and read-only. ByType does not
// allocate.
func (s *Snapshot) ByType(typ string) []*Extension {
	t := typeIndex(typ)
	if t < 0 {
		return nil
	}
	l := s.byType[t]
	return l[:len(l):len(l)]
}

// All returns every extension, disabled ones included, in ascending id order.
// The slice is shared and read-only.
func (s *Snapshot) All() []*Extension {
	return s.all[:len(s.all):len(s.all)]
}

// find returns the position of id in s.all.
func (s *Snapshot) find(id string) (int, bool) {
	return slices.BinarySearchFunc(s.all, id, func(e *Extension, id string) int { return strings.Compare(e.ID, id) })
}

// Hash returns the per-extension hash (SHA-256 of the canonical aggregate).
func (s *Snapshot) Hash(id string) ([32]byte, bool) {
	var h [32]byte
	i, ok := s.find(id)
	if !ok {
		return h, false
	}
	copy(h[:], s.hashes[i*sha256.Size:])
	return h, true
}

// Diff returns the sorted ids whose aggregate differs between s and o:
// present in only one of them, or with a different per-extension hash. It
// returns nil when they hold the same extensions. A nil snapshot is empty.
func (s *Snapshot) Diff(o *Snapshot) []string {
	var a, b []*Extension
	var ha, hb []byte
	if s != nil {
		a, ha = s.all, s.hashes
	}
	if o != nil {
		b, hb = o.all, o.hashes
	}
	if s != nil && o != nil && s.checksum == o.checksum {
		return nil
	}
	var out []string
	i, j := 0, 0
	for i < len(a) && j < len(b) {
		if a[i] == b[j] { // shared, hence identical
			i++
			j++
			continue
		}
		switch c := strings.Compare(a[i].ID, b[j].ID); {
		case c < 0:
			out = append(out, a[i].ID)
			i++
		case c > 0:
			out = append(out, b[j].ID)
			j++
		default:
			if !bytes.Equal(ha[i*sha256.Size:(i+1)*sha256.Size], hb[j*sha256.Size:(j+1)*sha256.Size]) {
				out = append(out, a[i].ID)
			}
			i++
			j++
		}
	}
	for ; i < len(a); i++ {
		out = append(out, a[i].ID)
	}
	for ; j < len(b); j++ {
		out = append(out, b[j].ID)
	}
	return out
}
