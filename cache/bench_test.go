package cache

import (
	"encoding/json"
	"fmt"
	"strconv"
	"testing"
)

func benchSnapshot(b *testing.B, n int) *Snapshot {
	b.Helper()
	s, err := New(1, "bench", Synthetic(n))
	if err != nil {
		b.Fatal(err)
	}
	return s
}

func benchIDs(n int) []string {
	ids := make([]string, 1024)
	for i := range ids {
		ids[i] = fmt.Sprintf("ext.%06d", (i*7919)%n)
	}
	return ids
}

func BenchmarkLookup(b *testing.B) {
	s := benchSnapshot(b, 10000)
	ids := benchIDs(10000)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, ok := s.Lookup(ids[i&1023]); !ok && i < 0 {
			b.Fatal("unreachable")
		}
		i++
	}
}

func BenchmarkLookupParallel(b *testing.B) {
	s := benchSnapshot(b, 10000)
	ids := benchIDs(10000)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			s.Lookup(ids[i&1023])
			i++
		}
	})
}

func BenchmarkByType(b *testing.B) {
	s := benchSnapshot(b, 10000)
	types := []string{TypePre, TypeValidator, TypePost, TypeProvider}
	b.ReportAllocs()
	i, n := 0, 0
	for b.Loop() {
		n += len(s.ByType(types[i&3]))
		i++
	}
	if n == 0 {
		b.Fatal("empty")
	}
}

func BenchmarkSelectVersion(b *testing.B) {
	s := benchSnapshot(b, 100)
	e, _ := s.Lookup("ext.000003")
	attrs := map[string]string{"tenant": "t2", "region": "eu"}
	b.ReportAllocs()
	for b.Loop() {
		if e.SelectVersion(attrs).Version != "v2" {
			b.Fatal("wrong version")
		}
	}
}

func BenchmarkApplyOneRow(b *testing.B) {
	for _, n := range []int{1000, 10000, 100000} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			s := benchSnapshot(b, n)
			target := Synthetic(n)[n/2]
			target.Versions, target.Instances = nil, nil
			changes := make([][]Change, 2)
			for k := range changes {
				target.TimeoutMS = 1000 + k
				v, err := json.Marshal(target)
				if err != nil {
					b.Fatal(err)
				}
				changes[k] = []Change{{Op: OpPut, Kind: KindExtension, ID: target.ID, Value: v}}
			}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				next, changed, err := s.Apply(s.Revision()+1, "bench", changes[i&1])
				if err != nil || len(changed) != 1 {
					b.Fatal(err, changed)
				}
				s = next
				i++
			}
		})
	}
}

func BenchmarkNew(b *testing.B) {
	for _, n := range []int{100000} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			exts := Synthetic(n)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := New(1, "bench", exts); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkEncode(b *testing.B) {
	for _, n := range []int{100000} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			s := benchSnapshot(b, n)
			doc, _ := s.Encode()
			b.SetBytes(int64(len(doc)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := s.Encode(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkDecode(b *testing.B) {
	for _, n := range []int{100000} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			doc, err := benchSnapshot(b, n).Encode()
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(len(doc)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Decode(doc); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
