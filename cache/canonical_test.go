package cache

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"math"
	"strings"
	"testing"
)

// workedExample is the two-extension snapshot used in PROTOCOL.md.
func workedExample() []Extension {
	return []Extension{
		{
			// Listed first on purpose: order of input must not matter.
			ID: "beta", Type: TypePost, Subject: "ext.beta.v3", TimeoutMS: 10, Retry: 3, Enabled: false, Version: "v3",
			Config:   nil,
			Metadata: json.RawMessage(`{"\u00e9": 1e2, "note": "tab\there"}`),
		},
		{
			ID: "alpha", Type: TypePre, Subject: "ext.alpha.v1", TimeoutMS: 100, Retry: 1, Enabled: true, Version: "v1",
			Config:   json.RawMessage(` {"b": 1.50, "a": "x/<&>\u2028"} `),
			Metadata: json.RawMessage(`null`),
			Versions: []Version{{
				Version: "v2", Subject: "ext.alpha.v2", TimeoutMS: 200, Retry: 0, Enabled: true,
				Config: json.RawMessage(`{}`), Metadata: nil, RoutingRules: json.RawMessage(`{"tenant": ["t1", "t2"]}`),
			}},
			Instances: []Instance{{InstanceID: "i1", Subject: "ext.alpha.v1.i1", Weight: 100, Enabled: true, HealthStatus: HealthHealthy}},
		},
	}
}

const (
	workedAlpha = `{"config":{"a":"x/<&>` + "\u2028" + `","b":1.5},"enabled":true,"id":"alpha",` +
		`"instances":[{"enabled":true,"health_status":"healthy","instance_id":"i1","subject":"ext.alpha.v1.i1","weight":100}],` +
		`"metadata":{},"retry":1,"subject":"ext.alpha.v1","timeout_ms":100,"type":"pre","version":"v1",` +
		`"versions":[{"config":{},"enabled":true,"metadata":{},"retry":0,"routing_rules":{"tenant":["t1","t2"]},` +
		`"subject":"ext.alpha.v2","timeout_ms":200,"version":"v2"}]}`
	workedBeta = `{"config":{},"enabled":false,"id":"beta","instances":[],"metadata":{"note":"tab\there","é":100},` +
		`"retry":3,"subject":"ext.beta.v3","timeout_ms":10,"type":"post","version":"v3","versions":[]}`
	// workedChecksum pins the value quoted in PROTOCOL.md; the test also
	// recomputes it from the hand-written canonical strings above.
	workedChecksum = "01c0c3e956efc4da18af1f6b9a1ef933f5fbf7a07819f3013f46cacfdb9916b0"
	// workedChecksumV2 is the v2 checksum of the same snapshot; TestWorkedExampleV2
	// recomputes it with math/big.
	workedChecksumV2 = "b33315af08fdd3ab5e38a1ab790668f06a5895d308035b084157040470b2f6ab"
)

func TestWorkedExample(t *testing.T) {
	t.Parallel()
	exts := workedExample()
	for _, tc := range []struct {
		ext  *Extension
		want string
	}{{&exts[1], workedAlpha}, {&exts[0], workedBeta}} {
		got, err := Canonical(tc.ext)
		if err != nil {
			t.Fatalf("Canonical(%s): %v", tc.ext.ID, err)
		}
		if string(got) != tc.want {
			t.Errorf("Canonical(%s)\n got %s\nwant %s", tc.ext.ID, got, tc.want)
		}
	}
	ha := sha256.Sum256([]byte(workedAlpha))
	hb := sha256.Sum256([]byte(workedBeta))
	sum := sha256.Sum256(append(ha[:], hb[:]...)) // alpha < beta
	want := hex.EncodeToString(sum[:])

	s, err := New(7, "fixtures", exts)
	if err != nil {
		t.Fatal(err)
	}
	if s.Checksum() != want {
		t.Errorf("checksum %s, want %s", s.Checksum(), want)
	}
	if want != workedChecksum {
		t.Errorf("recomputed worked checksum %s, pinned %s", want, workedChecksum)
	}
	if h, ok := s.Hash("alpha"); !ok || h != ha {
		t.Errorf("Hash(alpha) = %x, %v; want %x", h, ok, ha)
	}
	// The input is not modified.
	if string(exts[1].Config) != ` {"b": 1.50, "a": "x/<&>\u2028"} ` || exts[0].Config != nil {
		t.Errorf("New modified its input: %q %q", exts[1].Config, exts[0].Config)
	}
}

