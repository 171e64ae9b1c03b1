package cache

import (
	"encoding/json"
	"errors"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
)

func mustNew(t testing.TB, rev int64, exts []Extension) *Snapshot {
	t.Helper()
	s, err := New(rev, "test", exts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func ids(list []*Extension) []string {
	out := make([]string, len(list))
	for i, e := range list {
		out[i] = e.ID
	}
	return out
}

func TestSnapshotAccessors(t *testing.T) {
	t.Parallel()
	a := validExt("a")
	a.Type = TypePre
	b := validExt("b")
	b.Type = TypePre
	b.Enabled = false
	c := validExt("c")
	c.Type = TypeProvider
	d := validExt("d")
	d.Type = TypePre
	s, err := New(42, "fixtures", []Extension{d, c, b, a})
	if err != nil {
		t.Fatal(err)
	}
	if s.Revision() != 42 || s.Source() != "fixtures" || s.Len() != 4 {
		t.Errorf("Revision/Source/Len = %d %q %d", s.Revision(), s.Source(), s.Len())
	}
	if got := ids(s.All()); !slices.Equal(got, []string{"a", "b", "c", "d"}) {
		t.Errorf("All = %v", got)
	}
	for _, tc := range []struct {
		id              string
		lookup, present bool
	}{{"a", true, true}, {"b", false, true}, {"c", true, true}, {"zz", false, false}} {
		if e, ok := s.Lookup(tc.id); ok != tc.lookup || (ok && e.ID != tc.id) {
			t.Errorf("Lookup(%s) = %v, %v", tc.id, e, ok)
		}
		if e, ok := s.Get(tc.id); ok != tc.present || (ok && e.ID != tc.id) {
			t.Errorf("Get(%s) = %v, %v", tc.id, e, ok)
		}
		if _, ok := s.Hash(tc.id); ok != tc.present {
			t.Errorf("Hash(%s) ok = %v", tc.id, ok)
		}
	}
	for typ, want := range map[string][]string{
		TypePre: {"a", "d"}, TypeProvider: {"c"}, TypePost: {}, TypeValidator: {}, "bogus": {},
	} {
		if got := ids(s.ByType(typ)); !slices.Equal(got, want) {
			t.Errorf("ByType(%s) = %v, want %v", typ, got, want)
		}
	}
	// Appending to a returned slice never writes into the snapshot.
	pre := s.ByType(TypePre)
	_ = append(pre, &Extension{ID: "zzz"})
	all := s.All()
	_ = append(all, &Extension{ID: "zzz"})
	if got := ids(s.ByType(TypePre)); !slices.Equal(got, []string{"a", "d"}) {
		t.Errorf("ByType changed after append: %v", got)
	}
}

func TestNewDuplicateIDs(t *testing.T) {
	t.Parallel()
	_, err := New(1, "test", []Extension{validExt("a"), validExt("b"), validExt("a")})
	if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), `extension "a": id must be unique (duplicate extension id)`) {
		t.Errorf("duplicate ids: %v", err)
	}
}

func TestNewReportsEveryExtension(t *testing.T) {
	t.Parallel()
	a, b := validExt("a"), validExt("b")
	a.TimeoutMS = 1
	b.Retry = 7
	_, err := New(1, "test", []Extension{a, validExt("c"), b})
	for _, want := range []string{`extension "a": timeout_ms`, `extension "b": retry`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not mention %s", err, want)
		}
	}
}

func TestChecksumIndependentOfInputOrder(t *testing.T) {
	t.Parallel()
	exts := Synthetic(300)
	ref := mustNew(t, 1, exts)
	rng := rand.New(rand.NewPCG(1, 2))
	for range 5 {
		shuffled := slices.Clone(exts)
		rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		for i := range shuffled {
			// Children order and JSON spelling do not matter either.
			slices.Reverse(shuffled[i].Versions)
			slices.Reverse(shuffled[i].Instances)
			if len(shuffled[i].Config) > 0 {
				var m map[string]any
				if err := json.Unmarshal(shuffled[i].Config, &m); err != nil {
					t.Fatal(err)
				}
				shuffled[i].Config, _ = json.MarshalIndent(m, "", "  ")
			}
		}
		s := mustNew(t, 1, shuffled)
		if s.Checksum() != ref.Checksum() {
			t.Fatalf("checksum depends on input order: %s vs %s", s.Checksum(), ref.Checksum())
		}
		if d := s.Diff(ref); d != nil {
			t.Fatalf("Diff of equal snapshots = %v", d)
		}
	}
	// Any change of content changes the checksum, disabled extensions included.
	mod := slices.Clone(exts)
	mod[9].TimeoutMS++ // ext.000009 is disabled
	if mod[9].Enabled {
		t.Fatal("expected a disabled extension")
	}
	if s := mustNew(t, 1, mod); s.Checksum() == ref.Checksum() {
		t.Error("checksum ignores a disabled extension")
	}
}

