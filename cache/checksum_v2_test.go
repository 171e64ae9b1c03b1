package cache

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/big"
	"math/rand/v2"
	"testing"
)

// sumV2 is the v2 checksum of the given canonical encodings computed with
// math/big, independently of add256.
func sumV2(encodings ...string) string {
	total := new(big.Int)
	for _, e := range encodings {
		h := sha256.Sum256([]byte(e))
		total.Add(total, new(big.Int).SetBytes(h[:]))
	}
	total.Mod(total, new(big.Int).Lsh(big.NewInt(1), 256))
	return fmt.Sprintf("%064x", total)
}

func TestWorkedExampleV2(t *testing.T) {
	t.Parallel()
	exts := workedExample()
	for _, tc := range []struct {
		ext  *Extension
		want string
	}{{&exts[1], workedAlpha}, {&exts[0], workedBeta}} {
		got, err := CanonicalV2(tc.ext)
		if err != nil {
			t.Fatalf("CanonicalV2(%s): %v", tc.ext.ID, err)
		}
		if string(got) != tc.want {
			t.Errorf("CanonicalV2(%s)\n got %s\nwant %s", tc.ext.ID, got, tc.want)
		}
	}
	if got := sumV2(workedAlpha, workedBeta); got != workedChecksumV2 {
		t.Errorf("recomputed worked checksum_v2 %s, pinned %s", got, workedChecksumV2)
	}
	s := mustNewSource(t, 7, "fixtures", exts)
	if s.ChecksumV2() != workedChecksumV2 {
		t.Errorf("ChecksumV2 %s, want %s", s.ChecksumV2(), workedChecksumV2)
	}
	if s.KnownChecksum() != "" {
		t.Error("the v1 checksum was computed before it was asked for")
	}
	if s.Checksum() != workedChecksum || s.KnownChecksum() != workedChecksum {
		t.Errorf("Checksum %s, want %s", s.Checksum(), workedChecksum)
	}
	empty := mustNewSource(t, 0, "database", nil)
	if want := fmt.Sprintf("%064d", 0); empty.ChecksumV2() != want {
		t.Errorf("empty ChecksumV2 %s, want %s", empty.ChecksumV2(), want)
	}
}

// TestJCSVectors checks the canonicalizer in RFC 8785 mode against the
// examples of RFC 8785 §3.2.2 (values) and §3.2.3 (key order by UTF-16 code units);
// 333333333.33333329 is written 333333333.3333333, as a registry number must round-trip.
func TestJCSVectors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, want string }{
		{`{"numbers": [333333333.3333333, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
		   "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
		   "literals": [null, true, false]}`,
			`{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}`},
		{`{"\u20ac": "Euro Sign", "\r": "Carriage Return", "\ufb33": "Hebrew Letter Dalet With Dagesh",
		   "1": "One", "\ud83d\ude00": "Emoji: Grinning Face", "\u0080": "Control",
		   "\u00f6": "Latin Small Letter O With Diaeresis"}`,
			"{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u0080\":\"Control\",\"ö\":\"Latin Small Letter O With Diaeresis\"," +
				"\"€\":\"Euro Sign\",\"😀\":\"Emoji: Grinning Face\",\"\ufb33\":\"Hebrew Letter Dalet With Dagesh\"}"},
	} {
		p := jsonParser{utf16: true}
		got, err := p.canonicalJSON(nil, []byte(tc.in))
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != tc.want {
			t.Errorf("JCS of %s\n got %s\nwant %s", tc.in, got, tc.want)
		}
	}
}

