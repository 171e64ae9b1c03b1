package cache

import (
	"encoding/json"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
)

func mustJSON(t testing.TB, v any) json.RawMessage {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func putAggregate(t testing.TB, e Extension) Change {
	return Change{Op: OpPut, Kind: KindAggregate, ID: e.ID, Value: mustJSON(t, e)}
}

// expectedAfter builds the expected snapshot from scratch with New.
func expectedAfter(t *testing.T, exts []Extension) *Snapshot {
	t.Helper()
	return mustNew(t, 2, exts)
}

func TestApply(t *testing.T) {
	t.Parallel()
	base := func() []Extension {
		a := validExt("a")
		a.Versions = []Version{validVersion("v1"), validVersion("v2")}
		a.Instances = []Instance{validInstance("i1"), validInstance("i2")}
		b := validExt("b")
		b.Type = TypePost
		c := validExt("c")
		c.Enabled = false
		return []Extension{a, b, c}
	}
	type result struct {
		exts    []Extension // expected content after Apply
		changed []string
	}
	for _, tc := range []struct {
		name    string
		changes func(t *testing.T) []Change
		want    func() result
	}{
		{"put extension updates own fields and keeps children", func(t *testing.T) []Change {
			a := validExt("a")
			a.TimeoutMS = 999
			a.Versions = []Version{validVersion("v9")} // ignored for kind extension
			return []Change{{Op: OpPut, Kind: KindExtension, ID: "a", Value: mustJSON(t, a)}}
		}, func() result {
			x := base()
			x[0].TimeoutMS = 999
			return result{x, []string{"a"}}
		}},
		{"put extension creates one without children", func(t *testing.T) []Change {
			d := validExt("d")
			d.Type = TypePre
			d.Instances = []Instance{validInstance("ignored")}
			return []Change{{Op: OpPut, Kind: KindExtension, ID: "d", Value: mustJSON(t, d)}}
		}, func() result {
			d := validExt("d")
			d.Type = TypePre
			return result{append(base(), d), []string{"d"}}
		}},
		{"put extension id from change", func(t *testing.T) []Change {
			return []Change{{Op: OpPut, Kind: KindExtension, ID: "e", Value: json.RawMessage(
				`{"type":"pre","subject":"ext.e.v1","timeout_ms":50,"retry":0,"enabled":true,"version":"v1"}`)}}
		}, func() result {
			e := Extension{ID: "e", Type: TypePre, Subject: "ext.e.v1", TimeoutMS: 50, Enabled: true, Version: "v1"}
			return result{append(base(), e), []string{"e"}}
		}},
		{"identical put changes nothing", func(t *testing.T) []Change {
			return []Change{{Op: OpPut, Kind: KindExtension, ID: "b", Value: mustJSON(t, base()[1])}}
		}, func() result { return result{base(), nil} }},
		{"delete extension", func(t *testing.T) []Change {
			return []Change{{Op: OpDelete, Kind: KindExtension, ID: "a"}}
		}, func() result { return result{base()[1:], []string{"a"}} }},
		{"delete absent extension is a no-op", func(t *testing.T) []Change {
			return []Change{{Op: OpDelete, Kind: KindExtension, ID: "zz"}, {Op: OpDelete, Kind: KindAggregate, ID: "zz"}}
		}, func() result { return result{base(), nil} }},
		{"delete aggregate", func(t *testing.T) []Change {
			return []Change{{Op: OpDelete, Kind: KindAggregate, ID: "c"}}
		}, func() result { return result{base()[:2], []string{"c"}} }},
		{"put aggregate replaces everything", func(t *testing.T) []Change {
			a := validExt("a")
			a.Versions = []Version{validVersion("v3")}
			return []Change{putAggregate(t, a)}
		}, func() result {
			x := base()
			x[0].Versions = []Version{validVersion("v3")}
			x[0].Instances = nil
			return result{x, []string{"a"}}
		}},
		{"put aggregate creates", func(t *testing.T) []Change {
			f := validExt("f")
			f.Instances = []Instance{validInstance("i9")}
			return []Change{putAggregate(t, f)}
		}, func() result {
			f := validExt("f")
			f.Instances = []Instance{validInstance("i9")}
			return result{append(base(), f), []string{"f"}}
		}},
		{"put version inserts", func(t *testing.T) []Change {
			v := validVersion("v15")
			v.RoutingRules = json.RawMessage(`{"tenant":"t1"}`)
			return []Change{{Op: OpPut, Kind: KindVersion, ID: "a", Key: "v15", Value: mustJSON(t, v)}}
		}, func() result {
			x := base()
			v := validVersion("v15")
			v.RoutingRules = json.RawMessage(`{"tenant":"t1"}`)
			x[0].Versions = append(x[0].Versions, v)
			return result{x, []string{"a"}}
		}},
		{"put version replaces", func(t *testing.T) []Change {
			v := validVersion("v2")
			v.TimeoutMS = 4000
			return []Change{{Op: OpPut, Kind: KindVersion, ID: "a", Key: "v2", Value: mustJSON(t, v)}}
		}, func() result {
			x := base()
			x[0].Versions[1].TimeoutMS = 4000
			return result{x, []string{"a"}}
		}},
		{"put version key from value", func(t *testing.T) []Change {
			return []Change{{Op: OpPut, Kind: KindVersion, ID: "b", Value: mustJSON(t, validVersion("v1"))}}
		}, func() result {
			x := base()
			x[1].Versions = []Version{validVersion("v1")}
			return result{x, []string{"b"}}
		}},
		{"delete version", func(t *testing.T) []Change {
			return []Change{{Op: OpDelete, Kind: KindVersion, ID: "a", Key: "v1"}}
		}, func() result {
			x := base()
			x[0].Versions = x[0].Versions[1:]
			return result{x, []string{"a"}}
		}},
		{"delete absent version and child of absent extension", func(t *testing.T) []Change {
			return []Change{
				{Op: OpDelete, Kind: KindVersion, ID: "a", Key: "v99"},
				{Op: OpDelete, Kind: KindVersion, ID: "zz", Key: "v1"},
				{Op: OpDelete, Kind: KindInstance, ID: "zz", Key: "i1"},
				{Op: OpDelete, Kind: KindInstance, ID: "b", Key: "i1"},
			}
		}, func() result { return result{base(), nil} }},
		{"put instance inserts", func(t *testing.T) []Change {
			return []Change{{Op: OpPut, Kind: KindInstance, ID: "a", Key: "i0", Value: mustJSON(t, validInstance("i0"))}}
		}, func() result {
			x := base()
			x[0].Instances = append([]Instance{validInstance("i0")}, x[0].Instances...)
			return result{x, []string{"a"}}
		}},
		{"put instance replaces", func(t *testing.T) []Change {
			in := validInstance("i2")
			in.HealthStatus = HealthUnhealthy
			in.Weight = 0
			return []Change{{Op: OpPut, Kind: KindInstance, ID: "a", Key: "i2", Value: mustJSON(t, in)}}
		}, func() result {
			x := base()
			x[0].Instances[1].HealthStatus = HealthUnhealthy
			x[0].Instances[1].Weight = 0
			return result{x, []string{"a"}}
		}},
		{"delete instance", func(t *testing.T) []Change {
			return []Change{{Op: OpDelete, Kind: KindInstance, ID: "a", Key: "i2"}}
		}, func() result {
			x := base()
			x[0].Instances = x[0].Instances[:1]
			return result{x, []string{"a"}}
		}},
		{"disable moves out of ByType", func(t *testing.T) []Change {
			b := base()[1]
			b.Enabled = false
			return []Change{{Op: OpPut, Kind: KindExtension, ID: "b", Value: mustJSON(t, b)}}
		}, func() result {
			x := base()
			x[1].Enabled = false
			return result{x, []string{"b"}}
		}},
		{"type change moves between ByType lists", func(t *testing.T) []Change {
			a := validExt("a")
			a.Type = TypeProvider
			c := validExt("c")
			c.Type = TypePost
			return []Change{
				{Op: OpPut, Kind: KindExtension, ID: "a", Value: mustJSON(t, a)},
				{Op: OpPut, Kind: KindExtension, ID: "c", Value: mustJSON(t, c)}, // enables c
			}
		}, func() result {
			x := base()
			x[0].Type = TypeProvider
			x[2].Type = TypePost
			x[2].Enabled = true
			return result{x, []string{"a", "c"}}
		}},
		{"changes apply in order", func(t *testing.T) []Change {
			g := validExt("g")
			g2 := validExt("g")
			g2.Retry = 3
			return []Change{
				{Op: OpPut, Kind: KindExtension, ID: "g", Value: mustJSON(t, g)},
				{Op: OpPut, Kind: KindVersion, ID: "g", Key: "v1", Value: mustJSON(t, validVersion("v1"))},
				{Op: OpPut, Kind: KindInstance, ID: "g", Key: "i1", Value: mustJSON(t, validInstance("i1"))},
				{Op: OpPut, Kind: KindExtension, ID: "g", Value: mustJSON(t, g2)},
				{Op: OpDelete, Kind: KindExtension, ID: "b"},
				{Op: OpPut, Kind: KindAggregate, ID: "b", Value: mustJSON(t, validExt("b"))},
				{Op: OpPut, Kind: KindExtension, ID: "h", Value: mustJSON(t, validExt("h"))},
				{Op: OpDelete, Kind: KindAggregate, ID: "h"},
			}
		}, func() result {
			x := base()
			g := validExt("g")
			g.Retry = 3
			g.Versions = []Version{validVersion("v1")}
			g.Instances = []Instance{validInstance("i1")}
			x[1] = validExt("b")
			return result{append(x, g), []string{"b", "g"}}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := mustNew(t, 1, base())
			oldChecksum := s.Checksum()
			oldAll := slices.Clone(s.All())
			oldCopies := make([]Extension, len(oldAll))
			for i, e := range oldAll {
				oldCopies[i] = cloneExtension(e)
			}
			oldPre := ids(s.ByType(TypeValidator))

			next, changed, err := s.Apply(2, "database", tc.changes(t))
			if err != nil {
				t.Fatalf("Apply: %v", err)
			}
			want := tc.want()
			exp := expectedAfter(t, want.exts)
			if !slices.Equal(changed, want.changed) {
				t.Errorf("changed = %v, want %v", changed, want.changed)
			}
			if d := s.Diff(next); !slices.Equal(d, changed) {
				t.Errorf("Diff = %v, changed = %v", d, changed)
			}
			if next.Revision() != 2 || next.Source() != "database" {
				t.Errorf("revision/source = %d %q", next.Revision(), next.Source())
			}
			assertSameSnapshot(t, next, exp)

			// The old snapshot is unchanged.
			if s.Checksum() != oldChecksum || s.Revision() != 1 || !slices.Equal(s.All(), oldAll) ||
				!slices.Equal(ids(s.ByType(TypeValidator)), oldPre) {
				t.Errorf("old snapshot changed")
			}
			for i, e := range s.All() {
				if !reflect.DeepEqual(*e, oldCopies[i]) {
					t.Errorf("old extension %s modified:\n%+v\n%+v", e.ID, *e, oldCopies[i])
				}
			}
			fresh := mustNew(t, 1, base())
			if fresh.Checksum() != s.Checksum() {
				t.Errorf("old snapshot content changed")
			}
		})
	}
}

// assertSameSnapshot checks every observable property of got against want.
func assertSameSnapshot(t *testing.T, got, want *Snapshot) {
	t.Helper()
	if got.Checksum() != want.Checksum() {
		t.Errorf("checksum %s, want %s", got.Checksum(), want.Checksum())
	}
	if got.ChecksumV2() != want.ChecksumV2() {
		t.Errorf("checksum_v2 %s, want %s", got.ChecksumV2(), want.ChecksumV2())
	}
	if got.Len() != want.Len() || !slices.Equal(ids(got.All()), ids(want.All())) {
		t.Errorf("All = %v, want %v", ids(got.All()), ids(want.All()))
	}
	for _, typ := range []string{TypePre, TypeValidator, TypePost, TypeProvider} {
		if g, w := ids(got.ByType(typ)), ids(want.ByType(typ)); !slices.Equal(g, w) {
			t.Errorf("ByType(%s) = %v, want %v", typ, g, w)
		}
	}
	for _, w := range want.All() {
		g, ok := got.Get(w.ID)
		if !ok || !reflect.DeepEqual(*g, *w) {
			t.Errorf("Get(%s) = %+v, want %+v", w.ID, g, w)
		}
		_, lg := got.Lookup(w.ID)
		_, lw := want.Lookup(w.ID)
		hg, _ := got.Hash(w.ID)
		hw, _ := want.Hash(w.ID)
		if lg != lw || hg != hw {
			t.Errorf("Lookup/Hash(%s) differ", w.ID)
		}
	}
	if n := len(got.All()); n != want.Len() || got.Len() != want.Len() {
		t.Errorf("All has %d entries, Len %d, want %d", n, got.Len(), want.Len())
	}
	if err := got.check(); err != nil {
		t.Error(err)
	}
}

func TestApplyErrors(t *testing.T) {
	t.Parallel()
	a := validExt("a")
	bad := validExt("a")
	bad.TimeoutMS = 7
	badVersion := validVersion("v2")
	badVersion.TimeoutMS = 6000
	badInstance := validInstance("i1")
	badInstance.Weight = 101
	for _, tc := range []struct {
		name    string
		changes []Change
		want    string
		target  error
	}{
		{"unknown op", []Change{{Op: "upsert", Kind: KindExtension, ID: "a"}}, `change 0 (upsert extension "a"): cache: invalid: unknown op "upsert"`, ErrInvalid},
		{"unknown kind", []Change{{Op: OpPut, Kind: "tenant", ID: "a", Value: json.RawMessage(`{}`)}}, `change 0 (put tenant "a"): cache: invalid: unknown kind "tenant"`, ErrInvalid},
		{"invalid extension value", []Change{{Op: OpPut, Kind: KindExtension, ID: "a", Value: mustJSON(t, bad)}},
			`change 0 (put extension "a"): extension "a": timeout_ms must be between 10 and 5000 (got 7)`, ErrInvalid},
		{"invalid aggregate value names its index", []Change{
			{Op: OpPut, Kind: KindExtension, ID: "a", Value: mustJSON(t, a)},
			{Op: OpPut, Kind: KindAggregate, ID: "a", Value: mustJSON(t, bad)},
		}, `change 1 (put aggregate "a"): extension "a": timeout_ms must be between 10 and 5000 (got 7)`, ErrInvalid},
		{"invalid version value", []Change{{Op: OpPut, Kind: KindVersion, ID: "a", Key: "v2", Value: mustJSON(t, badVersion)}},
			`change 0 (put version "a" key "v2"): extension "a": versions[v2].timeout_ms must be between 10 and 5000 (got 6000)`, ErrInvalid},
		{"invalid instance value", []Change{{Op: OpPut, Kind: KindInstance, ID: "a", Key: "i1", Value: mustJSON(t, badInstance)}},
			`change 0 (put instance "a" key "i1"): extension "a": instances[i1].weight must be between 0 and 100 (got 101)`, ErrInvalid},
		{"version for unknown extension", []Change{{Op: OpPut, Kind: KindVersion, ID: "zz", Key: "v1", Value: mustJSON(t, validVersion("v1"))}},
			`change 0 (put version "zz" key "v1"): cache: unknown extension: extension "zz" does not exist`, ErrNotFound},
		{"instance for unknown extension", []Change{{Op: OpPut, Kind: KindInstance, ID: "zz", Key: "i1", Value: mustJSON(t, validInstance("i1"))}},
			`change 0 (put instance "zz" key "i1"): cache: unknown extension: extension "zz" does not exist`, ErrNotFound},
		{"version for deleted extension", []Change{
			{Op: OpDelete, Kind: KindExtension, ID: "a"},
			{Op: OpPut, Kind: KindVersion, ID: "a", Key: "v1", Value: mustJSON(t, validVersion("v1"))},
		}, `change 1 (put version "a" key "v1"): cache: unknown extension`, ErrNotFound},
		{"malformed value", []Change{{Op: OpPut, Kind: KindAggregate, ID: "a", Value: json.RawMessage(`{"id":"a",`)}},
			`change 0 (put aggregate "a"): cache: invalid: value: invalid JSON at offset 10: unexpected end of input`, ErrInvalid},
		{"wrong field type", []Change{{Op: OpPut, Kind: KindExtension, ID: "a", Value: json.RawMessage(`{"timeout_ms":"x"}`)}},
			`change 0 (put extension "a"): cache: invalid: value: timeout_ms: invalid JSON at offset 14: expected integer`, ErrInvalid},
		{"missing value", []Change{{Op: OpPut, Kind: KindVersion, ID: "a", Key: "v1"}}, `change 0 (put version "a" key "v1"): cache: invalid: put requires a value`, ErrInvalid},
		{"id mismatch", []Change{{Op: OpPut, Kind: KindAggregate, ID: "b", Value: mustJSON(t, a)}}, `value id "a" does not match change id`, ErrInvalid},
		{"key mismatch", []Change{{Op: OpPut, Kind: KindVersion, ID: "a", Key: "v1", Value: mustJSON(t, validVersion("v2"))}}, `value version "v2" does not match key`, ErrInvalid},
		{"instance key mismatch", []Change{{Op: OpPut, Kind: KindInstance, ID: "a", Key: "i2", Value: mustJSON(t, validInstance("i1"))}}, `value instance_id "i1" does not match key`, ErrInvalid},
		{"delete version without key", []Change{{Op: OpDelete, Kind: KindVersion, ID: "a"}}, `delete version requires a key`, ErrInvalid},
		{"invalid new id", []Change{{Op: OpPut, Kind: KindExtension, ID: "Bad", Value: mustJSON(t, validExt("Bad"))}}, `extension "Bad": id must match`, ErrInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := mustNew(t, 1, []Extension{a})
			next, changed, err := s.Apply(2, "test", tc.changes)
			if err == nil {
				t.Fatalf("Apply accepted; changed %v", changed)
			}
			if next != nil || changed != nil {
				t.Errorf("Apply returned a snapshot with an error")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error\n%v\nwant it to contain\n%s", err, tc.want)
			}
			if !errors.Is(err, tc.target) {
				t.Errorf("error does not wrap %v", tc.target)
			}
			var ce *ChangeError
			if !errors.As(err, &ce) || ce.Index != len(tc.changes)-1 {
				t.Errorf("not a *ChangeError for the last change: %#v", err)
			}
			if _, ok := s.Get("a"); !ok || s.Len() != 1 {
				t.Errorf("old snapshot changed")
			}
		})
	}
}