func TestDiff(t *testing.T) {
	t.Parallel()
	base := mustNew(t, 1, []Extension{validExt("a"), validExt("b"), validExt("c")})
	b2 := validExt("b")
	b2.Retry = 2
	other := mustNew(t, 2, []Extension{validExt("a"), b2, validExt("d")})
	for _, tc := range []struct {
		name string
		x, y *Snapshot
		want []string
	}{
		{"same", base, base, nil},
		{"changed, removed, added", base, other, []string{"b", "c", "d"}},
		{"symmetric", other, base, []string{"b", "c", "d"}},
		{"against nil", base, nil, []string{"a", "b", "c"}},
		{"nil receiver", nil, other, []string{"a", "b", "d"}},
	} {
		if got := tc.x.Diff(tc.y); !slices.Equal(got, tc.want) {
			t.Errorf("%s: Diff = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestAllocs(t *testing.T) {
	// Not parallel: AllocsPerRun measures the whole process.
	s := mustNew(t, 1, Synthetic(1000))
	ext, ok := s.Lookup("ext.000003")
	if !ok || len(ext.Versions) != 2 {
		t.Fatalf("fixture: %v %v", ext, ok)
	}
	attrs := map[string]string{"tenant": "t2", "region": "eu"}
	var sink *Extension
	var choice VersionChoice
	for name, fn := range map[string]func(){
		"Lookup":        func() { sink, _ = s.Lookup("ext.000500") },
		"LookupMissing": func() { sink, _ = s.Lookup("nope") },
		"Get":           func() { sink, _ = s.Get("ext.000009") },
		"ByType":        func() { sink = s.ByType(TypePost)[0] },
		"All":           func() { sink = s.All()[0] },
		"SelectVersion": func() { choice = ext.SelectVersion(attrs) },
		"SelectDefault": func() { choice = ext.SelectVersion(nil) },
	} {
		if n := testing.AllocsPerRun(1000, fn); n != 0 {
			t.Errorf("%s allocates %v times per call", name, n)
		}
	}
	_, _ = sink, choice
}

func TestConcurrentReaders(t *testing.T) {
	t.Parallel()
	s := mustNew(t, 1, Synthetic(2000))
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			cur := s
			for i := range 200 {
				id := Synthetic(1)[0].ID
				if e, ok := cur.Lookup(id); ok {
					_ = e.SelectVersion(map[string]string{"tenant": "t1"})
				}
				_ = cur.ByType(TypePre)
				if w == 0 && i%20 == 0 { // one writer derives new snapshots meanwhile
					e := validExt("w")
					e.Retry = i % 4
					next, _, err := cur.Apply(cur.Revision()+1, "test", []Change{putAggregate(t, e)})
					if err != nil {
						t.Error(err)
						return
					}
					cur = next
				}
			}
		})
	}
	wg.Wait()
}

func TestSyntheticIsValidAndDeterministic(t *testing.T) {
	t.Parallel()
	a, b := Synthetic(500), Synthetic(500)
	if !reflect.DeepEqual(a, b) {
		t.Fatal("Synthetic is not deterministic")
	}
	s := mustNew(t, 1, a)
	var withVersions, withInstances, disabled int
	types := map[string]int{}
	for _, e := range s.All() {
		types[e.Type]++
		if len(e.Versions) > 0 {
			withVersions++
		}
		if len(e.Instances) > 0 {
			withInstances++
		}
		if !e.Enabled {
			disabled++
		}
	}
	if len(types) != 4 || withVersions == 0 || withInstances == 0 || disabled == 0 {
		t.Errorf("Synthetic lacks variety: types %v, versions %d, instances %d, disabled %d", types, withVersions, withInstances, disabled)
	}
	if !slices.IsSorted(ids(s.All())) || ids(s.All())[0] != a[0].ID {
		t.Error("Synthetic ids are not ascending")
	}
}
