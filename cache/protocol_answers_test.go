package cache

// Tests that pin the answers of PROTOCOL.md §9 ("Answers to client authors' questions")
// that are behaviours of this package: decoding, canonical encoding, apply and
// validation. Each test names the question it pins (Q6, Q7, ...). If one of them fails,
// either the code or PROTOCOL.md changed: make them agree again.

import (
	"errors"
	"strings"
	"testing"
)

// canonOf decodes one aggregate exactly as Decode decodes each element of a snapshot's
// "extensions" (the same decoder and normalizer) and returns its canonical encoding.
func canonOf(t *testing.T, raw string) (string, error) {
	t.Helper()
	var d decoder
	e, err := d.decodeExtensionValue([]byte(raw), true)
	if err != nil {
		return "", err
	}
	n := getNormalizer()
	defer putNormalizer(n)
	if err := n.normalize(e, true); err != nil {
		return "", err
	}
	return string(appendAggregate(nil, e)), nil
}

// answersDoc returns a snapshot document holding the given aggregates (raw JSON, in
// the given order) with the checksum and count of want.
func answersDoc(want *Snapshot, rev int64, aggregates ...string) []byte {
	return []byte(`{"revision":` + itoa(rev) + `,"checksum":"` + want.Checksum() + `","source":"database","count":` +
		itoa(int64(len(aggregates))) + `,"extensions":[` + strings.Join(aggregates, ",") + `]}`)
}

func itoa(n int64) string {
	var b []byte
	if n == 0 {
		return "0"
	}
	for ; n > 0; n /= 10 {
		b = append([]byte{byte('0' + n%10)}, b...)
	}
	return string(b)
}

const (
	answersExt = `{"id":"a","type":"pre","subject":"beamline.ext.pre.a.v1","timeout_ms":100,"retry":0,"enabled":true,"version":"v1","config":{},"metadata":{}`
	answersVer = `{"version":"v2","subject":"beamline.ext.pre.a.v2","timeout_ms":100,"retry":0,"enabled":true,"config":{},"metadata":{},"routing_rules":{}}`
	answersIns = `{"instance_id":"i1","subject":"beamline.ext.pre.a.v1.i1","weight":100,"enabled":true,"health_status":"healthy"}`
)

