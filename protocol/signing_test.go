package protocol

import (
	"encoding/base32"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
)

// exampleFields reads the fields of PROTOCOL.md's worked signing example.
func exampleFields(t *testing.T) map[string]string {
	t.Helper()
	doc, err := os.ReadFile("../PROTOCOL.md")
	if err != nil {
		t.Fatal(err)
	}
	_, block, ok := strings.Cut(string(doc), "<!-- signing example -->\n```\n")
	if !ok {
		t.Fatal("PROTOCOL.md: the signing example block is missing")
	}
	block, _, _ = strings.Cut(block, "```")
	fields := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(block), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			t.Fatalf("PROTOCOL.md signing example: bad line %q", line)
		}
		fields[k] = strings.TrimSpace(v)
	}
	return fields
}

// TestSigningDocExample keeps PROTOCOL.md's worked signing example true.
func TestSigningDocExample(t *testing.T) {
	t.Parallel()
	f := exampleFields(t)
	s, err := NewSigner([]byte(f["seed"]))
	if err != nil {
		t.Fatal(err)
	}
	if s.PublicKey() != f["Registry-Key"] {
		t.Errorf("public key %s, PROTOCOL.md says %s", s.PublicKey(), f["Registry-Key"])
	}
	decoded, err := base32.StdEncoding.WithPadding(base32.NoPadding).DecodeString(f["Registry-Key"])
	if err != nil || len(decoded) != 35 || decoded[0] != 0xA0 {
		t.Fatalf("Registry-Key does not decode as PROTOCOL.md says: %x %v", decoded, err)
	}
	if got := hex.EncodeToString(decoded[1:33]); got != f["raw public key"] {
		t.Errorf("raw public key %s, PROTOCOL.md says %s", got, f["raw public key"])
	}
	payload := []byte(f["payload"])
	signed := SignedBytes(f["kind"], payload)
	if got := hex.EncodeToString(signed); got != f["signed bytes"] {
		t.Errorf("signed bytes %s, PROTOCOL.md says %s", got, f["signed bytes"])
	}
	if string(signed) != "beamline-registry-v1\ndelta\n"+f["payload"] {
		t.Errorf("signed bytes are not domain, LF, kind, LF, payload: %q", signed)
	}
	sig, err := s.Signature(f["kind"], payload)
	if err != nil {
		t.Fatal(err)
	}
	if sig != f["Registry-Signature"] {
		t.Errorf("signature %s, PROTOCOL.md says %s", sig, f["Registry-Signature"])
	}
	raw, _ := base64.RawURLEncoding.DecodeString(f["Registry-Signature"])
	if got := hex.EncodeToString(raw); got != f["raw signature"] {
		t.Errorf("raw signature %s, PROTOCOL.md says %s", got, f["raw signature"])
	}

	// The router side: the headers of the example verify with the key trusted, and
	// nothing else does.
	trust, err := NewTrust(f["Registry-Key"])
	if err != nil {
		t.Fatal(err)
	}
	h := nats.Header{}
	h.Set(HeaderKey, f["Registry-Key"])
	h.Set(HeaderSignature, f["Registry-Signature"])
	if err := trust.Verify(KindDelta, h, payload); err != nil {
		t.Fatalf("the example does not verify: %v", err)
	}
	for what, check := range map[string]func() error{
		"another kind":    func() error { return trust.Verify(KindHeartbeat, h, payload) },
		"another payload": func() error { return trust.Verify(KindDelta, h, append([]byte(" "), payload...)) },
		"no signature":    func() error { return trust.Verify(KindDelta, nats.Header{}, payload) },
		"a malformed one": func() error {
			hh := clone(h)
			hh.Set(HeaderSignature, "!!")
			return trust.Verify(KindDelta, hh, payload)
		},
		"an untrusted key": func() error {
			t2, _, _ := GenerateSigner()
			tr, _ := NewTrust(t2.PublicKey())
			return tr.Verify(KindDelta, h, payload)
		},
		"a spoofed key hdr": func() error {
			t2, _, _ := GenerateSigner()
			hh := clone(h)
			hh.Set(HeaderKey, t2.PublicKey())
			return trust.Verify(KindDelta, hh, payload)
		},
	} {
		err := check()
		if err == nil || !errors.Is(err, ErrInvalid) || !(errors.Is(err, ErrUnsigned) || errors.Is(err, ErrUntrusted)) {
			t.Errorf("%s: %v, want a rejection", what, err)
		}
	}
}

func TestKeyRecord(t *testing.T) {
	t.Parallel()
	s, _, err := GenerateSigner()
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.KeyMsg("x")
	if err != nil {
		t.Fatal(err)
	}
	tr, err := DecodeKeyRecord(m.Header, m.Data)
	if err != nil || len(tr.Keys()) != 1 || tr.Keys()[0] != s.PublicKey() {
		t.Fatalf("key record: %v %v", tr, err)
	}
	// A record naming one key signed by another is refused.
	other, _, _ := GenerateSigner()
	forged := nats.NewMsg("x")
	forged.Data = m.Data
	if err := other.Sign(KindKey, forged); err != nil {
		t.Fatal(err)
	}
	if _, err := DecodeKeyRecord(forged.Header, forged.Data); err == nil {
		t.Fatal("accepted a key record signed by another key")
	}
	for _, bad := range []string{"", "SUAB", "UABC", "NAB2CB576PHBBPQ5ODORRZ2LYCMWPZGWGCN2KDK7DXOIMZASKUY3RLKK"} {
		if _, err := NewTrust(bad); err == nil {
			t.Errorf("NewTrust(%q) accepted", bad)
		}
	}
	if _, err := NewSigner([]byte("SAAGNJOZTRPYYXG2NJX3ZNGXYUSDYX2BWO447W3SHG6XQ7U66RWHQ3JUXM")); err == nil {
		t.Error("an account seed accepted as a signing key")
	}
}

// TestPermissionsDocumented checks that PROTOCOL.md §11 lists every subject of
// RouterPermissions and SyncerPermissions.
func TestPermissionsDocumented(t *testing.T) {
	t.Parallel()
	doc, err := os.ReadFile("../PROTOCOL.md")
	if err != nil {
		t.Fatal(err)
	}
	_, sec, _ := strings.Cut(string(doc), "## 11. NATS permissions")
	n, _ := NewNames(DefaultPrefix)
	generic := strings.NewReplacer(DefaultPrefix+".", "P.", "BEAMLINE_REGISTRY_", "NAME_")
	for role, p := range map[string]Permissions{"router": n.RouterPermissions(), "syncer": n.SyncerPermissions()} {
		row := ""
		for _, line := range strings.Split(sec, "\n") {
			if strings.HasPrefix(line, "| "+role) {
				row = line
			}
		}
		if row == "" {
			t.Fatalf("PROTOCOL.md §11 has no row for %s", role)
		}
		cells := strings.Split(row, "|")
		for col, subjects := range map[int][]string{2: p.Publish, 3: p.Subscribe} {
			listed := strings.Count(cells[col], "`") / 2
			if listed != len(subjects) {
				t.Errorf("%s column %d lists %d subjects, the code %d", role, col, listed, len(subjects))
			}
			for _, subj := range subjects {
				if !strings.Contains(cells[col], "`"+generic.Replace(subj)+"`") {
					t.Errorf("PROTOCOL.md §11 %s: %s missing", role, generic.Replace(subj))
				}
			}
		}
	}
}

func clone(h nats.Header) nats.Header {
	c := nats.Header{}
	for k, v := range h {
		c[k] = append([]string(nil), v...)
	}
	return c
}
