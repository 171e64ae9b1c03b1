// Package protocol owns the NATS wire format described in PROTOCOL.md: subject and stream
// names, headers, the delta, manifest and heartbeat documents, and the direct-get reads
// that routers and the syncer use to fetch stored deltas and snapshots without creating
// JetStream consumers.
package protocol

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/beamline/registry-syncer/cache"
)

// DefaultPrefix is the subject prefix when none is configured.
const DefaultPrefix = "beamline.registry"

// Headers set on every delta message (the payload carries the same facts; headers let
// tools and routers filter without decoding).
const (
	HeaderRevision     = "Registry-Revision"
	HeaderPrevRevision = "Registry-Prev-Revision"
	HeaderChecksum     = "Registry-Checksum"
	HeaderChecksumV2   = "Registry-Checksum-V2"
	HeaderSource       = "Registry-Source"
	HeaderCommittedAt  = "Registry-Committed-At"
	HeaderChunk        = "Registry-Chunk" // on snapshot chunks: "<index>/<count>"
)

// Sources of published content.
const (
	SourceDatabase = "database"
	SourceFixtures = "fixtures"
)

var prefixPattern = regexp.MustCompile(`^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$`)

// Limits on names. JetStream refuses stream names longer than MaxStreamName bytes
// (nats-server's JSMaxNameLen). StreamBase spells every prefix character in at most two,
// and the longest stream name is StreamBase(P) + "_SNAPSHOTS", so a prefix of at most
// MaxPrefixLen characters always has valid stream names. Subjects are far from their own
// limit (the 4096-byte control line): the longest, a direct get of a snapshot chunk, is
// about 19 + 255 + 1 + 122 + 34 bytes.
const (
	MaxStreamName = 255
	MaxPrefixLen  = (MaxStreamName - len("_SNAPSHOTS")) / 2
)

// Names derives every subject and stream name from the subject prefix.
type Names struct {
	Prefix         string
	DeltaStream    string
	SnapshotStream string
}

// NewNames validates prefix (dot-separated tokens of letters, digits, '_' and '-', at most
// MaxPrefixLen characters) and derives its stream names with StreamBase.
func NewNames(prefix string) (Names, error) {
	if err := ValidatePrefix(prefix); err != nil {
		return Names{}, err
	}
	base := StreamBase(prefix)
	return Names{Prefix: prefix, DeltaStream: base + "_DELTAS", SnapshotStream: base + "_SNAPSHOTS"}, nil
}

// ValidatePrefix says what is wrong with a subject prefix, or returns nil.
func ValidatePrefix(prefix string) error {
	switch {
	case len(prefix) > MaxPrefixLen:
		return fmt.Errorf("subject prefix: must be at most %d characters, so that its stream names fit JetStream's %d (got %d)", MaxPrefixLen, MaxStreamName, len(prefix))
	case !prefixPattern.MatchString(prefix):
		return fmt.Errorf("subject prefix %q: must be dot-separated tokens of letters, digits, '_' or '-' (no wildcards, no empty tokens)", prefix)
	}
	return nil
}