// TestV2KeyOrder: an aggregate whose config keys UTF-8 and UTF-16 order
// differently has distinct v1 and v2 encodings, and each checksum uses its own.
func TestV2KeyOrder(t *testing.T) {
	t.Parallel()
	e := validExt("keys")
	// U+E000 is EE 80 80 in UTF-8 and E000 in UTF-16; U+1F600 is F0 9F 98 80 and D83D DE00.
	e.Config = json.RawMessage(`{"\ue000": 1, "\ud83d\ude00": 2, "a": {"\ud83d\ude00": 3, "\ue000": 4}}`)
	v1, err := Canonical(&e)
	if err != nil {
		t.Fatal(err)
	}
	v2, err := CanonicalV2(&e)
	if err != nil {
		t.Fatal(err)
	}
	wantCfg1 := "{\"a\":{\"\ue000\":4,\"😀\":3},\"\ue000\":1,\"😀\":2}"
	wantCfg2 := "{\"a\":{\"😀\":3,\"\ue000\":4},\"😀\":2,\"\ue000\":1}"
	if want := `{"config":` + wantCfg1 + `,`; string(v1[:len(want)]) != want {
		t.Errorf("v1 encoding %s, want it to start with %s", v1, want)
	}
	if want := `{"config":` + wantCfg2 + `,`; string(v2[:len(want)]) != want {
		t.Errorf("v2 encoding %s, want it to start with %s", v2, want)
	}
	plain := validExt("plain")
	s := mustNew(t, 1, []Extension{e, plain})
	p1, _ := Canonical(&plain)
	h1, h2, hp := sha256.Sum256(v1), sha256.Sum256(v2), sha256.Sum256(p1)
	if got, _ := s.Hash("keys"); got != h2 {
		t.Errorf("Hash = %x, want the v2 hash %x", got, h2)
	}
	if want := sumV2(string(v2), string(p1)); s.ChecksumV2() != want {
		t.Errorf("ChecksumV2 %s, want %s", s.ChecksumV2(), want)
	}
	v1sum := sha256.Sum256(append(h1[:], hp[:]...)) // "keys" < "plain"
	if want := hex.EncodeToString(v1sum[:]); s.Checksum() != want {
		t.Errorf("Checksum %s, want %s", s.Checksum(), want)
	}
	// Through a document and through Apply, the same.
	doc, err := s.Encode()
	if err != nil {
		t.Fatal(err)
	}
	d, err := Decode(doc)
	if err != nil {
		t.Fatal(err)
	}
	assertSameSnapshot(t, d, s)
	empty := mustNew(t, 0, nil)
	a, _, err := empty.Apply(1, "database", []Change{putAggregate(t, e), putAggregate(t, plain)})
	if err != nil {
		t.Fatal(err)
	}
	assertSameSnapshot(t, a, s)
}

// TestApplyChecksumsIncremental applies random deltas and compares both
// checksums with a snapshot built from scratch after each.
func TestApplyChecksumsIncremental(t *testing.T) {
	t.Parallel()
	r := rand.New(rand.NewPCG(3, 4))
	all := Synthetic(400)
	cur := mustNew(t, 0, nil)
	content := map[string]Extension{}
	for rev := int64(1); rev <= 60; rev++ {
		var changes []Change
		for range 1 + r.IntN(40) {
			e := all[r.IntN(len(all))]
			if r.IntN(4) == 0 {
				changes = append(changes, Change{Op: OpDelete, Kind: KindAggregate, ID: e.ID})
				delete(content, e.ID)
				continue
			}
			e.TimeoutMS = 10 + r.IntN(100)
			changes = append(changes, putAggregate(t, e))
			content[e.ID] = e
		}
		next, _, err := cur.Apply(rev, "database", changes)
		if err != nil {
			t.Fatal(err)
		}
		if err := next.check(); err != nil {
			t.Fatalf("revision %d: %v", rev, err)
		}
		exts := make([]Extension, 0, len(content))
		for _, e := range content {
			exts = append(exts, e)
		}
		want := mustNew(t, rev, exts)
		if next.ChecksumV2() != want.ChecksumV2() || next.Len() != want.Len() {
			t.Fatalf("revision %d: checksum_v2 %s (%d), from scratch %s (%d)", rev, next.ChecksumV2(), next.Len(), want.ChecksumV2(), want.Len())
		}
		if rev%10 == 0 && next.Checksum() != want.Checksum() {
			t.Fatalf("revision %d: checksum %s, from scratch %s", rev, next.Checksum(), want.Checksum())
		}
		cur = next
	}
}
