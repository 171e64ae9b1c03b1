package cache

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestEncodeWorkedExample(t *testing.T) {
	t.Parallel()
	s := mustNewSource(t, 7, "fixtures", workedExample())
	got, err := s.Encode()
	if err != nil {
		t.Fatal(err)
	}
	want := `{"revision":7,"checksum":"` + workedChecksum + `","checksum_v2":"` + workedChecksumV2 + `","source":"fixtures","count":2,"extensions":[` + workedAlpha + `,` + workedBeta + `]}`
	if string(got) != want {
		t.Errorf("Encode\n got %s\nwant %s", got, want)
	}
}

func mustNewSource(t testing.TB, rev int64, source string, exts []Extension) *Snapshot {
	t.Helper()
	s, err := New(rev, source, exts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		exts []Extension
	}{
		{"empty", nil},
		{"worked", workedExample()},
		{"synthetic", Synthetic(2000)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := mustNewSource(t, 99, "database", tc.exts)
			doc, err := s.Encode()
			if err != nil {
				t.Fatal(err)
			}
			if !json.Valid(doc) {
				t.Fatal("Encode produced invalid JSON")
			}
			got, err := Decode(doc)
			if err != nil {
				t.Fatal(err)
			}
			if got.Revision() != 99 || got.Source() != "database" {
				t.Errorf("revision/source %d %q", got.Revision(), got.Source())
			}
			assertSameSnapshot(t, got, s)
			again, err := got.Encode()
			if err != nil || !bytes.Equal(again, doc) {
				t.Errorf("re-encoding differs: %v", err)
			}
			// Routing rules are usable after Decode without allocation.
			for _, e := range got.All() {
				for i := range e.Versions {
					if !e.Versions[i].parsed {
						t.Fatalf("%s: rules not parsed after Decode", e.ID)
					}
				}
			}
		})
	}
}

func TestDecodeAcceptsNonCanonicalDocuments(t *testing.T) {
	t.Parallel()
	s := mustNewSource(t, 3, "fixtures", workedExample())
	// Built by encoding/json from the raw input: unsorted keys, children out of
	// order, null config, whitespace; plus unknown fields.
	type doc struct {
		Unknown    []int       `json:"unknown"`
		Extensions []Extension `json:"extensions"`
		Count      int         `json:"count"`
		Source     string      `json:"source"`
		Checksum   string      `json:"checksum"`
		Revision   int64       `json:"revision"`
	}
	exts := workedExample()
	exts[1].Versions = append(exts[1].Versions, Version{Version: "v10", Subject: "ext.alpha.v10", TimeoutMS: 10, Enabled: true})
	s = mustNewSource(t, 3, "fixtures", exts)
	b, err := json.MarshalIndent(doc{Unknown: []int{1}, Extensions: exts, Count: 2, Source: "fixtures", Checksum: s.Checksum(), Revision: 3}, "", "\t")
	if err != nil {
		t.Fatal(err)
	}
	b = bytes.Replace(b, []byte(`"id": "alpha",`), []byte(`"id": "alpha", "future_field": {"x": [1, 2]},`), 1)
	got, err := Decode(b)
	if err != nil {
		t.Fatalf("Decode: %v\n%s", err, b)
	}
	assertSameSnapshot(t, got, s)
}

func TestDecodeErrors(t *testing.T) {
	t.Parallel()
	s := mustNewSource(t, 5, "database", workedExample())
	good, err := s.Encode()
	if err != nil {
		t.Fatal(err)
	}
	replaceIn := func(doc []byte, old, new string) []byte {
		if !bytes.Contains(doc, []byte(old)) {
			t.Fatalf("fixture lacks %s", old)
		}
		return bytes.Replace(doc, []byte(old), []byte(new), 1)
	}
	replace := func(old, new string) []byte { return replaceIn(good, old, new) }
	// A document of a syncer that does not write checksum_v2: the v1 checksum is verified.
	goodV1 := replace(`"checksum_v2":"`+workedChecksumV2+`",`, ``)
	zeros := strings.Repeat("0", 64)
	for _, tc := range []struct {
		name   string
		doc    []byte
		want   string
		target error
	}{
		{"wrong checksum", replaceIn(goodV1, workedChecksum, zeros),
			`cache: decode snapshot: cache: checksum mismatch: document says "` + zeros + `", recomputed "` + workedChecksum + `"`, ErrChecksum},
		{"wrong checksum_v2", replace(workedChecksumV2, zeros),
			`cache: decode snapshot: cache: checksum mismatch: document says checksum_v2 "` + zeros + `", recomputed "` + workedChecksumV2 + `"`, ErrChecksum},
		{"content changed", replace(`"timeout_ms":200`, `"timeout_ms":201`), `checksum mismatch`, ErrChecksum},
		{"content changed, v1", replaceIn(goodV1, `"timeout_ms":200`, `"timeout_ms":201`), `checksum mismatch`, ErrChecksum},
		{"invalid extension", replace(`"timeout_ms":100`, `"timeout_ms":7`), `extension "alpha": timeout_ms must be between 10 and 5000 (got 7)`, ErrInvalid},
		{"invalid version", replace(`"timeout_ms":200`, `"timeout_ms":7`), `extension "alpha": versions[v2].timeout_ms must be between 10 and 5000 (got 7)`, ErrInvalid},
		{"invalid config", replace(`"config":{},"enabled":false`, `"config":[],"enabled":false`), `extension "beta": config must be a JSON object (got array)`, ErrInvalid},
		{"invalid rules", replace(`{"tenant":["t1","t2"]}`, `{"tenant":[1]}`), `versions[v2].routing_rules must be a JSON object whose values are strings or arrays of strings`, ErrInvalid},
		{"duplicate id", replace(`"id":"beta"`, `"id":"alpha"`), `extension "alpha": id must be unique`, ErrInvalid},
		{"count mismatch", replace(`"count":2`, `"count":3`), `count is 3 but the document has 2 extensions`, nil},
		{"missing checksum", replaceIn(goodV1, `"checksum":"`+workedChecksum+`",`, ``), `missing key "checksum"`, nil},
		{"duplicate key", replace(`"count":2`, `"count":2,"count":2`), `duplicate key "count"`, nil},
		{"duplicate extension key", replace(`"id":"beta"`, `"id":"beta","id":"beta"`), `extensions: [1]: duplicate key "id"`, nil},
		{"duplicate config key", replace(`"note":"tab\there"`, `"note":"a","note":"b"`), `duplicate object key "note"`, nil},
		{"trailing data", append(bytes.Clone(good), '}'), `unexpected data after JSON value`, nil},
		{"wrong type", replace(`"weight":100`, `"weight":"100"`), `extensions: [0]: instances: [0]: weight: invalid JSON at offset`, nil},
		{"fractional int", replace(`"retry":3`, `"retry":3.0`), `expected integer, found 3.0`, nil},
		{"invalid utf8", replace(`"ext.beta.v3"`, "\"ext.\xffbeta.v3\""), `invalid UTF-8`, nil},
		{"not an object", []byte(`[]`), `expected '{'`, nil},
		{"empty", nil, `unexpected end of input`, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := Decode(tc.doc)
			if err == nil {
				t.Fatalf("Decode accepted %s", tc.doc)
			}
			if got != nil {
				t.Error("Decode returned a snapshot with an error")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error\n%v\nwant it to contain\n%s", err, tc.want)
			}
			if tc.target != nil && !errors.Is(err, tc.target) {
				t.Errorf("error does not wrap %v", tc.target)
			}
			if !errors.Is(tc.target, ErrChecksum) && errors.Is(err, ErrChecksum) {
				t.Errorf("unexpected ErrChecksum")
			}
		})
	}
}

