package protocol

import (
	"encoding/base64"
	"errors"
	"fmt"
	"testing"

	"github.com/nats-io/nats.go"
)

// TestVerifiedCache: a message that verified once is not verified again, and the memory
// of it trusts nothing else: another signature, another payload, another kind, a trust
// without the key are each refused; the cache stays bounded.
func TestVerifiedCache(t *testing.T) {
	t.Parallel()
	s, _, err := GenerateSigner()
	if err != nil {
		t.Fatal(err)
	}
	other, _, err := GenerateSigner()
	if err != nil {
		t.Fatal(err)
	}
	trust, err := NewTrust(s.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	m := nats.NewMsg("x")
	m.Data = []byte(`{"revision":7}`)
	if err := s.Sign(KindDelta, m); err != nil {
		t.Fatal(err)
	}
	for range 2 { // the second time from the cache
		if err := trust.Verify(KindDelta, m.Header, m.Data); err != nil {
			t.Fatalf("a signed delta: %v", err)
		}
	}
	if !verified.has(verifyDigest(s.PublicKey(), mustSig(t, m), KindDelta, m.Data)) {
		t.Fatal("a verified message is not remembered")
	}
	refused := func(what string, h nats.Header, kind string, data []byte, tr *Trust) {
		t.Helper()
		if err := tr.Verify(kind, h, data); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want refused", what, err)
		}
	}
	refused("another payload", m.Header, KindDelta, []byte(`{"revision":8}`), trust)
	refused("another kind", m.Header, KindHeartbeat, m.Data, trust)
	forged := nats.Header{}
	forged.Set(HeaderKey, s.PublicKey())
	forged.Set(HeaderSignature, otherSig(t, other, m.Data))
	refused("a signature by another key under this key's name", forged, KindDelta, m.Data, trust)
	otherTrust, err := NewTrust(other.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	refused("a trust without the key", m.Header, KindDelta, m.Data, otherTrust)

	for i := range verifiedSize + 10 {
		x := nats.NewMsg("x")
		x.Data = fmt.Appendf(nil, `{"n":%d}`, i)
		if err := s.Sign(KindDelta, x); err != nil {
			t.Fatal(err)
		}
		if err := trust.Verify(KindDelta, x.Header, x.Data); err != nil {
			t.Fatal(err)
		}
	}
	verified.mu.Lock()
	n := len(verified.m)
	verified.mu.Unlock()
	if n > verifiedSize {
		t.Errorf("the cache holds %d entries, bound %d", n, verifiedSize)
	}
}

func mustSig(t *testing.T, m *nats.Msg) []byte {
	t.Helper()
	raw, err := base64.RawURLEncoding.DecodeString(m.Header.Get(HeaderSignature))
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func otherSig(t *testing.T, s *Signer, data []byte) string {
	t.Helper()
	sig, err := s.Signature(KindDelta, data)
	if err != nil {
		t.Fatal(err)
	}
	return sig
}
