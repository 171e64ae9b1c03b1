package protocol

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

// Headers of a signed message (PROTOCOL.md §10).
const (
	HeaderKey       = "Registry-Key"       // public NKey (U…) of the signer
	HeaderSignature = "Registry-Signature" // base64url (no padding) of the 64-byte Ed25519 signature
)

// SignatureDomain starts every signed byte string, so that a registry signature can never
// be taken for a signature of anything else made with the same key.
const SignatureDomain = "beamline-registry-v1"

// Kinds of signed messages: each kind is part of the signed bytes, so a signature made for
// one kind of message does not verify as another.
const (
	KindDelta     = "delta"     // a delta, stored (P.delta.R) or announced (P.live): same payload, same signature
	KindHeartbeat = "heartbeat" // P.heartbeat
	KindManifest  = "manifest"  // P.snapshot.manifest
	KindKey       = "key"       // P.snapshot.key, the public key record (self-signed)
)

// ErrUnsigned reports a message without a signature, or with one that does not verify.
var ErrUnsigned = errors.New("signature missing or invalid")

// ErrUntrusted reports a message signed by a key that is not trusted.
var ErrUntrusted = errors.New("signed by an untrusted key")

// SignedBytes are the bytes an Ed25519 signature covers:
// "beamline-registry-v1\n" + kind + "\n" + payload.
// The subject is not part of them: a stored delta and its live announcement carry the same
// payload and signature.
func SignedBytes(kind string, payload []byte) []byte {
	b := make([]byte, 0, len(SignatureDomain)+len(kind)+2+len(payload))
	b = append(b, SignatureDomain...)
	b = append(b, '\n')
	b = append(b, kind...)
	b = append(b, '\n')
	return append(b, payload...)
}

// Signer signs registry messages with one NKey user key pair (an Ed25519 key).
//
// The seed is parsed with nkeys, and the Ed25519 private key derived from it once: an
// nkeys KeyPair derives it again on every Sign, which doubles the cost of signing each
// delta. The signatures are the same (nkeys signs with crypto/ed25519 too).
type Signer struct {
	priv ed25519.PrivateKey
	pub  string
}

// NewSigner checks that seed is an NKey user seed (SU…) and returns its signer. The seed
// is never part of an error.
func NewSigner(seed []byte) (*Signer, error) {
	kp, err := nkeys.FromSeed(seed)
	if err != nil {
		return nil, errors.New("not an NKey seed")
	}
	defer kp.Wipe()
	prefix, raw, err := nkeys.DecodeSeed(seed)
	if err != nil || prefix != nkeys.PrefixByteUser || len(raw) != ed25519.SeedSize {
		return nil, errors.New("not an NKey user seed (SU…)")
	}
	pub, err := kp.PublicKey()
	if err != nil {
		return nil, fmt.Errorf("public key: %w", err)
	}
	priv := ed25519.NewKeyFromSeed(raw)
	clear(raw)
	return &Signer{priv: priv, pub: pub}, nil
}

// GenerateSigner creates a signer with a new random key pair and returns it with its seed.
func GenerateSigner() (*Signer, []byte, error) {
	kp, err := nkeys.CreateUser()
	if err != nil {
		return nil, nil, fmt.Errorf("generate key: %w", err)
	}
	seed, err := kp.Seed()
	if err != nil {
		return nil, nil, err
	}
	s, err := NewSigner(seed)
	return s, seed, err
}

// PublicKey is the signer's public NKey (U…).
func (s *Signer) PublicKey() string { return s.pub }

// Signature signs kind and payload and returns the base64url signature.
func (s *Signer) Signature(kind string, payload []byte) (string, error) {
	sig := ed25519.Sign(s.priv, SignedBytes(kind, payload))
	return base64.RawURLEncoding.EncodeToString(sig), nil
}

// Sign sets the key and signature headers of m for its payload.
func (s *Signer) Sign(kind string, m *nats.Msg) error {
	sig, err := s.Signature(kind, m.Data)
	if err != nil {
		return err
	}
	s.SetSignature(m, sig)
	return nil
}

// SetSignature sets the key header and sig (from Signature, for m's payload) on m: one
// signature serves the stored and the live copy of a delta.
func (s *Signer) SetSignature(m *nats.Msg, sig string) {
	if m.Header == nil {
		m.Header = nats.Header{}
	}
	m.Header.Set(HeaderKey, s.pub)
	m.Header.Set(HeaderSignature, sig)
}