func TestEmptyChecksum(t *testing.T) {
	t.Parallel()
	s, err := New(0, "database", nil)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(nil)
	if got, want := s.Checksum(), hex.EncodeToString(sum[:]); got != want {
		t.Errorf("empty checksum %s, want %s", got, want)
	}
	if want := "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"; s.Checksum() != want {
		t.Errorf("empty checksum %s, want %s", s.Checksum(), want)
	}
}

func canon(t *testing.T, in string) (string, error) {
	t.Helper()
	var p jsonParser
	out, err := p.canonicalJSON(nil, []byte(in))
	return string(out), err
}

func TestCanonicalJSON(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, want string }{
		{`{}`, `{}`},
		{` { "b" : [ 1 , 2 ] , "a" : { "d" : null , "c" : true } } `, `{"a":{"c":true,"d":null},"b":[1,2]}`},
		{`[]`, `[]`},
		{`[false, null, true]`, `[false,null,true]`},
		// Keys sort by their decoded bytes, not by their escaped spelling.
		{`{"\u0062":1,"a":2}`, `{"a":2,"b":1}`},
		{`{"é":1,"z":2,"Z":3,"":4}`, `{"":4,"Z":3,"z":2,"é":1}`},
		{`{"\"":1,"!":2,"#":3}`, `{"!":2,"\"":1,"#":3}`},
		// Nested objects sort independently.
		{`{"z":{"y":1,"x":{"b":1,"a":2}},"a":[{"d":1,"c":2}]}`, `{"a":[{"c":2,"d":1}],"z":{"x":{"a":2,"b":1},"y":1}}`},
		// Strings.
		{`"a\/b"`, `"a/b"`},
		{`"\"\\"`, `"\"\\"`},
		{`"\b\f\n\r\t"`, `"\b\f\n\r\t"`},
		{`"\u0001\u001f\u007f"`, `"\u0001\u001f` + "\u007f" + `"`},
		{`"\u000B\u001A"`, `"\u000b\u001a"`},
		{`"\u00e9\u20ac"`, `"é€"`},
		{`"<>&\u2028\u2029"`, "\"<>&\u2028\u2029\""},
		{`"\ud83d\ude00"`, `"😀"`},
		{`"😀"`, `"😀"`},
		{`"\uD834\uDD1E"`, `"𝄞"`},
		// Numbers.
		{`0`, `0`},
		{`-0`, `0`},
		{`-0.0`, `0`},
		{`1.0`, `1`},
		{`1.50`, `1.5`},
		{`100`, `100`},
		{`1e2`, `100`},
		{`1E+2`, `100`},
		{`-12`, `-12`},
		{`123456789012345`, `123456789012345`},
		{`9007199254740992`, `9007199254740992`},
		{`1e21`, `1e+21`},
		{`1e20`, `100000000000000000000`},
		{`123456789012345680000`, `123456789012345680000`},
		{`1.2345678901234568e21`, `1.2345678901234568e+21`},
		{`0.1`, `0.1`},
		{`0.000001`, `0.000001`},
		{`0.0000001`, `1e-7`},
		{`1.5e-7`, `1.5e-7`},
		{`0.00000123`, `0.00000123`},
		{`123e-20`, `1.23e-18`},
		{`0.30000000000000004`, `0.30000000000000004`},
		{`5e-324`, `5e-324`},
		{`1.7976931348623157e308`, `1.7976931348623157e+308`},
		{`-1.5e300`, `-1.5e+300`},
		{`25.5e1`, `255`},
		{`1.25`, `1.25`},
		{`-0.5`, `-0.5`},
	} {
		got, err := canon(t, tc.in)
		if err != nil {
			t.Errorf("canonical(%s): %v", tc.in, err)
			continue
		}
		if got != tc.want {
			t.Errorf("canonical(%s) = %s, want %s", tc.in, got, tc.want)
		}
	}
}

func TestCanonicalJSONErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, want string }{
		{``, "unexpected end of input"},
		{`{"a":1,"a":2}`, `duplicate object key "a"`},
		{`{"b":1,"a":2,"b":3}`, `duplicate object key "b"`},
		{`{"a":1,"\u0061":2}`, `duplicate object key "a"`},
		{"\"\xff\"", "invalid UTF-8"},
		{"{\"\xc3\":1}", "invalid UTF-8"},
		{`"\ud800"`, "surrogate"},
		{`"\udc00\ud800"`, "surrogate"},
		{`"\ud800\u0041"`, "surrogate"},
		{`"\x"`, "invalid escape"},
		{`"\u12"`, `invalid \u escape`},
		{"\"a\tb\"", "control character"},
		{`"abc`, "unexpected end of input"},
		{`{"a":1`, "unexpected end of input"},
		{`[1,2`, "unexpected end of input"},
		{`[1,]`, "unexpected character"},
		{`{"a":1,}`, "expected string object key"},
		{`{a:1}`, "expected string object key"},
		{`01`, "unexpected data after JSON value"},
		{`1.`, "no digits after '.'"},
		{`1e`, "no digits in exponent"},
		{`-`, "unexpected end of input"},
		{`+1`, "unexpected character"},
		{`1e400`, "round-trip through an IEEE-754 double"},
		{`-1e400`, "round-trip through an IEEE-754 double"},
		{`1e-400`, "round-trip through an IEEE-754 double"},
		{`9007199254740993`, "round-trip through an IEEE-754 double"},
		{`123456789012345678901`, "round-trip through an IEEE-754 double"},
		{`12345678901234567891`, "round-trip through an IEEE-754 double"},
		{`0.1000000000000000000001`, "round-trip through an IEEE-754 double"},
		{`{"a":"\u0000"}`, "U+0000"},
		{`{"\u0000":1}`, "U+0000"},
		{`NaN`, "unexpected character"},
		{`tru`, "unexpected end of input"},
		{`nul1`, "invalid literal"},
		{`{} {}`, "unexpected data after JSON value"},
		{strings.Repeat("[", maxDepth+1) + strings.Repeat("]", maxDepth+1), "deeper than 256 levels"},
	} {
		_, err := canon(t, tc.in)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("canonical(%q): error %v, want it to mention %q", tc.in, err, tc.want)
		}
		var se *SyntaxError
		if err != nil && !errors.As(err, &se) {
			t.Errorf("canonical(%q): error %T is not a *SyntaxError", tc.in, err)
		}
	}
}

func TestESNumber(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		f    float64
		want string
	}{
		{0, "0"},
		{math.Copysign(0, -1), "0"},
		{1, "1"},
		{-1, "-1"},
		{123, "123"},
		{1e21, "1e+21"},
		{999999999999999900000, "999999999999999900000"},
		{1e20, "100000000000000000000"},
		{1.5, "1.5"},
		{0.1, "0.1"},
		{1e-6, "0.000001"},
		{1e-7, "1e-7"},
		{1.5e-7, "1.5e-7"},
		{1.2345e-6, "0.0000012345"},
		{123456.789, "123456.789"},
		{math.MaxFloat64, "1.7976931348623157e+308"},
		{math.SmallestNonzeroFloat64, "5e-324"},
		{-math.SmallestNonzeroFloat64, "-5e-324"},
		{2.2250738585072014e-308, "2.2250738585072014e-308"},
		{1 << 53, "9007199254740992"},
		{1e100, "1e+100"},
		{1.23e25, "1.23e+25"},
		{0.000123, "0.000123"},
		{1.0 / 3, "0.3333333333333333"},
	} {
		if got := string(appendESNumber(nil, tc.f)); got != tc.want {
			t.Errorf("appendESNumber(%v) = %s, want %s", tc.f, got, tc.want)
		}
	}
}

func TestAppendQuoted(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, want string }{
		{"", `""`},
		{"plain", `"plain"`},
		{`a"b\c`, `"a\"b\\c"`},
		{"\b\f\n\r\t", `"\b\f\n\r\t"`},
		{"\x00\x01\x1f\x7f", `"\u0000\u0001\u001f` + "\x7f\""},
		{"/<>&\u2028é😀", "\"/<>&\u2028é😀\""},
	} {
		if got := string(appendQuoted(nil, tc.in)); got != tc.want {
			t.Errorf("appendQuoted(%q) = %s, want %s", tc.in, got, tc.want)
		}
	}
}