// StreamBase spells a valid prefix as the common part of its stream names, one to one
// (two prefixes never share a stream) and in upper case only (stream names are also
// directory names, on file systems that may ignore case):
//
//	a-z → A-Z    0-9 → 0-9    . → _
//	A-Z → -A…-Z  _ → -_       - → --
//
// The default prefix beamline.registry keeps the name BEAMLINE_REGISTRY of earlier
// versions; so does every prefix of lowercase letters, digits and dots. Decoding reads
// '-' as "the next character stands for itself", so no two prefixes map to one name.
func StreamBase(prefix string) string {
	var b strings.Builder
	b.Grow(len(prefix) + 8)
	for i := 0; i < len(prefix); i++ {
		switch c := prefix[i]; {
		case c >= 'a' && c <= 'z':
			b.WriteByte(c - 'a' + 'A')
		case c == '.':
			b.WriteByte('_')
		case c >= 'A' && c <= 'Z', c == '_', c == '-':
			b.WriteByte('-')
			b.WriteByte(c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// DeltaSubject is where the delta of revision rev is stored.
func (n Names) DeltaSubject(rev int64) string {
	return n.Prefix + ".delta." + strconv.FormatInt(rev, 10)
}

// DeltaSubjects is the delta stream's subject filter.
func (n Names) DeltaSubjects() string { return n.Prefix + ".delta.>" }

// Live is the core-NATS subject on which every delta is announced once stored.
func (n Names) Live() string { return n.Prefix + ".live" }

// Heartbeat is the core-NATS subject of the syncer's heartbeat.
func (n Names) Heartbeat() string { return n.Prefix + ".heartbeat" }

// Manifest is the subject holding the latest snapshot manifest.
func (n Names) Manifest() string { return n.Prefix + ".snapshot.manifest" }

// ChunkSubject is the subject of the chunks of the snapshot at revision rev.
func (n Names) ChunkSubject(rev int64) string {
	return n.Prefix + ".snapshot.data." + strconv.FormatInt(rev, 10)
}

// ChunkSubjects matches every snapshot chunk.
func (n Names) ChunkSubjects() string { return n.Prefix + ".snapshot.data.>" }

// KeySubject holds the public key record (KeyRecord) in the snapshot stream.
func (n Names) KeySubject() string { return n.Prefix + ".snapshot.key" }

// SnapshotSubjects is the snapshot stream's subject filter.
func (n Names) SnapshotSubjects() string { return n.Prefix + ".snapshot.>" }

// MsgID is the Nats-Msg-Id of the delta of revision rev.
func (n Names) MsgID(rev int64) string { return n.Prefix + ":delta:" + strconv.FormatInt(rev, 10) }

// Delta is one revision: every change of one committed transaction.
type Delta struct {
	Revision     int64  `json:"revision"`
	PrevRevision int64  `json:"prev_revision"`
	Checksum     string `json:"checksum"` // of the snapshot after applying this delta (v1)
	// ChecksumV2 is the v2 checksum of the snapshot after applying this delta (PROTOCOL.md
	// §4); empty from syncers that predate it.
	ChecksumV2  string    `json:"checksum_v2,omitempty"`
	Count       int       `json:"count"` // extensions after applying this delta
	Source      string    `json:"source"`
	CommittedAt time.Time `json:"committed_at"`
	// RegistryID names the registry database the revision was committed in (with
	// CommittedAt, the revision's identity: see PROTOCOL.md "Timelines"). Empty for the
	// fixtures source.
	RegistryID string         `json:"registry_id,omitempty"`
	Resync     bool           `json:"resync,omitempty"` // changes too large for one message: bootstrap from the snapshot
	Changes    []cache.Change `json:"changes"`
}

// ErrInvalid wraps every decoding or validation failure of a protocol document.
var ErrInvalid = errors.New("invalid registry message")

var checksumPattern = regexp.MustCompile(`^[0-9a-f]{64}$`)

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// Validate checks the envelope (not the changes, which cache.Apply validates).
func (d *Delta) Validate() error {
	switch {
	case d.Revision <= 0:
		return invalid("delta revision must be positive (got %d)", d.Revision)
	case d.PrevRevision < 0 || d.PrevRevision >= d.Revision:
		return invalid("delta %d: prev_revision must be in [0, %d) (got %d)", d.Revision, d.Revision, d.PrevRevision)
	case !checksumPattern.MatchString(d.Checksum):
		return invalid("delta %d: checksum must be 64 lowercase hex digits (got %q)", d.Revision, d.Checksum)
	case d.ChecksumV2 != "" && !checksumPattern.MatchString(d.ChecksumV2):
		return invalid("delta %d: checksum_v2 must be 64 lowercase hex digits (got %q)", d.Revision, d.ChecksumV2)
	case d.Count < 0:
		return invalid("delta %d: count must not be negative", d.Revision)
	case d.Source == "":
		return invalid("delta %d: source is empty", d.Revision)
	case d.Resync && len(d.Changes) > 0:
		return invalid("delta %d: a resync delta carries no changes", d.Revision)
	}
	return nil
}

// DecodeDelta parses and validates a delta message payload.
func DecodeDelta(data []byte) (*Delta, error) {
	var d Delta
	if err := json.Unmarshal(data, &d); err != nil {
		return nil, invalid("decode delta: %v", err)
	}
	if err := d.Validate(); err != nil {
		return nil, err
	}
	return &d, nil
}

// decodedSize is how many decoded live deltas a process remembers, of payloads up to
// decodedMaxPayload bytes (so at most 4 MiB of payload, decoded).
const (
	decodedSize       = 64
	decodedMaxPayload = 64 << 10
)

// decodedDeltas remembers, process-wide, the last live delta payloads that decoded and
// validated, by the SHA-256 of the payload: the same announcement reaching several
// clients of one process (a router hosting several registries' clients, a test or
// benchmark with many) is decoded once. A hit is exactly a payload that decoded before.
var decodedDeltas = newRecent[*Delta](decodedSize)

// DeltaFromMsg decodes a delta message and checks that its headers agree with its payload.
// The delta returned may be shared with other callers that received the same payload:
// read it, never modify it.
func DeltaFromMsg(m *nats.Msg) (*Delta, error) {
	var (
		d   *Delta
		ok  bool
		key [32]byte
	)
	share := len(m.Data) <= decodedMaxPayload
	if share {
		key = sha256.Sum256(m.Data)
		d, ok = decodedDeltas.get(key)
	}
	if !ok {
		var err error
		if d, err = DecodeDelta(m.Data); err != nil {
			return nil, err
		}
		if share {
			decodedDeltas.add(key, d)
		}
	}
	if h := m.Header.Get(HeaderRevision); h != "" && h != strconv.FormatInt(d.Revision, 10) {
		return nil, invalid("delta %d: header %s is %q", d.Revision, HeaderRevision, h)
	}
	return d, nil
}

// Msg builds the message for subject with the delta's headers.
func (d *Delta) Msg(subject string, data []byte) *nats.Msg {
	m := nats.NewMsg(subject)
	m.Data = data
	m.Header.Set(HeaderRevision, strconv.FormatInt(d.Revision, 10))
	m.Header.Set(HeaderPrevRevision, strconv.FormatInt(d.PrevRevision, 10))
	m.Header.Set(HeaderChecksum, d.Checksum)
	if d.ChecksumV2 != "" {
		m.Header.Set(HeaderChecksumV2, d.ChecksumV2)
	}
	m.Header.Set(HeaderSource, d.Source)
	m.Header.Set(HeaderCommittedAt, d.CommittedAt.UTC().Format(time.RFC3339Nano))
	return m
}

// Limits a reader enforces on a manifest before reading: NATS payloads are at most 64 MiB.
const (
	MaxChunks     = 1 << 16
	MaxChunkBytes = 64 << 20
)

// Manifest describes the stored snapshot: which chunk messages to fetch and what their
// concatenation must hash to.
type Manifest struct {
	Revision int64  `json:"revision"`
	Checksum string `json:"checksum"`
	// ChecksumV2 is the snapshot's v2 checksum and SHA256 the SHA-256 of the snapshot
	// document (the concatenated chunks), in lowercase hex (PROTOCOL.md §3.5, §4); both
	// empty from syncers that predate them.
	ChecksumV2 string    `json:"checksum_v2,omitempty"`
	SHA256     string    `json:"sha256,omitempty"`
	Source     string    `json:"source"`
	Count      int       `json:"count"`
	Size       int       `json:"size"`      // bytes of the snapshot document
	Sequences  []uint64  `json:"sequences"` // stream sequences of the chunks, in order
	CreatedAt  time.Time `json:"created_at"`
	// RegistryID and CommittedAt identify the revision in the registry database it came
	// from (absent for the fixtures source).
	RegistryID  string     `json:"registry_id,omitempty"`
	CommittedAt *time.Time `json:"committed_at,omitempty"`
}

// Validate checks a decoded manifest.
func (m *Manifest) Validate() error {
	switch {
	case m.Revision < 0:
		return invalid("manifest revision must not be negative")
	case !checksumPattern.MatchString(m.Checksum):
		return invalid("manifest %d: bad checksum %q", m.Revision, m.Checksum)
	case m.ChecksumV2 != "" && !checksumPattern.MatchString(m.ChecksumV2):
		return invalid("manifest %d: bad checksum_v2 %q", m.Revision, m.ChecksumV2)
	case m.SHA256 != "" && !checksumPattern.MatchString(m.SHA256):
		return invalid("manifest %d: bad sha256 %q", m.Revision, m.SHA256)
	case len(m.Sequences) == 0:
		return invalid("manifest %d: no chunks", m.Revision)
	case m.Size <= 0:
		return invalid("manifest %d: size must be positive", m.Revision)
	case len(m.Sequences) > MaxChunks || m.Size > len(m.Sequences)*MaxChunkBytes:
		// Bound what a reader allocates on the word of a message.
		return invalid("manifest %d: %d bytes in %d chunks is beyond the limits (%d chunks of at most %d bytes)",
			m.Revision, m.Size, len(m.Sequences), MaxChunks, MaxChunkBytes)
	case m.Count < 0:
		return invalid("manifest %d: count must not be negative", m.Revision)
	case m.Source != SourceDatabase && m.Source != SourceFixtures:
		return invalid("manifest %d: unknown source %q", m.Revision, m.Source)
	}
	return nil
}

// Heartbeat is published on Names.Heartbeat every interval by the leading syncer.
type Heartbeat struct {
	Revision int64  `json:"revision"`
	Checksum string `json:"checksum"`
	// ChecksumV2 is the v2 checksum of the published revision; empty from syncers that
	// predate it.
	ChecksumV2 string    `json:"checksum_v2,omitempty"`
	Source     string    `json:"source"`
	Time       time.Time `json:"time"`
	IntervalMS int64     `json:"interval_ms"`
	Syncer     string    `json:"syncer"`
}

// DecodeHeartbeat parses and validates a heartbeat.
func DecodeHeartbeat(data []byte) (*Heartbeat, error) {
	var h Heartbeat
	if err := json.Unmarshal(data, &h); err != nil {
		return nil, invalid("decode heartbeat: %v", err)
	}
	if h.Revision < 0 || !checksumPattern.MatchString(h.Checksum) || h.IntervalMS <= 0 ||
		(h.ChecksumV2 != "" && !checksumPattern.MatchString(h.ChecksumV2)) {
		return nil, invalid("heartbeat: revision %d, checksum %q, checksum_v2 %q, interval_ms %d", h.Revision, h.Checksum, h.ChecksumV2, h.IntervalMS)
	}
	return &h, nil
}

// Content is what a message says about the content of a revision: its v1 checksum and,
// from syncers that speak checksum v2, its v2 checksum.
type Content struct {
	Checksum, ChecksumV2 string
}

// Content of the snapshot after the delta.
func (d *Delta) Content() Content { return Content{d.Checksum, d.ChecksumV2} }

// Content of the published revision.
func (h *Heartbeat) Content() Content { return Content{h.Checksum, h.ChecksumV2} }

// Content of the stored snapshot.
func (m *Manifest) Content() Content { return Content{m.Checksum, m.ChecksumV2} }

// ContentOf is what snap holds, as far as it is known without an O(n) computation: the v2
// checksum, and the v1 checksum when it has been computed.
func ContentOf(snap *cache.Snapshot) Content {
	return Content{snap.KnownChecksum(), snap.ChecksumV2()}
}

// IsZero reports whether c names no content ("any verified content").
func (c Content) IsZero() bool { return c.Checksum == "" && c.ChecksumV2 == "" }

// Matches reports whether snap holds the content c announces, comparing the newest
// checksum c carries (PROTOCOL.md §4 "Versions"): v2 when present, else v1 (computing
// snap's v1 checksum if it is not known yet, O(n)).
func (c Content) Matches(snap *cache.Snapshot) bool {
	if c.ChecksumV2 != "" {
		return c.ChecksumV2 == snap.ChecksumV2()
	}
	return c.Checksum == snap.Checksum()
}

// Same reports whether c and o announce the same content, comparing the newest checksum
// both carry; content with no checksum in common is not the same.
func (c Content) Same(o Content) bool {
	if c.ChecksumV2 != "" && o.ChecksumV2 != "" {
		return c.ChecksumV2 == o.ChecksumV2
	}
	return c.Checksum != "" && c.Checksum == o.Checksum
}

// String names the checksum Matches compares.
func (c Content) String() string {
	if c.ChecksumV2 != "" {
		return "checksum_v2 " + c.ChecksumV2
	}
	return "checksum " + c.Checksum
}

// pick returns c as the checksum that want compares, for messages.
func (c Content) pick(want Content) string {
	if want.ChecksumV2 != "" {
		return "checksum_v2 " + c.ChecksumV2
	}
	return "checksum " + c.Checksum
}