func TestApplyLarge(t *testing.T) {
	t.Parallel()
	exts := Synthetic(5000)
	s := mustNew(t, 1, exts)
	// A batch touching many extensions of every kind equals a rebuild.
	var changes []Change
	want := slices.Clone(exts)
	var drop []string
	for i := 0; i < len(want); i += 7 {
		switch i % 3 {
		case 0:
			want[i].Retry = (want[i].Retry + 1) % 4
			changes = append(changes, putAggregate(t, want[i]))
		case 1:
			drop = append(drop, want[i].ID)
			changes = append(changes, Change{Op: OpDelete, Kind: KindExtension, ID: want[i].ID})
		case 2:
			want[i].Enabled = !want[i].Enabled
			e := want[i]
			e.Versions, e.Instances = nil, nil
			changes = append(changes, Change{Op: OpPut, Kind: KindExtension, ID: e.ID, Value: mustJSON(t, e)})
		}
	}
	for i := range 50 {
		e := validExt("new." + string(rune('a'+i%26)) + strings.Repeat("x", i))
		want = append(want, e)
		changes = append(changes, putAggregate(t, e))
	}
	want = slices.DeleteFunc(want, func(e Extension) bool { return slices.Contains(drop, e.ID) })
	next, changed, err := s.Apply(2, "test", changes)
	if err != nil {
		t.Fatal(err)
	}
	assertSameSnapshot(t, next, mustNew(t, 2, want))
	if d := s.Diff(next); !slices.Equal(d, changed) || len(changed) == 0 {
		t.Errorf("changed %d ids, Diff %d", len(changed), len(d))
	}
	// And back again.
	back, _, err := next.Apply(3, "test", nil)
	if err != nil || back.Checksum() != next.Checksum() {
		t.Fatalf("empty Apply: %v", err)
	}
}

func TestApplyOnEmpty(t *testing.T) {
	t.Parallel()
	s := mustNew(t, 0, nil)
	next, changed, err := s.Apply(1, "database", []Change{putAggregate(t, validExt("a"))})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(changed, []string{"a"}) || next.Len() != 1 {
		t.Errorf("changed %v len %d", changed, next.Len())
	}
	assertSameSnapshot(t, next, mustNew(t, 1, []Extension{validExt("a")}))
	gone, changed, err := next.Apply(2, "database", []Change{{Op: OpDelete, Kind: KindAggregate, ID: "a"}})
	if err != nil || gone.Checksum() != s.Checksum() || !slices.Equal(changed, []string{"a"}) {
		t.Errorf("delete back to empty: %v %s %v", err, gone.Checksum(), changed)
	}
}
