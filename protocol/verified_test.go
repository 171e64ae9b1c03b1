package protocol

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/beamline/registry-syncer/cache"
	"strings"
	"testing"
	"time"

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
	if _, ok := verified.get(verifyDigest(s.PublicKey(), mustSig(t, m), KindDelta, m.Data)); !ok {
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

// TestDecodedDeltasShared: the same live payload is decoded once per process; the
// headers are still checked per message, and what does not decode is never remembered.
func TestDecodedDeltasShared(t *testing.T) {
	t.Parallel()
	d := &Delta{Revision: 911_000_001, PrevRevision: 911_000_000, Checksum: strings.Repeat("a", 64), Count: 0, Source: "database",
		CommittedAt: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC), Changes: []cache.Change{{Op: cache.OpDelete, Kind: cache.KindExtension, ID: "x"}}}
	data, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	m := d.Msg("P.live", data)
	first, err := DeltaFromMsg(m)
	if err != nil {
		t.Fatal(err)
	}
	second, err := DeltaFromMsg(d.Msg("P.live", data))
	if err != nil {
		t.Fatal(err)
	}
	if first != second {
		t.Error("the same payload was decoded twice")
	}
	lying := d.Msg("P.live", data)
	lying.Header.Set(HeaderRevision, "911000002")
	if _, err := DeltaFromMsg(lying); !errors.Is(err, ErrInvalid) {
		t.Errorf("a remembered payload under another revision header: %v, want refused", err)
	}
	bad := nats.NewMsg("P.live")
	bad.Data = []byte(`{"revision":911000003}`)
	for range 2 {
		if _, err := DeltaFromMsg(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("an invalid delta: %v, want refused (twice: never remembered)", err)
		}
	}
	big := *d
	big.Changes = []cache.Change{{Op: cache.OpPut, Kind: cache.KindExtension, ID: "x", Value: json.RawMessage(`{"config":"` + strings.Repeat("y", decodedMaxPayload) + `"}`)}}
	bigData, err := json.Marshal(&big)
	if err != nil {
		t.Fatal(err)
	}
	a, err := DeltaFromMsg(big.Msg("P.live", bigData))
	if err != nil {
		t.Fatal(err)
	}
	b, err := DeltaFromMsg(big.Msg("P.live", bigData))
	if err != nil {
		t.Fatal(err)
	}
	if a == b {
		t.Errorf("a payload of %d bytes (bound %d) was remembered", len(bigData), decodedMaxPayload)
	}
}
