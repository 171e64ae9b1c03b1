package protocol

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/nats-io/nats.go"

	"github.com/beamline/registry-syncer/cache"
)

// ErrNotFound reports that a stored message (a delta, a manifest) does not exist.
var ErrNotFound = errors.New("not found")

// ErrNoStream reports that the stream does not exist (no syncer ever ran here) or that
// JetStream does not answer.
var ErrNoStream = errors.New("registry stream not available")

// Reader fetches stored deltas and snapshots with JetStream direct gets
// ($JS.API.DIRECT.GET.<stream>), which are answered by the stream itself and create no
// consumer, whatever the number of readers.
type Reader struct {
	NC    *nats.Conn
	Names Names
	// Trust, when set, is what stored deltas and manifests must be signed by (§10); nil
	// verifies no signature (the syncer reading its own streams).
	Trust *Trust
}

// Stored is one message read back from a stream.
type Stored struct {
	Subject  string
	Sequence uint64
	Header   nats.Header
	Data     []byte
}

func (r *Reader) directGet(ctx context.Context, stream string, req any) (*Stored, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	msg, err := r.NC.RequestWithContext(ctx, "$JS.API.DIRECT.GET."+stream, body)
	if err != nil {
		if errors.Is(err, nats.ErrNoResponders) {
			return nil, fmt.Errorf("%w: stream %s: no responders", ErrNoStream, stream)
		}
		return nil, fmt.Errorf("direct get from %s: %w", stream, err)
	}
	if st := msg.Header.Get("Status"); st != "" {
		if st == "404" {
			return nil, ErrNotFound
		}
		return nil, fmt.Errorf("direct get from %s: status %s %s", stream, st, msg.Header.Get("Description"))
	}
	seq, err := strconv.ParseUint(msg.Header.Get("Nats-Sequence"), 10, 64)
	if err != nil {
		return nil, fmt.Errorf("direct get from %s: reply without Nats-Sequence", stream)
	}
	return &Stored{Subject: msg.Header.Get("Nats-Subject"), Sequence: seq, Header: msg.Header, Data: msg.Data}, nil
}

// Last reads the last message stored on subject.
func (r *Reader) Last(ctx context.Context, stream, subject string) (*Stored, error) {
	return r.directGet(ctx, stream, map[string]string{"last_by_subj": subject})
}

// BySeq reads the message at sequence seq.
func (r *Reader) BySeq(ctx context.Context, stream string, seq uint64) (*Stored, error) {
	return r.directGet(ctx, stream, map[string]uint64{"seq": seq})
}

// Next reads the first message stored on subject at or after sequence from.
func (r *Reader) Next(ctx context.Context, stream, subject string, from uint64) (*Stored, error) {
	return r.directGet(ctx, stream, struct {
		Seq  uint64 `json:"seq"`
		Next string `json:"next_by_subj"`
	}{from, subject})
}

// Delta reads the stored delta of revision rev (ErrNotFound when the stream lacks it).
func (r *Reader) Delta(ctx context.Context, rev int64) (*Delta, error) {
	st, err := r.Last(ctx, r.Names.DeltaStream, r.Names.DeltaSubject(rev))
	if err != nil {
		return nil, err
	}
	if err := r.Trust.Verify(KindDelta, st.Header, st.Data); err != nil {
		return nil, fmt.Errorf("stored delta %d: %w", rev, err)
	}
	d, err := r.Names.DeltaFromStored(st)
	if err != nil {
		return nil, fmt.Errorf("stored delta %d: %w", rev, err)
	}
	return d, nil
}

// DeltaFromStored decodes a delta read back from the delta stream (by Reader.Delta, or
// the newest one with Reader.Last on DeltaSubjects) and checks it as PROTOCOL.md §3.6
// says: the payload's revision is the one its subject names, and a Registry-Revision
// header, when present, agrees with it.
func (n Names) DeltaFromStored(st *Stored) (*Delta, error) {
	d, err := DecodeDelta(st.Data)
	if err != nil {
		return nil, err
	}
	if st.Subject != n.DeltaSubject(d.Revision) {
		return nil, invalid("stored delta on %s carries revision %d", st.Subject, d.Revision)
	}
	if h := st.Header.Get(HeaderRevision); h != "" && h != strconv.FormatInt(d.Revision, 10) {
		return nil, invalid("stored delta %d: header %s is %q", d.Revision, HeaderRevision, h)
	}
	return d, nil
}