// answersBase is a snapshot with extension "a" holding version v2 and instance i1.
func answersBase(t *testing.T) *Snapshot {
	t.Helper()
	empty, err := New(0, "database", nil)
	if err != nil {
		t.Fatal(err)
	}
	s, _, err := empty.Apply(1, "database", []Change{{Op: OpPut, Kind: KindAggregate, ID: "a",
		Value: []byte(answersExt + `,"versions":[` + answersVer + `],"instances":[` + answersIns + `]}`)}})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Q6: deletes of what is absent are no-ops; puts of versions or instances for an
// unknown extension reject the whole delta (ErrNotFound).
func TestAnswerDeletesOfAbsentAndPutsForUnknown(t *testing.T) {
	t.Parallel()
	base := answersBase(t)
	noops := []struct {
		name string
		c    Change
	}{
		{"delete absent instance", Change{Op: OpDelete, Kind: KindInstance, ID: "a", Key: "nope"}},
		{"delete absent version", Change{Op: OpDelete, Kind: KindVersion, ID: "a", Key: "v9"}},
		{"delete instance of unknown extension", Change{Op: OpDelete, Kind: KindInstance, ID: "zz", Key: "i1"}},
		{"delete version of unknown extension", Change{Op: OpDelete, Kind: KindVersion, ID: "zz", Key: "v1"}},
		{"delete unknown extension", Change{Op: OpDelete, Kind: KindExtension, ID: "zz"}},
		{"delete unknown aggregate", Change{Op: OpDelete, Kind: KindAggregate, ID: "zz"}},
		{"delete of an invalid id", Change{Op: OpDelete, Kind: KindExtension, ID: "NOT VALID"}},
	}
	for _, tc := range noops {
		next, changed, err := base.Apply(2, "database", []Change{tc.c})
		if err != nil || changed != nil || next.Checksum() != base.Checksum() || next.Revision() != 2 {
			t.Errorf("%s: got changed %v, err %v; want a no-op", tc.name, changed, err)
		}
	}
	for _, kind := range []string{KindVersion, KindInstance} {
		value := answersVer
		if kind == KindInstance {
			value = answersIns
		}
		_, _, err := base.Apply(2, "database", []Change{{Op: OpPut, Kind: kind, ID: "zz", Value: []byte(value)}})
		var ce *ChangeError
		if !errors.Is(err, ErrNotFound) || !errors.As(err, &ce) || ce.Index != 0 {
			t.Errorf("put %s for an unknown extension: got %v, want ErrNotFound for change 0", kind, err)
		}
	}
	// Within one delta, changes apply in order: an extension put first can receive a version.
	next, _, err := base.Apply(2, "database", []Change{
		{Op: OpPut, Kind: KindExtension, ID: "b", Value: []byte(strings.Replace(answersExt, `"id":"a"`, `"id":"b"`, 1) + `}`)},
		{Op: OpPut, Kind: KindVersion, ID: "b", Key: "v2", Value: []byte(answersVer)},
	})
	if err != nil {
		t.Fatalf("put extension then version in one delta: %v", err)
	}
	if b, _ := next.Get("b"); len(b.Versions) != 1 {
		t.Errorf("extension b has %d versions, want 1", len(b.Versions))
	}
	// A put extension keeps the versions and instances; any in its value are ignored.
	next, _, err = base.Apply(2, "database", []Change{{Op: OpPut, Kind: KindExtension, ID: "a",
		Value: []byte(answersExt + `,"versions":[],"instances":null}`)}})
	if err != nil {
		t.Fatal(err)
	}
	if a, _ := next.Get("a"); len(a.Versions) != 1 || len(a.Instances) != 1 {
		t.Errorf("put extension: %d versions, %d instances; want the old 1 and 1 kept", len(a.Versions), len(a.Instances))
	}
}

// Q7: key versus value.version / value.instance_id (and value.id versus id).
func TestAnswerKeyVersusValue(t *testing.T) {
	t.Parallel()
	base := answersBase(t)
	verNoKey := strings.Replace(answersVer, `"version":"v2",`, ``, 1)
	verNull := strings.Replace(answersVer, `"version":"v2"`, `"version":null`, 1)
	insNoKey := strings.Replace(answersIns, `"instance_id":"i1",`, ``, 1)
	extNoID := strings.Replace(answersExt, `"id":"a",`, ``, 1) + `}`
	cases := []struct {
		name    string
		c       Change
		wantErr error  // nil: applies
		wantKey string // the child that must exist afterwards
	}{
		{"version from key (value without version)", Change{Op: OpPut, Kind: KindVersion, ID: "a", Key: "v3", Value: []byte(verNoKey)}, nil, "v3"},
		{"version from key (value version null)", Change{Op: OpPut, Kind: KindVersion, ID: "a", Key: "v3", Value: []byte(verNull)}, nil, "v3"},
		{"version from value (no key)", Change{Op: OpPut, Kind: KindVersion, ID: "a", Value: []byte(answersVer)}, nil, "v2"},
		{"version: key and value agree", Change{Op: OpPut, Kind: KindVersion, ID: "a", Key: "v2", Value: []byte(answersVer)}, nil, "v2"},
		{"version: key and value disagree", Change{Op: OpPut, Kind: KindVersion, ID: "a", Key: "v3", Value: []byte(answersVer)}, ErrInvalid, ""},
		{"version: neither key nor value", Change{Op: OpPut, Kind: KindVersion, ID: "a", Value: []byte(verNoKey)}, ErrInvalid, ""},
		{"version: delete without key", Change{Op: OpDelete, Kind: KindVersion, ID: "a", Value: []byte(answersVer)}, ErrInvalid, ""},
		{"version: put without value", Change{Op: OpPut, Kind: KindVersion, ID: "a", Key: "v2"}, ErrInvalid, ""},
		{"version: put with value null", Change{Op: OpPut, Kind: KindVersion, ID: "a", Key: "v2", Value: []byte(`null`)}, ErrInvalid, ""},
		{"instance from key", Change{Op: OpPut, Kind: KindInstance, ID: "a", Key: "i9", Value: []byte(insNoKey)}, nil, "i9"},
		{"instance from value", Change{Op: OpPut, Kind: KindInstance, ID: "a", Value: []byte(answersIns)}, nil, "i1"},
		{"instance: key and value disagree", Change{Op: OpPut, Kind: KindInstance, ID: "a", Key: "i9", Value: []byte(answersIns)}, ErrInvalid, ""},
		{"instance: neither key nor value", Change{Op: OpPut, Kind: KindInstance, ID: "a", Value: []byte(insNoKey)}, ErrInvalid, ""},
		{"instance: delete without key", Change{Op: OpDelete, Kind: KindInstance, ID: "a"}, ErrInvalid, ""},
		{"extension id from the change", Change{Op: OpPut, Kind: KindExtension, ID: "a", Value: []byte(extNoID)}, nil, ""},
		{"extension: value id disagrees", Change{Op: OpPut, Kind: KindExtension, ID: "b", Value: []byte(answersExt + `}`)}, ErrInvalid, ""},
		{"aggregate: value id disagrees", Change{Op: OpPut, Kind: KindAggregate, ID: "b", Value: []byte(answersExt + `}`)}, ErrInvalid, ""},
		{"unknown op", Change{Op: "upsert", Kind: KindVersion, ID: "a", Key: "v2", Value: []byte(answersVer)}, ErrInvalid, ""},
		{"unknown kind", Change{Op: OpPut, Kind: "Version", ID: "a", Key: "v2", Value: []byte(answersVer)}, ErrInvalid, ""},
	}
	for _, tc := range cases {
		next, _, err := base.Apply(2, "database", []Change{tc.c})
		if tc.wantErr != nil {
			if !errors.Is(err, tc.wantErr) {
				t.Errorf("%s: got %v, want %v", tc.name, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		a, _ := next.Get("a")
		found := tc.wantKey == ""
		for _, v := range a.Versions {
			found = found || v.Version == tc.wantKey
		}
		for _, in := range a.Instances {
			found = found || in.InstanceID == tc.wantKey
		}
		if !found {
			t.Errorf("%s: %q not in the result", tc.name, tc.wantKey)
		}
	}
	// The key, not the value, names what a delete removes.
	next, _, err := base.Apply(2, "database", []Change{{Op: OpDelete, Kind: KindVersion, ID: "a", Key: "v2",
		Value: []byte(strings.Replace(answersVer, `"v2"`, `"v7"`, 1))}})
	if a, _ := next.Get("a"); err != nil || len(a.Versions) != 0 {
		t.Errorf("delete version by key with another value: err %v", err)
	}
}

// Q8: null, absent and {} config / metadata / routing_rules are the same content;
// other types are invalid. Q8 also pins the zero values of absent or null scalars.
func TestAnswerNullAbsentEmptyObject(t *testing.T) {
	t.Parallel()
	const ext = `"id":"a","type":"pre","subject":"s.v1","timeout_ms":100,"retry":0,"enabled":true,"version":"v1"`
	const ver = `"version":"v2","subject":"s.v2","timeout_ms":100,"retry":0,"enabled":true`
	want, err := canonOf(t, `{`+ext+`,"config":{},"metadata":{},"versions":[{`+ver+`,"config":{},"metadata":{},"routing_rules":{}}],"instances":[]}`)
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range []string{
		`{` + ext + `,"config":null,"metadata":null,"versions":[{` + ver + `,"config":null,"metadata":null,"routing_rules":null}],"instances":null}`,
		`{` + ext + `,"versions":[{` + ver + `}]}`,
		`{` + ext + `,"config":{ },"metadata":{}` + "\n" + `,"versions":[{` + ver + `,"routing_rules":{}}],"instances":[]}`,
	} {
		got, err := canonOf(t, in)
		if err != nil || got != want {
			t.Errorf("%s:\n got %s (%v)\nwant %s", in, got, err, want)
		}
	}
	for _, bad := range []string{`[]`, `"{}"`, `0`, `false`, `[{}]`} {
		for _, field := range []string{`"config":` + bad, `"metadata":` + bad} {
			if _, err := canonOf(t, `{`+ext+`,`+field+`}`); !errors.Is(err, ErrInvalid) {
				t.Errorf("%s: got %v, want ErrInvalid", field, err)
			}
		}
		if _, err := canonOf(t, `{`+ext+`,"versions":[{`+ver+`,"routing_rules":`+bad+`}]}`); !errors.Is(err, ErrInvalid) {
			t.Errorf("routing_rules %s: got %v, want ErrInvalid", bad, err)
		}
	}
	// Absent or null scalars read as their zero value: "" (then checked: type, subject,
	// version, instance_id, health_status must not be empty), 0, false.
	got, err := canonOf(t, `{"id":"a","type":"pre","subject":"s.v1","timeout_ms":100,"version":"v1","retry":null,"instances":[{"instance_id":"i","subject":"x","health_status":"unknown"}]}`)
	wantZero := `{"config":{},"enabled":false,"id":"a","instances":[{"enabled":false,"health_status":"unknown","instance_id":"i","subject":"x","weight":0}],"metadata":{},"retry":0,"subject":"s.v1","timeout_ms":100,"type":"pre","version":"v1","versions":[]}`
	if err != nil || got != wantZero {
		t.Errorf("absent scalars:\n got %s (%v)\nwant %s", got, err, wantZero)
	}
	for _, in := range []string{
		`{"id":"a","type":"pre","subject":"s.v1","version":"v1"}`,                                                                  // timeout_ms absent: 0
		`{"id":"a","type":"pre","subject":"s.v1","timeout_ms":100}`,                                                                // version absent: ""
		`{"id":"a","type":null,"subject":"s.v1","timeout_ms":100,"version":"v1"}`,                                                  // type null: ""
		`{"id":"a","type":"pre","subject":"s.v1","timeout_ms":100,"version":"v1","instances":[{"instance_id":"i","subject":"x"}]}`, // health_status absent
	} {
		if _, err := canonOf(t, in); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: got %v, want ErrInvalid", in, err)
		}
	}
}

// Q9: unknown fields are ignored (not in the canonical encoding) but must be valid JSON
// without duplicate keys; keys match case-sensitively; fields inside config, metadata and
// routing_rules are content.
func TestAnswerExtraFields(t *testing.T) {
	t.Parallel()
	plain := answersExt + `}`
	want, err := canonOf(t, plain)
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range []string{
		answersExt + `,"extra":{"x":[1,2,{"y":null}]},"created_at":"2026-01-01T00:00:00Z"}`,
		answersExt + `,"Enabled":false,"ID":"zzz","TYPE":"post"}`, // case-sensitive: these are unknown keys
	} {
		got, err := canonOf(t, in)
		if err != nil || got != want {
			t.Errorf("%s:\n got %s (%v)\nwant %s", in, got, err, want)
		}
	}
	for _, in := range []string{
		answersExt + `,"extra":{"x":1,"x":2}}`, // duplicate key inside an unknown field
		answersExt + `,"extra":[1,}`,           // malformed unknown field
		answersExt + `,"enabled":true}`,        // a known field twice
	} {
		if _, err := canonOf(t, in); err == nil {
			t.Errorf("%s: accepted", in)
		}
	}
	// Nesting: a value (config, metadata, routing_rules or an unknown field's) may hold at
	// most 256 nested arrays and objects, itself included.
	nest := func(n int) string { return strings.Repeat(`[`, n) + strings.Repeat(`]`, n) }
	for n, ok := range map[int]bool{256: true, 257: false} {
		if _, err := canonOf(t, answersExt+`,"extra":`+nest(n)+`}`); (err == nil) != ok {
			t.Errorf("unknown field nesting %d: err %v, want ok=%v", n, err, ok)
		}
		cfg := strings.Replace(plain, `"config":{}`, `"config":{"a":`+nest(n-1)+`}`, 1)
		if _, err := canonOf(t, cfg); (err == nil) != ok {
			t.Errorf("config nesting %d: err %v, want ok=%v", n, err, ok)
		}
	}
	got, err := canonOf(t, strings.Replace(plain, `"config":{}`, `"config":{"extra":1}`, 1))
	if err != nil || got == want || !strings.Contains(got, `"config":{"extra":1}`) {
		t.Errorf("a field inside config must be content: %s (%v)", got, err)
	}
}

// Q10: every length limit counts UTF-8 bytes; what "whitespace" means in JSON and in
// subjects; instance_id rules.
func TestAnswerLimitsAndWhitespace(t *testing.T) {
	t.Parallel()
	ext := func(version, subject, instanceID, instanceSubject string) Extension {
		e := validExt("a")
		e.Version = version
		e.Subject = subject
		e.Instances = []Instance{{InstanceID: instanceID, Subject: instanceSubject, Weight: 1, HealthStatus: HealthUnknown}}
		return e
	}
	long := func(s string, n int) string { return strings.Repeat(s, n) }
	cases := []struct {
		name string
		e    Extension
		ok   bool
	}{
		{"version 64 bytes (32 two-byte characters)", ext(long("é", 32), "s.v1", "i", "x"), true},
		{"version 66 bytes (33 characters)", ext(long("é", 33), "s.v1", "i", "x"), false},
		{"version with spaces", ext("v 1", "s.v1", "i", "x"), true},
		{"instance_id 255 bytes", ext("v1", "s.v1", long("i", 255), "x"), true},
		{"instance_id 256 bytes (128 characters)", ext("v1", "s.v1", long("é", 128), "x"), false},
		{"instance_id with space, dot, star and upper case", ext("v1", "s.v1", "I 1.*>", "x"), true},
		{"instance_id empty", ext("v1", "s.v1", "", "x"), false},
		{"instance_id with control characters", ext("v1", "s.v1", "i\x00\n", "x"), true},
		{"subject 512 bytes", ext("v1", long("s", 509)+".v1", "i", "x"), true},
		{"subject 513 bytes", ext("v1", long("s", 510)+".v1", "i", "x"), false},
		{"subject 514 bytes in 259 characters", ext("v1", long("é", 255)+"s.v1", "i", "x"), false},
		{"subject non-ASCII", ext("v1", "é.ü.v1", "i", "x"), true},
		{"subject with U+00A0", ext("v1", "s\u00a0t.v1", "i", "x"), false},
		{"subject with U+0085", ext("v1", "s\u0085t.v1", "i", "x"), false},
		{"subject with U+2028", ext("v1", "s\u2028t.v1", "i", "x"), false},
		{"subject with U+3000", ext("v1", "s\u3000t.v1", "i", "x"), false},
		{"subject with U+200B (not whitespace)", ext("v1", "s\u200bt.v1", "i", "x"), true},
		{"subject with U+FEFF (not whitespace)", ext("v1", "s\ufefft.v1", "i", "x"), true},
		{"subject with DEL", ext("v1", "s\x7ft.v1", "i", "x"), false},
		{"subject with tab", ext("v1", "s\tt.v1", "i", "x"), false},
		{"subject with * inside a token", ext("v1", "s*t.v1", "i", "x"), false},
		{"subject with > inside a token", ext("v1", "s>t.v1", "i", "x"), false},
		{"subject version tag v01", ext("v1", "s.v01", "i", "x"), true},
		{"subject version tag V1", ext("v1", "s.V1", "i", "x"), false},
		{"subject version tag v", ext("v1", "s.v", "i", "x"), false},
		{"subject only a version tag", ext("v1", "v1", "i", "x"), false},
		{"instance subject unversioned", ext("v1", "s.v1", "i", "x.y"), true},
		{"instance subject with empty token", ext("v1", "s.v1", "i", "x..y"), false},
	}
	for _, tc := range cases {
		err := tc.e.Validate()
		if (err == nil) != tc.ok {
			t.Errorf("%s: Validate() = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
	idCases := map[string]bool{strings.Repeat("a", 255): true, strings.Repeat("a", 256): false, "A": false, "a b": false, "é": false, "a.b-c_d": true}
	for id, ok := range idCases {
		e := validExt("x")
		e.ID = id
		if err := e.Validate(); (err == nil) != ok {
			t.Errorf("id %q: Validate() = %v, want ok=%v", id, err, ok)
		}
	}
	// JSON whitespace is exactly space, tab, LF and CR.
	for ws, ok := range map[string]bool{" ": true, "\t": true, "\n": true, "\r": true, "\f": false, "\v": false, "\u00a0": false, "\ufeff": false} {
		_, err := canonOf(t, `{`+ws+`"id":"a","type":"pre","subject":"s.v1","timeout_ms":100,"version":"v1"}`)
		if (err == nil) != ok {
			t.Errorf("JSON whitespace %q: err %v, want ok=%v", ws, err, ok)
		}
	}
}

// Q11: integer fields take integer literals only: 100, not 100.0 or 1e2; numbers inside
// config, metadata and unknown fields are any JSON number, written canonically.
func TestAnswerIntegerLiterals(t *testing.T) {
	t.Parallel()
	mk := func(timeout, retry, weight string) string {
		return `{"id":"a","type":"pre","subject":"s.v1","timeout_ms":` + timeout + `,"retry":` + retry + `,"version":"v1",` +
			`"config":{"n":1e2,"m":100.0,"k":-0},"instances":[{"instance_id":"i","subject":"x","weight":` + weight + `,"health_status":"unknown"}]}`
	}
	got, err := canonOf(t, mk("100", "-0", "100"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(got, `"config":{"k":0,"m":100,"n":100}`) || !strings.Contains(got, `"retry":0`) {
		t.Errorf("canonical numbers: %s", got)
	}
	for _, lit := range []string{"100.0", "1e2", "1E2", "100e0", `"100"`, "+100", "0100", "2147483648", "true"} {
		for _, in := range []string{mk(lit, "0", "1"), mk("100", lit, "1"), mk("100", "0", lit)} {
			if _, err := canonOf(t, in); err == nil {
				t.Errorf("integer literal %s accepted: %s", lit, in)
			}
		}
	}
	// Out of range integers are validation errors, not syntax errors.
	if _, err := canonOf(t, mk("5001", "0", "1")); !errors.Is(err, ErrInvalid) {
		t.Errorf("timeout_ms 5001: %v", err)
	}
	// The snapshot document's revision and count are integers too.
	empty, _ := New(0, "database", nil)
	for _, doc := range []string{
		`{"revision":1.0,"checksum":"` + empty.Checksum() + `","extensions":[]}`,
		`{"revision":1,"checksum":"` + empty.Checksum() + `","count":0.0,"extensions":[]}`,
	} {
		if _, err := Decode([]byte(doc)); err == nil {
			t.Errorf("%s accepted", doc)
		}
	}
}

// Q12: a snapshot document's extensions may come in any order; duplicate ids, and
// duplicate versions or instances within an aggregate, are invalid.
func TestAnswerOrderAndDuplicates(t *testing.T) {
	t.Parallel()
	agg := func(id, rest string) string {
		return `{"id":"` + id + `","type":"pre","subject":"s.v1","timeout_ms":100,"version":"v1","enabled":true` + rest + `}`
	}
	a, b := agg("a", ""), agg("b", "")
	ref, err := Decode(answersDoc(mustDecodedSum(t, a, b), 3, a, b))
	if err != nil {
		t.Fatal(err)
	}
	unsorted, err := Decode(answersDoc(ref, 3, b, a))
	if err != nil {
		t.Fatalf("unsorted ids: %v", err)
	}
	if unsorted.Checksum() != ref.Checksum() || unsorted.All()[0].ID != "a" {
		t.Errorf("unsorted ids: checksum %s order %s, want %s and a first", unsorted.Checksum(), unsorted.All()[0].ID, ref.Checksum())
	}
	if _, err := Decode(answersDoc(ref, 3, a, a)); !errors.Is(err, ErrInvalid) {
		t.Errorf("duplicate ids: %v, want ErrInvalid", err)
	}
	v := func(name string) string {
		return `{"version":"` + name + `","subject":"s.` + name + `","timeout_ms":100}`
	}
	in := func(name string) string {
		return `{"instance_id":"` + name + `","subject":"x","health_status":"unknown"}`
	}
	ordered := agg("a", `,"versions":[`+v("v1")+`,`+v("v2")+`],"instances":[`+in("i1")+`,`+in("i2")+`]`)
	shuffled := agg("a", `,"versions":[`+v("v2")+`,`+v("v1")+`],"instances":[`+in("i2")+`,`+in("i1")+`]`)
	c1, err1 := canonOf(t, ordered)
	c2, err2 := canonOf(t, shuffled)
	if err1 != nil || err2 != nil || c1 != c2 {
		t.Errorf("unsorted versions/instances: %v %v\n%s\n%s", err1, err2, c1, c2)
	}
	for _, dup := range []string{
		agg("a", `,"versions":[`+v("v1")+`,`+v("v1")+`]`),
		agg("a", `,"instances":[`+in("i1")+`,`+in("i1")+`]`),
	} {
		if _, err := canonOf(t, dup); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", dup, err)
		}
		// The same inside a snapshot document and a put aggregate.
		empty, _ := New(0, "database", nil)
		if _, err := Decode(answersDoc(empty, 1, dup)); !errors.Is(err, ErrInvalid) {
			t.Errorf("snapshot with %s: %v, want ErrInvalid", dup, err)
		}
		if _, _, err := empty.Apply(1, "database", []Change{{Op: OpPut, Kind: KindAggregate, ID: "a", Value: []byte(dup)}}); !errors.Is(err, ErrInvalid) {
			t.Errorf("put aggregate %s: %v, want ErrInvalid", dup, err)
		}
	}
}

// mustDecodedSum is the snapshot of the given aggregates, built through Apply (the same
// decoder as Decode), whose checksum a test document can carry.
func mustDecodedSum(t *testing.T, aggregates ...string) *Snapshot {
	t.Helper()
	s, err := New(0, "database", nil)
	if err != nil {
		t.Fatal(err)
	}
	var changes []Change
	for _, a := range aggregates {
		var d decoder
		e, err := d.decodeExtensionValue([]byte(a), false)
		if err != nil {
			t.Fatal(err)
		}
		changes = append(changes, Change{Op: OpPut, Kind: KindAggregate, ID: e.ID, Value: []byte(a)})
	}
	next, _, err := s.Apply(3, "database", changes)
	if err != nil {
		t.Fatal(err)
	}
	return next
}
