package cache

import (
	"fmt"
	"slices"
	"strings"
)

// ChangeError reports the change Apply could not apply. It wraps the reason:
// ErrInvalid (malformed change or invalid value, possibly joined
// *ValidationError values) or ErrNotFound (version or instance put for an
// unknown extension).
type ChangeError struct {
	Index int // position in the changes slice
	Op    string
	Kind  string
	ID    string
	Key   string
	Err   error
}

func (e *ChangeError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "change %d (%s %s %q", e.Index, e.Op, e.Kind, e.ID)
	if e.Key != "" {
		fmt.Fprintf(&b, " key %q", e.Key)
	}
	b.WriteString("): ")
	b.WriteString(e.Err.Error())
	return b.String()
}

func (e *ChangeError) Unwrap() error { return e.Err }

// Apply applies one revision's changes, in order, and returns the resulting
// snapshot together with the sorted ids of the extensions whose aggregate
// changed (exactly s.Diff(next); nil when nothing changed). s is never
// modified, and on error no snapshot is returned: a revision applies whole or
// not at all.
//
//   - put extension: upsert the extension's own fields, keeping its versions
//     and instances (a new extension has none);
//   - delete extension, delete aggregate: remove the extension with its
//     versions and instances (no-op when absent);
//   - put version, put instance: upsert the child keyed by Key (or the value's
//     version / instance_id when Key is empty; they must agree otherwise); the
//     extension must exist (ErrNotFound);
//   - delete version, delete instance: remove the child (no-op when it or the
//     extension is absent);
//   - put aggregate: replace the whole aggregate.
//
// The error (*ChangeError) names the change index, kind, id and reason.
func (s *Snapshot) Apply(revision int64, source string, changes []Change) (*Snapshot, []string, error) {
	var d decoder
	n := getNormalizer()
	defer putNormalizer(n)
	overlay := make(map[string]*Extension, len(changes)) // nil: deleted
	for i := range changes {
		c := &changes[i]
		if err := s.applyOne(&d, n, overlay, c); err != nil {
			return nil, nil, &ChangeError{Index: i, Op: c.Op, Kind: c.Kind, ID: c.ID, Key: c.Key, Err: err}
		}
	}

	// Net effect, in id order, dropping changes that leave an aggregate as it was.
	ids := make([]string, 0, len(overlay))
	for id := range overlay {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	changed := ids[:0]
	repl := make([]entry, 0, len(ids)) // e nil: deleted
	prev := make([]entry, 0, len(ids)) // e nil: absent from s
	for _, id := range ids {
		e := overlay[id]
		old, had := s.order.get(id)
		var en entry
		if e == nil {
			if !had {
				continue
			}
		} else {
			en.e = e
			en.h, en.h1 = n.hashes(e)
			if had && old.h == en.h {
				continue
			}
		}
		changed = append(changed, id)
		repl = append(repl, en)
		prev = append(prev, old)
	}

	next := &Snapshot{revision: revision, source: source}
	if len(changed) == 0 {
		next.sum, next.checksumV2, next.count, next.order, next.ids, next.byType = s.sum, s.checksumV2, s.count, s.order, s.ids, s.byType
		next.checksum.Store(s.checksum.Load())
		next.all.Store(s.all.Load())
		for t := range s.typed {
			next.typed[t].Store(s.typed[t].Load())
		}
		return next, nil, nil
	}
	if len(changed) > max(64, s.count/8) {
		// Rebuilding costs O(n); path copying k changes costs O(k log n) with a
		// larger constant.
		next.fill(merge(s, changed, repl))
		return next, slices.Clone(changed), nil
	}
	next.order, next.ids, next.byType, next.count = s.order, s.ids, s.byType, s.count
	sum := s.sum
	for k, id := range changed {
		old := prev[k]
		had := old.e != nil
		if had {
			sum = sub256(sum, &old.h)
			if old.e.Serves() {
				t := typeIndex(old.e.Type)
				next.byType[t] = next.byType[t].del(id)
			}
		}
		if e := repl[k].e; e != nil {
			sum = add256(sum, &repl[k].h)
			next.order = next.order.set(repl[k])
			next.ids = next.ids.set(e)
			if e.Serves() {
				t := typeIndex(e.Type)
				next.byType[t] = next.byType[t].set(e)
			}
			if !had {
				next.count++
			}
		} else {
			next.order = next.order.del(id)
			next.ids = next.ids.del(id)
			next.count--
		}
	}
	next.setSum(sum)
	return next, slices.Clone(changed), nil
}

// merge returns the entries of s with the extensions of ids (sorted) replaced
// by repl (e nil: removed), sorted by id.
func merge(s *Snapshot, ids []string, repl []entry) []entry {
	out := make([]entry, 0, s.count+len(ids))
	k := 0
	s.order.each(func(en entry) bool {
		for k < len(ids) && ids[k] < en.e.ID {
			if repl[k].e != nil {
				out = append(out, repl[k])
			}
			k++
		}
		if k < len(ids) && ids[k] == en.e.ID {
			if repl[k].e != nil {
				out = append(out, repl[k])
			}
			k++
			return true
		}
		out = append(out, en)
		return true
	})
	for ; k < len(ids); k++ {
		if repl[k].e != nil {
			out = append(out, repl[k])
		}
	}
	return out
}

func (s *Snapshot) applyOne(d *decoder, n *normalizer, overlay map[string]*Extension, c *Change) error {
	old, ok := overlay[c.ID]
	if !ok {
		old, _ = s.ids.get(c.ID)
	}
	if c.Op != OpPut && c.Op != OpDelete {
		return fmt.Errorf("%w: unknown op %q", ErrInvalid, c.Op)
	}
	put := c.Op == OpPut
	if put && len(trimWS(c.Value)) == 0 {
		switch c.Kind {
		case KindExtension, KindAggregate, KindVersion, KindInstance:
			return fmt.Errorf("%w: put requires a value", ErrInvalid)
		}
	}
	switch c.Kind {
	case KindExtension, KindAggregate:
		if !put {
			if old != nil {
				overlay[c.ID] = nil
			}
			return nil
		}
		e, err := d.decodeExtensionValue(c.Value, c.Kind == KindAggregate)
		if err != nil {
			return fmt.Errorf("%w: value: %w", ErrInvalid, err)
		}
		if e.ID == "" {
			e.ID = c.ID
		} else if e.ID != c.ID {
			return fmt.Errorf("%w: value id %q does not match change id", ErrInvalid, e.ID)
		}
		if c.Kind == KindAggregate {
			if err := n.normalize(e, true); err != nil {
				return err
			}
		} else {
			if err := n.normalizeOwn(e); err != nil {
				return err
			}
			if old != nil {
				e.Versions, e.Instances = old.Versions, old.Instances
			} else {
				e.Versions, e.Instances = []Version{}, []Instance{}
			}
		}
		overlay[c.ID] = e

	case KindVersion:
		if !put {
			if c.Key == "" {
				return fmt.Errorf("%w: delete version requires a key", ErrInvalid)
			}
			if old == nil {
				return nil
			}
			i, found := slices.BinarySearchFunc(old.Versions, c.Key, func(v Version, k string) int { return strings.Compare(v.Version, k) })
			if !found {
				return nil
			}
			e := shallow(old)
			e.Versions = slices.Delete(slices.Clone(old.Versions), i, i+1)
			overlay[c.ID] = e
			return nil
		}
		if old == nil {
			return fmt.Errorf("%w: extension %q does not exist", ErrNotFound, c.ID)
		}
		v, err := d.decodeVersionValue(c.Value)
		if err != nil {
			return fmt.Errorf("%w: value: %w", ErrInvalid, err)
		}
		if v.Version == "" {
			v.Version = c.Key
		} else if c.Key != "" && v.Version != c.Key {
			return fmt.Errorf("%w: value version %q does not match key", ErrInvalid, v.Version)
		}
		if err := n.normalizeVersion(c.ID, &v); err != nil {
			return err
		}
		e := shallow(old)
		i, found := slices.BinarySearchFunc(old.Versions, v.Version, func(v Version, k string) int { return strings.Compare(v.Version, k) })
		if found {
			e.Versions = slices.Clone(old.Versions)
			e.Versions[i] = v
		} else {
			e.Versions = slices.Insert(slices.Clip(old.Versions), i, v)
		}
		overlay[c.ID] = e

	case KindInstance:
		if !put {
			if c.Key == "" {
				return fmt.Errorf("%w: delete instance requires a key", ErrInvalid)
			}
			if old == nil {
				return nil
			}
			i, found := slices.BinarySearchFunc(old.Instances, c.Key, func(in Instance, k string) int { return strings.Compare(in.InstanceID, k) })
			if !found {
				return nil
			}
			e := shallow(old)
			e.Instances = slices.Delete(slices.Clone(old.Instances), i, i+1)
			overlay[c.ID] = e
			return nil
		}
		if old == nil {
			return fmt.Errorf("%w: extension %q does not exist", ErrNotFound, c.ID)
		}
		in, err := d.decodeInstanceValue(c.Value)
		if err != nil {
			return fmt.Errorf("%w: value: %w", ErrInvalid, err)
		}
		if in.InstanceID == "" {
			in.InstanceID = c.Key
		} else if c.Key != "" && in.InstanceID != c.Key {
			return fmt.Errorf("%w: value instance_id %q does not match key", ErrInvalid, in.InstanceID)
		}
		if err := n.normalizeInstance(c.ID, &in); err != nil {
			return err
		}
		e := shallow(old)
		i, found := slices.BinarySearchFunc(old.Instances, in.InstanceID, func(in Instance, k string) int { return strings.Compare(in.InstanceID, k) })
		if found {
			e.Instances = slices.Clone(old.Instances)
			e.Instances[i] = in
		} else {
			e.Instances = slices.Insert(slices.Clip(old.Instances), i, in)
		}
		overlay[c.ID] = e

	default:
		return fmt.Errorf("%w: unknown kind %q", ErrInvalid, c.Kind)
	}
	return nil
}

func shallow(e *Extension) *Extension {
	c := new(Extension)
	*c = *e
	return c
}