// Manifest reads the latest snapshot manifest (ErrNotFound when none was written yet).
func (r *Reader) Manifest(ctx context.Context) (*Manifest, error) {
	st, err := r.Last(ctx, r.Names.SnapshotStream, r.Names.Manifest())
	if err != nil {
		return nil, err
	}
	if err := r.Trust.Verify(KindManifest, st.Header, st.Data); err != nil {
		return nil, err
	}
	var m Manifest
	if err := json.Unmarshal(st.Data, &m); err != nil {
		return nil, invalid("decode manifest: %v", err)
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

// Key reads the public key record (ErrNotFound when the syncer never wrote one) and
// returns the trust it establishes.
func (r *Reader) Key(ctx context.Context) (*Trust, error) {
	st, err := r.Last(ctx, r.Names.SnapshotStream, r.Names.KeySubject())
	if err != nil {
		return nil, err
	}
	return DecodeKeyRecord(st.Header, st.Data)
}

// ErrSnapshotMoved reports that a chunk of the manifest's snapshot was replaced while it
// was being read (a newer snapshot was written and the old one purged): read again.
var ErrSnapshotMoved = errors.New("snapshot replaced while reading; retry")

// Snapshot reads the manifest and its chunks and decodes the snapshot, verifying sizes
// and the checksum. Chunks are read one by one, so a snapshot of any size works with any
// max_payload.
func (r *Reader) Snapshot(ctx context.Context) (*cache.Snapshot, *Manifest, error) {
	m, err := r.Manifest(ctx)
	if err != nil {
		return nil, nil, err
	}
	buf := bytes.NewBuffer(make([]byte, 0, min(m.Size, 64<<20)))
	want := r.Names.ChunkSubject(m.Revision)
	for i, seq := range m.Sequences {
		st, err := r.BySeq(ctx, r.Names.SnapshotStream, seq)
		if errors.Is(err, ErrNotFound) {
			return nil, nil, ErrSnapshotMoved
		}
		if err != nil {
			return nil, nil, err
		}
		if st.Subject != want {
			return nil, nil, ErrSnapshotMoved
		}
		if h := st.Header.Get(HeaderChunk); h != fmt.Sprintf("%d/%d", i, len(m.Sequences)) {
			return nil, nil, invalid("snapshot %d chunk %d: header %s is %q", m.Revision, i, HeaderChunk, h)
		}
		buf.Write(st.Data)
		if buf.Len() > m.Size {
			return nil, nil, invalid("snapshot %d: chunks exceed the manifest's %d bytes", m.Revision, m.Size)
		}
	}
	if buf.Len() != m.Size {
		return nil, nil, invalid("snapshot %d: %d bytes read, manifest says %d", m.Revision, buf.Len(), m.Size)
	}
	// Checksum v2 is not collision resistant: it authenticates the chunks only together
	// with the manifest's digest of the document (PROTOCOL.md §4 "Why a sum").
	v2 := m.ChecksumV2 != "" && m.SHA256 != ""
	if v2 {
		if sum := sha256.Sum256(buf.Bytes()); hex.EncodeToString(sum[:]) != m.SHA256 {
			return nil, nil, invalid("snapshot %d: the document's SHA-256 is %x, its manifest says %s", m.Revision, sum, m.SHA256)
		}
	}
	snap, err := cache.Decode(buf.Bytes())
	if err != nil {
		return nil, nil, fmt.Errorf("%w: snapshot %d: %w", ErrInvalid, m.Revision, err)
	}
	claim := Content{Checksum: m.Checksum}
	if v2 {
		claim.ChecksumV2 = m.ChecksumV2
	}
	if snap.Revision() != m.Revision || !claim.Matches(snap) || snap.Len() != m.Count || snap.Source() != m.Source {
		return nil, nil, invalid("snapshot document (revision %d, %s, count %d, source %s) does not match its manifest (revision %d, %s, count %d, source %s)",
			snap.Revision(), ContentOf(snap).pick(claim), snap.Len(), snap.Source(), m.Revision, claim, m.Count, m.Source)
	}
	return snap, m, nil
}