func TestCanonicalStringFields(t *testing.T) {
	t.Parallel()
	e := validExt("esc")
	e.Version = "v1\"\\é"
	got, err := Canonical(&e)
	if err != nil {
		t.Fatal(err)
	}
	if want := `"version":"v1\"\\é"`; !strings.Contains(string(got), want) {
		t.Errorf("canonical %s does not contain %s", got, want)
	}
	e.Version = "v1\xff"
	if _, err := Canonical(&e); err == nil || !strings.Contains(err.Error(), "version must be valid UTF-8") {
		t.Errorf("invalid UTF-8 version: %v", err)
	}
}

func TestCanonicalEquivalentInputs(t *testing.T) {
	t.Parallel()
	a := validExt("eq")
	a.Config = json.RawMessage(`{"x":[1,2.0,{"b":"\u0041","a":null}]}`)
	a.Versions = []Version{validVersion("v2"), validVersion("v1")}
	b := validExt("eq")
	b.Config = json.RawMessage("{\n  \"x\": [1.0, 2, {\"a\": null, \"b\": \"A\"}]\n}")
	b.Versions = []Version{validVersion("v1"), validVersion("v2")}
	ca, err := Canonical(&a)
	if err != nil {
		t.Fatal(err)
	}
	cb, err := Canonical(&b)
	if err != nil {
		t.Fatal(err)
	}
	if string(ca) != string(cb) {
		t.Errorf("equivalent inputs encode differently:\n%s\n%s", ca, cb)
	}
	// The canonical form is a fixed point.
	var p jsonParser
	again, err := p.canonicalJSON(nil, ca)
	if err != nil || string(again) != string(ca) {
		t.Errorf("canonical form is not stable: %v\n%s\n%s", err, ca, again)
	}
	// And is valid JSON with the same content.
	var x, y any
	if err := json.Unmarshal(ca, &x); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(again, &y); err != nil {
		t.Fatal(err)
	}
}

// auto_disabled enters the encoding only when true: every other aggregate keeps the
// encoding (and checksum) protocol version 1 defined before the field existed.
func TestAutoDisabledEncoding(t *testing.T) {
	t.Parallel()
	exts := workedExample()
	alpha := exts[1]
	alpha.AutoDisabled = true
	got, err := Canonical(&alpha)
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"auto_disabled":true,` + workedAlpha[1:]; string(got) != want {
		t.Errorf("Canonical(auto-disabled alpha)\n got %s\nwant %s", got, want)
	}
	plain := mustNewSource(t, 7, "database", workedExample())
	if plain.Checksum() != workedChecksum {
		t.Fatalf("worked example checksum %s, want %s", plain.Checksum(), workedChecksum)
	}
	exts[1] = alpha
	auto := mustNewSource(t, 7, "database", exts)
	if auto.Checksum() == workedChecksum {
		t.Error("auto_disabled does not change the checksum")
	}
	doc, err := auto.Encode()
	if err != nil {
		t.Fatal(err)
	}
	back, err := Decode(doc)
	if err != nil {
		t.Fatal(err)
	}
	if e, ok := back.Get("alpha"); !ok || !e.AutoDisabled || back.Checksum() != auto.Checksum() {
		t.Errorf("decoded alpha auto_disabled=%v checksum %s, want true %s", e.AutoDisabled, back.Checksum(), auto.Checksum())
	}
	// An explicit false is the same content as an absent field.
	explicit := strings.Replace(string(doc), `"auto_disabled":true,`, `"auto_disabled":false,`, 1)
	back, err = Decode([]byte(explicit))
	if err == nil {
		t.Fatal("a document whose checksum covers auto_disabled=true decoded with false")
	}
	var withFalse []byte
	if withFalse, err = plain.Encode(); err != nil {
		t.Fatal(err)
	}
	withFalse = []byte(strings.Replace(string(withFalse), `{"config":{"a"`, `{"auto_disabled":false,"config":{"a"`, 1))
	if !strings.Contains(string(withFalse), `"auto_disabled":false`) {
		t.Fatal("the test did not place auto_disabled in the document")
	}
	if back, err = Decode(withFalse); err != nil || back.Checksum() != workedChecksum {
		t.Errorf("explicit auto_disabled=false: %v, checksum %v", err, back)
	}
}
