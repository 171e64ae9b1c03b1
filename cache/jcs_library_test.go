package cache

import (
	"bytes"
	"strconv"
	"testing"

	"github.com/go-json-experiment/json/jsontext"
)

// The hand-written JSON reader and canonicalizer (jsoncanon.go, wire.go) measured
// against github.com/go-json-experiment/json/jsontext, which implements RFC 8785
// canonicalization, on the real workloads; and jsontext as an independent RFC 8785
// implementation that the v2 encoding must agree with. Numbers: BENCHMARKS.md
// "JSON: hand-written against jsontext".

func benchDoc(b *testing.B) []byte {
	s, err := New(1, "bench", Synthetic(100000))
	if err != nil {
		b.Fatal(err)
	}
	doc, err := s.Encode()
	if err != nil {
		b.Fatal(err)
	}
	return doc
}

func BenchmarkJSONDecode100k(b *testing.B) {
	doc := benchDoc(b)
	b.Run("cache.Decode", func(b *testing.B) {
		b.SetBytes(int64(len(doc)))
		b.ReportAllocs()
		for b.Loop() {
			if _, err := Decode(doc); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("jsontext.tokens", func(b *testing.B) {
		// A lower bound for a jsontext-based decoder: read every token, nothing else.
		b.SetBytes(int64(len(doc)))
		b.ReportAllocs()
		for b.Loop() {
			d := jsontext.NewDecoder(bytes.NewReader(doc))
			for {
				if _, err := d.ReadToken(); err != nil {
					break
				}
			}
		}
	})
	b.Run("jsontext.values+canonicalize", func(b *testing.B) {
		// Read each aggregate as a value and canonicalize it (RFC 8785).
		b.SetBytes(int64(len(doc)))
		b.ReportAllocs()
		for b.Loop() {
			d := jsontext.NewDecoder(bytes.NewReader(doc))
			for d.PeekKind() != '[' {
				if _, err := d.ReadToken(); err != nil {
					b.Fatal(err)
				}
			}
			d.ReadToken()
			for d.PeekKind() == '{' {
				v, err := d.ReadValue()
				if err != nil {
					b.Fatal(err)
				}
				v = v.Clone()
				if err := v.Canonicalize(); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
}

var rawConfigs = []string{
	`{"mode":"strict","limits":{"max_payload_bytes":1048576,"max_metadata_bytes":65536},"tags":["a","b","c"],"ratio":0.25}`,
	`{"zeta":1,"alpha":{"nested":[1,2,3,{"k":"v","a":"b"}],"b":true},"unicode":"grüße","n":1e21,"m":1.5e-7}`,
}

func BenchmarkJSONCanonicalize(b *testing.B) {
	big := []byte(`{` + func() string {
		var s string
		for i := range 50 {
			if i > 0 {
				s += ","
			}
			s += `"key` + strconv.Itoa(1000-i*7) + `":{"x":[1,2.5,"s"],"y":null,"z":{"q":` + `"` + "value" + `"}}`
		}
		return s
	}() + `}`)
	inputs := [][]byte{[]byte(rawConfigs[0]), []byte(rawConfigs[1]), big}
	b.Run("hand-written", func(b *testing.B) {
		var p jsonParser
		p.utf16 = true
		var dst []byte
		b.ReportAllocs()
		for b.Loop() {
			for _, in := range inputs {
				var err error
				if dst, err = p.canonicalJSON(dst[:0], in); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
	b.Run("jsontext", func(b *testing.B) {
		var buf []byte
		b.ReportAllocs()
		for b.Loop() {
			for _, in := range inputs {
				buf = append(buf[:0], in...)
				v := jsontext.Value(buf)
				if err := v.Canonicalize(); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
	// Same output?
	for _, in := range inputs {
		var p jsonParser
		p.utf16 = true
		mine, _ := p.canonicalJSON(nil, in)
		v := jsontext.Value(bytes.Clone(in))
		if err := v.Canonicalize(); err != nil {
			b.Fatal(err)
		}
		if !bytes.Equal(mine, v) {
			b.Fatalf("outputs differ:\n%s\n%s", mine, v)
		}
	}
}

// TestJCSAgainstJsontext: CanonicalV2 is exactly what an independent RFC 8785
// implementation makes of the aggregate.
func TestJCSAgainstJsontext(t *testing.T) {
	t.Parallel()
	exts := Synthetic(3000)
	e := validExt("keys")
	e.Config = []byte(`{"\ue000": 1, "\ud83d\ude00": 2, "a": {"\ud83d\ude00": 3, "\ue000": 4, "é": [1e21, 0.1, -0, 1.5e-7]}}`)
	exts = append(exts, e)
	for i := range exts {
		mine, err := CanonicalV2(&exts[i])
		if err != nil {
			t.Fatal(err)
		}
		v1, _ := Canonical(&exts[i])
		v := jsontext.Value(bytes.Clone(v1))
		if err := v.Canonicalize(); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(mine, v) {
			t.Fatalf("%s:\n mine %s\n jcs  %s", exts[i].ID, mine, v)
		}
	}
}