// Trust is a set of trusted public keys (two during a rotation). A nil *Trust verifies
// nothing and refuses nothing: it is what the syncer reads its own streams with.
type Trust struct {
	keys map[string]nkeys.KeyPair
	list []string
}

// NewTrust parses public NKeys (U…). Empty entries are ignored; at least one key is needed.
func NewTrust(keys ...string) (*Trust, error) {
	t := &Trust{keys: map[string]nkeys.KeyPair{}}
	for _, k := range keys {
		k = strings.TrimSpace(k)
		if k == "" {
			continue
		}
		if !nkeys.IsValidPublicUserKey(k) {
			// Not quoted: it may be a seed, a secret.
			return nil, fmt.Errorf("trusted key %d: not a public NKey user key (U…, 56 characters)", len(t.list)+1)
		}
		kp, err := nkeys.FromPublicKey(k)
		if err != nil {
			return nil, fmt.Errorf("trusted key %.8s…: %w", k, err)
		}
		if _, dup := t.keys[k]; !dup {
			t.keys[k] = kp
			t.list = append(t.list, k)
		}
	}
	if len(t.list) == 0 {
		return nil, errors.New("no trusted key")
	}
	return t, nil
}

// Keys lists the trusted public keys.
func (t *Trust) Keys() []string { return append([]string(nil), t.list...) }

// Verify checks that h carries a valid signature of kind and payload by a trusted key.
// The error wraps ErrInvalid and ErrUnsigned or ErrUntrusted.
func (t *Trust) Verify(kind string, h nats.Header, payload []byte) error {
	if t == nil {
		return nil
	}
	key, sig := h.Get(HeaderKey), h.Get(HeaderSignature)
	if key == "" || sig == "" {
		return fmt.Errorf("%w: %s: %w (no %s or %s header)", ErrInvalid, kind, ErrUnsigned, HeaderKey, HeaderSignature)
	}
	kp, ok := t.keys[key]
	if !ok {
		return fmt.Errorf("%w: %s: %w %.16s…", ErrInvalid, kind, ErrUntrusted, key)
	}
	raw, err := base64.RawURLEncoding.DecodeString(sig)
	if err != nil || len(raw) != 64 {
		return fmt.Errorf("%w: %s: %w (malformed %s)", ErrInvalid, kind, ErrUnsigned, HeaderSignature)
	}
	d := verifyDigest(key, raw, kind, payload)
	if _, ok := verified.get(d); ok {
		return nil
	}
	if err := kp.Verify(SignedBytes(kind, payload), raw); err != nil {
		return fmt.Errorf("%w: %s: %w (does not verify with %.16s…)", ErrInvalid, kind, ErrUnsigned, key)
	}
	verified.add(d, struct{}{})
	return nil
}

// KeyRecord is the payload of the public key record (P.snapshot.key): the key the syncer
// signs with, self-signed (KindKey). A router with no configured trusted keys trusts it on
// first bootstrap.
type KeyRecord struct {
	Key       string    `json:"key"`
	CreatedAt time.Time `json:"created_at"`
}

// KeyMsg builds the signed key record message of s.
func (s *Signer) KeyMsg(subject string) (*nats.Msg, error) {
	data, err := json.Marshal(KeyRecord{Key: s.pub, CreatedAt: time.Now().UTC()})
	if err != nil {
		return nil, err
	}
	m := nats.NewMsg(subject)
	m.Data = data
	if err := s.Sign(KindKey, m); err != nil {
		return nil, err
	}
	return m, nil
}

// DecodeKeyRecord checks a stored key record (valid key, self-signature) and returns the
// trust it establishes.
func DecodeKeyRecord(h nats.Header, data []byte) (*Trust, error) {
	var r KeyRecord
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, invalid("decode key record: %v", err)
	}
	t, err := NewTrust(r.Key)
	if err != nil {
		return nil, invalid("key record: %v", err)
	}
	if h.Get(HeaderKey) != r.Key {
		return nil, invalid("key record for %.16s… is signed by %q", r.Key, h.Get(HeaderKey))
	}
	if err := t.Verify(KindKey, h, data); err != nil {
		return nil, err
	}
	return t, nil
}