func TestDecodeTruncated(t *testing.T) {
	t.Parallel()
	s := mustNewSource(t, 5, "database", append(workedExample(), Synthetic(3)...))
	doc, err := s.Encode()
	if err != nil {
		t.Fatal(err)
	}
	for n := range len(doc) {
		if _, err := Decode(doc[:n]); err == nil {
			t.Fatalf("Decode accepted a document truncated to %d bytes", n)
		}
	}
}

func TestEncodeInvalidSource(t *testing.T) {
	t.Parallel()
	s := mustNewSource(t, 1, "bad\xff", nil)
	if _, err := s.Encode(); err == nil {
		t.Error("Encode accepted an invalid UTF-8 source")
	}
}

func FuzzCanonicalJSON(f *testing.F) {
	for _, seed := range []string{
		`{}`, `{"b":1,"a":[true,false,null]}`, `"\u00e9\ud83d\ude00"`, `1e21`, `-0.0`, `0.000001`, `1.5e-7`,
		`{"a":{"c":1,"b":2}}`, `[1,2,3]`, `"\u0000"`, `{"a":1,"a":2}`, `123456789012345678901`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		var p jsonParser
		out, err := p.canonicalJSON(nil, in)
		if err != nil {
			return
		}
		if !json.Valid(in) || !json.Valid(out) {
			t.Fatalf("accepted invalid JSON %q -> %q", in, out)
		}
		again, err := p.canonicalJSON(nil, out)
		if err != nil || !bytes.Equal(again, out) {
			t.Fatalf("not a fixed point: %q -> %q -> %q (%v)", in, out, again, err)
		}
		var x, y any
		if err := json.Unmarshal(in, &x); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(out, &y); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(x, y) {
			t.Fatalf("content differs: %q -> %q", in, out)
		}
	})
}

func TestDecodeTrickyStrings(t *testing.T) {
	t.Parallel()
	e := validExt("tricky")
	e.Config = json.RawMessage(`{"a":"],\"{[","b":"ends with backslash \\","c":"\\\"","d":[{"e":"}"}]}`)
	e.Metadata = json.RawMessage(`{"\\":"\\\\"}`)
	s := mustNewSource(t, 1, "test", []Extension{validExt("a"), e, validExt("z")})
	doc, err := s.Encode()
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(doc)
	if err != nil {
		t.Fatalf("Decode: %v\n%s", err, doc)
	}
	assertSameSnapshot(t, got, s)
	// Whitespace between elements and a sequential fallback for a malformed
	// array give the same kind of error.
	spaced := bytes.ReplaceAll(doc, []byte(`},{"config"`), []byte("} ,\n {\"config\""))
	if _, err := Decode(spaced); err != nil {
		t.Errorf("Decode with whitespace: %v", err)
	}
	bad := bytes.Replace(doc, []byte(`},{"config"`), []byte(`},,{"config"`), 1)
	if _, err := Decode(bad); err == nil || !strings.Contains(err.Error(), "extensions: ") {
		t.Errorf("Decode with an empty element: %v", err)
	}
}

func FuzzDecode(f *testing.F) {
	s, err := New(3, "fixtures", append(workedExample(), Synthetic(4)...))
	if err != nil {
		f.Fatal(err)
	}
	doc, err := s.Encode()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(doc)
	f.Add([]byte(`{"revision":1,"checksum":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","extensions":[]}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		got, err := Decode(in)
		if err != nil {
			return
		}
		out, err := got.Encode()
		if err != nil {
			t.Fatal(err)
		}
		again, err := Decode(out)
		if err != nil || again.Checksum() != got.Checksum() {
			t.Fatalf("re-decode: %v", err)
		}
	})
}
