// Package publisher owns writing the registry to NATS JetStream: creating the streams,
// storing exactly one delta per revision (and announcing it on the live subject), the
// chunked durable snapshot, and the heartbeat.
package publisher

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/beamline/registry-syncer/cache"
	"github.com/beamline/registry-syncer/protocol"
)

// Defaults of the snapshot retention (Config.SnapshotGrace, Config.SnapshotRetainBytes).
const (
	DefaultSnapshotGrace             = 30 * time.Second
	DefaultSnapshotRetainBytes int64 = 256 << 20
)

// Config tunes the streams. Zero values take the documented defaults.
type Config struct {
	// Prefix of every subject (default protocol.DefaultPrefix).
	Prefix string
	// Replicas of both streams (default 1; 3 on a NATS cluster).
	Replicas int
	// DeltaMaxAge bounds how long deltas are kept (default 7 days). Routers that fall
	// further behind re-bootstrap from the snapshot.
	DeltaMaxAge time.Duration
	// DeltaMaxMsgs bounds the number of stored deltas (default 1,000,000).
	DeltaMaxMsgs int64
	// DeltaMaxBytes bounds the delta stream's size (default -1: unlimited).
	DeltaMaxBytes int64
	// SnapshotMaxBytes bounds the snapshot stream's size (default -1: unlimited).
	SnapshotMaxBytes int64
	// SnapshotGrace is how long a replaced snapshot stays readable (default 30s): a
	// router that read its manifest has at least this long to read its chunks
	// (PROTOCOL.md §7). The current snapshot and the one before it are always kept.
	SnapshotGrace time.Duration
	// SnapshotRetainBytes bounds the bytes of the snapshots kept (default 256 MiB): the
	// current one, the previous one, and those replaced less than SnapshotGrace ago.
	// SnapshotWait defers a new snapshot while it would not fit; a snapshot written
	// anyway (forced) purges the oldest replaced ones beyond the bound.
	SnapshotRetainBytes int64
	// Clock is the time used to date manifests and measure the grace (nil: time.Now);
	// tests set it.
	Clock func() time.Time
	// DuplicateWindow is JetStream's Nats-Msg-Id window (default 2 minutes). Duplicates
	// older than the window are still refused: each revision has its own subject and is
	// published with an expected last-subject sequence of 0.
	DuplicateWindow time.Duration
	// ChunkSize is the snapshot chunk size (default: the server's max_payload minus 8 KiB
	// for headers).
	ChunkSize int
	// Timeout of one JetStream request (default 5s).
	Timeout time.Duration
	// Signer signs every delta (stored and live), manifest and heartbeat, and its public
	// key is stored as the key record (PROTOCOL.md §9). Routers refuse what is unsigned:
	// nil publishes unsigned messages, for tests of exactly that (see also WithSigner).
	Signer *protocol.Signer
}

// WithDefaults returns cfg with every zero field set to its default.
func (c Config) WithDefaults() Config {
	c.Prefix = cmp.Or(c.Prefix, protocol.DefaultPrefix)
	c.Replicas = cmp.Or(c.Replicas, 1)
	c.DeltaMaxAge = cmp.Or(c.DeltaMaxAge, 7*24*time.Hour)
	c.DeltaMaxMsgs = cmp.Or(c.DeltaMaxMsgs, 1_000_000)
	c.DeltaMaxBytes = cmp.Or(c.DeltaMaxBytes, -1)
	c.SnapshotMaxBytes = cmp.Or(c.SnapshotMaxBytes, -1)
	c.SnapshotGrace = cmp.Or(c.SnapshotGrace, DefaultSnapshotGrace)
	c.SnapshotRetainBytes = cmp.Or(c.SnapshotRetainBytes, DefaultSnapshotRetainBytes)
	if c.Clock == nil {
		c.Clock = time.Now
	}
	c.DuplicateWindow = cmp.Or(c.DuplicateWindow, 2*time.Minute)
	c.Timeout = cmp.Or(c.Timeout, 5*time.Second)
	return c
}

func (c Config) validate() error {
	var errs []error
	if c.Replicas < 1 || c.Replicas > 5 {
		errs = append(errs, fmt.Errorf("publisher: Replicas must be 1..5 (got %d)", c.Replicas))
	}
	if c.DeltaMaxAge < time.Minute {
		errs = append(errs, fmt.Errorf("publisher: DeltaMaxAge must be at least 1m (got %s)", c.DeltaMaxAge))
	}
	if c.DeltaMaxMsgs < 1000 {
		errs = append(errs, fmt.Errorf("publisher: DeltaMaxMsgs must be at least 1000 (got %d)", c.DeltaMaxMsgs))
	}
	if c.DuplicateWindow < time.Second {
		errs = append(errs, fmt.Errorf("publisher: DuplicateWindow must be at least 1s (got %s)", c.DuplicateWindow))
	}
	if c.SnapshotGrace < 0 {
		errs = append(errs, fmt.Errorf("publisher: SnapshotGrace must not be negative (got %s)", c.SnapshotGrace))
	}
	if c.SnapshotRetainBytes < 1 {
		errs = append(errs, fmt.Errorf("publisher: SnapshotRetainBytes must be positive (got %d)", c.SnapshotRetainBytes))
	}
	if c.SnapshotMaxBytes > 0 && c.SnapshotRetainBytes > c.SnapshotMaxBytes {
		errs = append(errs, fmt.Errorf("publisher: SnapshotRetainBytes (%d) must not exceed the snapshot stream's SnapshotMaxBytes (%d): the stream would drop snapshots still within their grace", c.SnapshotRetainBytes, c.SnapshotMaxBytes))
	}
	if c.ChunkSize < 0 {
		errs = append(errs, fmt.Errorf("publisher: ChunkSize must not be negative (got %d)", c.ChunkSize))
	}
	return errors.Join(errs...)
}

// Publisher writes to one NATS connection. It is safe for concurrent use, but the caller
// keeps deltas in revision order (one goroutine publishes deltas).
type Publisher struct {
	nc    *nats.Conn
	js    jetstream.JetStream
	cfg   Config
	names protocol.Names
	read  *protocol.Reader
	// fence, when set, is asked immediately before every write; its error stops the write.
	fence func() error
	// quiet stores deltas without announcing them on the live subject.
	quiet bool
}

// Quiet returns a publisher on the same connection whose StoreDelta stores without
// announcing on the live subject: for repairs of old deltas that routers read from the
// stream when they need them (announcing them would wake every router for nothing).
func (p *Publisher) Quiet() *Publisher {
	q := *p
	q.quiet = true
	return &q
}

// WithSigner returns a publisher on the same connection that signs with signer.
func (p *Publisher) WithSigner(signer *protocol.Signer) *Publisher {
	q := *p
	q.cfg.Signer = signer
	return &q
}

// Signer returns the signer in use (nil: messages go out unsigned).
func (p *Publisher) Signer() *protocol.Signer { return p.cfg.Signer }

func (p *Publisher) sign(kind string, m *nats.Msg) error {
	if p.cfg.Signer == nil {
		return nil
	}
	return p.cfg.Signer.Sign(kind, m)
}

// signedDeltas are d's stored and live messages, with one signature.
func (p *Publisher) signedDeltas(d *protocol.Delta, data []byte) (stored, live *nats.Msg, err error) {
	stored, live = d.Msg(p.names.DeltaSubject(d.Revision), data), d.Msg(p.names.Live(), data)
	if sg := p.cfg.Signer; sg != nil {
		sig, err := sg.Signature(protocol.KindDelta, data)
		if err != nil {
			return nil, nil, fmt.Errorf("delta %d: %w", d.Revision, err)
		}
		sg.SetSignature(stored, sig)
		sg.SetSignature(live, sig)
	}
	return stored, live, nil
}

// EnsureKey stores the signer's public key record unless the stream's newest one already
// names it, and then drops older records. Without a signer it does nothing.
func (p *Publisher) EnsureKey(ctx context.Context) error {
	sg := p.cfg.Signer
	if sg == nil {
		return nil
	}
	subject := p.names.KeySubject()
	st, err := p.read.Last(ctx, p.names.SnapshotStream, subject)
	if err == nil && st.Header.Get(protocol.HeaderKey) == sg.PublicKey() {
		if _, err := protocol.DecodeKeyRecord(st.Header, st.Data); err == nil {
			return nil
		}
	}
	if err != nil && !errors.Is(err, protocol.ErrNotFound) {
		return fmt.Errorf("read the key record: %w", err)
	}
	m, err := sg.KeyMsg(subject)
	if err != nil {
		return err
	}
	if err := p.fenced("store the key record"); err != nil {
		return err
	}
	if _, err := p.js.PublishMsg(ctx, m); err != nil {
		return fmt.Errorf("store the key record: %w", err)
	}
	s, err := p.js.Stream(ctx, p.names.SnapshotStream)
	if err == nil {
		err = s.Purge(ctx, jetstream.WithPurgeSubject(subject), jetstream.WithPurgeKeep(1))
	}
	if err != nil {
		return fmt.Errorf("purge old key records: %w", err)
	}
	return nil
}

// WithFence returns a publisher on the same connection that asks fence before every write
// (stream changes, deltas, announcements, snapshot chunks, manifests, purges, heartbeats)
// and makes none once fence returns an error: a deposed leader writes nothing.
func (p *Publisher) WithFence(fence func() error) *Publisher {
	q := *p
	q.fence = fence
	return &q
}

func (p *Publisher) fenced(what string) error {
	if p.fence == nil {
		return nil
	}
	if err := p.fence(); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// ErrTooLarge reports a delta that does not fit in one message; the caller writes the
// snapshot and publishes a resync delta instead.
var ErrTooLarge = errors.New("delta larger than the server's max_payload")

// ErrUnsupportedServer is wrapped by the error CheckServer and EnsureStreams return for a
// nats-server older than MinServerVersion. It is not worth retrying.
var ErrUnsupportedServer = protocol.ErrUnsupportedServer

// ErrNoJetStream is wrapped by the error CheckServer and EnsureStreams return for a server
// (or account) without JetStream. It is not worth retrying.
var ErrNoJetStream = protocol.ErrNoJetStream

// MinServerVersion is the oldest nats-server release supported.
const MinServerVersion = protocol.MinServerVersion

// CheckServer verifies that the server nc is connected to is nats-server
// MinServerVersion or newer (else an error wrapping ErrUnsupportedServer naming both
// versions) with JetStream enabled (else an error wrapping ErrNoJetStream). Any other
// error (a timeout, a JetStream cluster electing its leader) may pass on a retry.
func CheckServer(ctx context.Context, nc *nats.Conn) error { return protocol.CheckServer(ctx, nc) }

// New validates cfg and prepares a publisher on nc. Call EnsureStreams before publishing.
func New(nc *nats.Conn, cfg Config) (*Publisher, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	names, err := protocol.NewNames(cfg.Prefix)
	if err != nil {
		return nil, err
	}
	// An asynchronous store (snapshot chunks, BeginDelta) that gets no acknowledgement
	// within Timeout fails rather than stay pending for good: pending stores are bounded
	// (jetstream's default of 4,000), and lost ones would stall every later one.
	js, err := jetstream.New(nc, jetstream.WithDefaultTimeout(cfg.Timeout), jetstream.WithPublishAsyncTimeout(cfg.Timeout))
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	return &Publisher{nc: nc, js: js, cfg: cfg, names: names, read: &protocol.Reader{NC: nc, Names: names}}, nil
}

// Names returns the subject and stream names in use.
func (p *Publisher) Names() protocol.Names { return p.names }

// Reader returns a direct-get reader on the same connection.
func (p *Publisher) Reader() *protocol.Reader { return p.read }

// EnsureStreams checks the server (CheckServer: its errors wrapping ErrUnsupportedServer
// or ErrNoJetStream are final) and creates the delta and snapshot streams, or updates
// their limits.
func (p *Publisher) EnsureStreams(ctx context.Context) error {
	if err := p.fenced("create streams"); err != nil {
		return err
	}
	if err := CheckServer(ctx, p.nc); err != nil {
		return err
	}
	deltas := jetstream.StreamConfig{
		Name:        p.names.DeltaStream,
		Description: "Beamline extension registry: one delta per revision",
		Subjects:    []string{p.names.DeltaSubjects()},
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardOld,
		MaxAge:      p.cfg.DeltaMaxAge,
		MaxMsgs:     p.cfg.DeltaMaxMsgs,
		MaxBytes:    p.cfg.DeltaMaxBytes,
		Storage:     jetstream.FileStorage,
		Replicas:    p.cfg.Replicas,
		Duplicates:  p.cfg.DuplicateWindow,
		AllowDirect: true,
	}
	snaps := jetstream.StreamConfig{
		Name:        p.names.SnapshotStream,
		Description: "Beamline extension registry: the latest snapshot (manifest and chunks)",
		Subjects:    []string{p.names.SnapshotSubjects()},
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardOld,
		MaxBytes:    p.cfg.SnapshotMaxBytes,
		Storage:     jetstream.FileStorage,
		Replicas:    p.cfg.Replicas,
		AllowDirect: true,
	}
	for _, sc := range []jetstream.StreamConfig{deltas, snaps} {
		if err := p.checkStream(ctx, sc.Name, sc.Subjects[0]); err != nil {
			return err
		}
		if _, err := p.js.CreateOrUpdateStream(ctx, sc); err != nil {
			var apiErr *jetstream.APIError
			if errors.As(err, &apiErr) && apiErr.ErrorCode == errCodeSubjectOverlap {
				// Created between the check and now: check again for the names.
				if cerr := p.checkStream(ctx, sc.Name, sc.Subjects[0]); cerr != nil {
					return cerr
				}
			}
			return fmt.Errorf("create stream %s: %w", sc.Name, err)
		}
	}
	if err := p.repairSnapshot(ctx); err != nil {
		return fmt.Errorf("check the stored snapshot: %w", err)
	}
	return p.EnsureKey(ctx)
}

// repairSnapshot deletes the stored manifest when the chunks it names are gone: a syncer
// before the literal-subject purge (purgeSnapshots) deleted them on nats-server 2.9 to
// 2.11, leaving a snapshot no one can read, which readers (and a syncer restoring from
// the streams) retried forever. Without it the stream holds deltas but no snapshot,
// which the syncer repairs with a full sync and routers bootstrap from once written.
// Only that manifest message (by sequence) is deleted: one written since survives. The
// manifests of older snapshots kept for their grace (purgeSnapshots) are checked in
// turn: the newest manifest whose chunks are all there is the snapshot readers get
// (except on nats-server 2.9, which answers last_by_subj with 404 once a subject's last
// message is deleted, until the next snapshot is written).
func (p *Publisher) repairSnapshot(ctx context.Context) error {
	ms, err := p.storedManifests(ctx)
	if err != nil {
		return err
	}
	s, err := p.js.Stream(ctx, p.names.SnapshotStream)
	if err != nil {
		return err
	}
	for i := len(ms) - 1; i >= 0; i-- {
		m := ms[i].m
		if m == nil {
			return nil // not ours to judge: readers reject it as invalid
		}
		subject := p.names.ChunkSubject(m.Revision)
		info, err := s.Info(ctx, jetstream.WithSubjectFilter(subject))
		if err != nil {
			return err
		}
		if info.State.Subjects[subject] >= uint64(len(m.Sequences)) {
			return nil
		}
		if err := s.DeleteMsg(ctx, ms[i].seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
			return fmt.Errorf("delete the manifest of snapshot %d, whose chunks are gone: %w", m.Revision, err)
		}
	}
	return nil
}

// ErrStreamInUse reports that a stream this publisher needs belongs to another subject
// prefix (a syncer of an earlier version whose stream names collided, or a stream made
// by hand), or that another stream already serves some of its subjects (prefixes nested
// in one another, such as acme and acme.delta). The publisher refuses rather than take
// the stream over: changing its subjects would stall the other publisher for good.
var ErrStreamInUse = errors.New("stream in use by another subject prefix")

// errCodeSubjectOverlap is nats-server's JSStreamSubjectOverlapErr ("subjects overlap
// with an existing stream"); nats.go has no constant for it.
const errCodeSubjectOverlap jetstream.ErrorCode = 10065

// CheckStreams reads, without changing anything, whether the delta and snapshot streams
// can be this publisher's: an error wrapping ErrStreamInUse names the other prefix. Other
// errors (NATS down) are returned as they are.
func (p *Publisher) CheckStreams(ctx context.Context) error {
	if err := p.checkStream(ctx, p.names.DeltaStream, p.names.DeltaSubjects()); err != nil {
		return err
	}
	return p.checkStream(ctx, p.names.SnapshotStream, p.names.SnapshotSubjects())
}

// checkStream refuses an existing stream named name that serves other subjects than
// subject, and other streams that serve subjects matching subject.
func (p *Publisher) checkStream(ctx context.Context, name, subject string) error {
	s, err := p.js.Stream(ctx, name)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
	case err != nil:
		return fmt.Errorf("read stream %s: %w", name, err)
	default:
		if have := s.CachedInfo().Config.Subjects; !slices.Equal(have, []string{subject}) {
			return fmt.Errorf("%w: stream %s serves %s (subject prefix %s), not %s (subject prefix %q): give one of the two syncers another EXTENSION_REGISTRY_SUBJECT_PREFIX, or delete the stream if nothing uses it any more",
				ErrStreamInUse, name, strings.Join(have, ", "), ownerPrefixes(have), subject, p.names.Prefix)
		}
	}
	var others []string
	l := p.js.StreamNames(ctx, jetstream.WithStreamListSubject(subject))
	for other := range l.Name() {
		if other == name {
			continue
		}
		desc := other
		if st, err := p.js.Stream(ctx, other); err == nil {
			subs := st.CachedInfo().Config.Subjects
			desc = fmt.Sprintf("%s (subjects %s, subject prefix %s)", other, strings.Join(subs, ", "), ownerPrefixes(subs))
		}
		others = append(others, desc)
	}
	if err := l.Err(); err != nil {
		return fmt.Errorf("list streams serving %s: %w", subject, err)
	}
	if len(others) > 0 {
		return fmt.Errorf("%w: stream %s of subject prefix %q would serve %s, which overlaps stream %s: use subject prefixes that are not nested in one another",
			ErrStreamInUse, name, p.names.Prefix, subject, strings.Join(others, "; "))
	}
	return nil
}

// ownerPrefixes guesses the subject prefix that made a stream with these subjects.
func ownerPrefixes(subjects []string) string {
	var out []string
	for _, s := range subjects {
		for _, suffix := range []string{".delta.>", ".snapshot.>"} {
			if p, ok := strings.CutSuffix(s, suffix); ok {
				out = append(out, strconv.Quote(p))
				s = ""
				break
			}
		}
		if s != "" {
			out = append(out, "unknown")
		}
	}
	if len(out) == 0 {
		return "unknown"
	}
	return strings.Join(slices.Compact(out), ", ")
}

// MaxDelta is the largest delta payload PublishDelta accepts on this connection.
func (p *Publisher) MaxDelta() int { return p.maxMessage() }

func (p *Publisher) maxMessage() int {
	mp := int(p.nc.MaxPayload())
	if mp <= 0 { // not connected yet: the server default
		mp = 1 << 20
	}
	return mp - 8*1024
}

// EncodeDelta returns the message payload of d.
func EncodeDelta(d *protocol.Delta) ([]byte, error) {
	if d.Changes == nil {
		d.Changes = []cache.Change{}
	}
	return json.Marshal(d)
}

// PublishDelta stores the delta of d.Revision (exactly once: a revision already stored is
// not stored again) and then announces it on the live subject. It returns ErrTooLarge when
// the payload does not fit in one message.
func (p *Publisher) PublishDelta(ctx context.Context, d *protocol.Delta, data []byte) error {
	_, err := p.StoreDelta(ctx, d, data)
	return err
}

// StoreDelta is PublishDelta, and returns the stream sequence at which the delta was
// stored by this call (0 when the stream already held it). It is BeginDelta followed by
// Finish: one delta in flight.
func (p *Publisher) StoreDelta(ctx context.Context, d *protocol.Delta, data []byte) (uint64, error) {
	w, err := p.BeginDelta(d, data)
	if err != nil {
		return 0, err
	}
	return w.Finish(ctx)
}

// DeltaWrite is a delta whose store was sent (BeginDelta) and whose acknowledgement and
// announcement are still to come (Finish).
type DeltaWrite struct {
	p      *Publisher
	d      *protocol.Delta
	data   []byte
	stored *nats.Msg
	live   *nats.Msg
	fut    jetstream.PubAckFuture
	// The stream's answer, once Acked or ack took it.
	answered bool
	pa       *jetstream.PubAck
	perr     error
}

// Acked reports, without waiting, whether the stream has answered the store (acknowledged
// or refused it): Finish then does not wait for it.
func (w *DeltaWrite) Acked() bool {
	if !w.answered {
		select {
		case w.pa = <-w.fut.Ok():
			w.answered = true
		case w.perr = <-w.fut.Err():
			w.answered = true
		default:
		}
	}
	return w.answered
}

// Delta returns the delta being written.
func (w *DeltaWrite) Delta() *protocol.Delta { return w.d }

// BeginDelta sends the store of d (fenced, signed, with its Nats-Msg-Id and an expected
// last-subject sequence of 0) without waiting for the stream's acknowledgement: several
// deltas can be in flight at once. Finish waits for the acknowledgement and then
// announces the delta; the caller calls Finish in revision order, so that deltas are
// announced in revision order and each only once the stream acknowledged it. Stores sent
// on one connection reach the stream in the order they were sent. It returns ErrTooLarge
// when the payload does not fit in one message.
func (p *Publisher) BeginDelta(d *protocol.Delta, data []byte) (*DeltaWrite, error) {
	if len(data) > p.maxMessage() {
		return nil, fmt.Errorf("%w: delta %d is %d bytes", ErrTooLarge, d.Revision, len(data))
	}
	if err := p.fenced(fmt.Sprintf("publish delta %d", d.Revision)); err != nil {
		return nil, err
	}
	stored, live, err := p.signedDeltas(d, data)
	if err != nil {
		return nil, err
	}
	fut, err := p.js.PublishMsgAsync(stored,
		jetstream.WithMsgID(p.names.MsgID(d.Revision)),
		jetstream.WithExpectLastSequencePerSubject(0))
	if err != nil {
		return nil, fmt.Errorf("publish delta %d: %w", d.Revision, err)
	}
	return &DeltaWrite{p: p, d: d, data: data, stored: stored, live: live, fut: fut}, nil
}

// ack waits for the acknowledgement of the store BeginDelta sent (at most the publisher's
// Timeout).
func (w *DeltaWrite) ack(ctx context.Context) (*jetstream.PubAck, error) {
	if w.Acked() {
		return w.pa, w.perr
	}
	t := time.NewTimer(w.p.cfg.Timeout)
	defer t.Stop()
	select {
	case a := <-w.fut.Ok():
		return a, nil
	case err := <-w.fut.Err():
		return nil, err
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-t.C:
		return nil, jetstream.ErrAsyncPublishTimeout
	}
}

// Finish waits for the stream's acknowledgement of the delta and then announces it on the
// live subject (unless the publisher is Quiet). It returns the stream sequence at which
// the delta was stored (0 when the stream already held it: a retry whose acknowledgement
// was lost, accepted only if the stored delta is this one). An error leaves the delta
// unannounced; storing it again (StoreDelta) is safe.
func (w *DeltaWrite) Finish(ctx context.Context) (uint64, error) {
	p, d, stored := w.p, w.d, w.stored
	ack, err := w.ack(ctx)
	if err == nil && ack.Duplicate {
		// The stream remembers this Nats-Msg-Id (its duplicate window) and stored nothing.
		// That is a retry whose ack was lost only if the delta is really there: a delta
		// deleted or lost since then (what checkStream republishes) is remembered by the
		// window all the same. Then store it without the id: the expected last-subject
		// sequence 0 still stores it at most once.
		if _, rerr := p.read.Delta(ctx, d.Revision); errors.Is(rerr, protocol.ErrNotFound) {
			if err := p.fenced(fmt.Sprintf("publish delta %d", d.Revision)); err != nil {
				return 0, err
			}
			m := nats.NewMsg(stored.Subject)
			m.Data = stored.Data
			for k, v := range stored.Header {
				if k != jetstream.MsgIDHeader && k != jetstream.ExpectedLastSubjSeqHeader {
					m.Header[k] = v
				}
			}
			ack, err = p.js.PublishMsg(ctx, m, jetstream.WithExpectLastSequencePerSubject(0))
		}
	}
	var seq uint64
	if err != nil || ack.Duplicate {
		var apiErr *jetstream.APIError
		if err != nil && (!errors.As(err, &apiErr) || (apiErr.ErrorCode != jetstream.JSErrCodeStreamWrongLastSequence && apiErr.ErrorCode != jetstream.JSErrCodeStreamWrongLastSequenceConstant)) {
			return 0, fmt.Errorf("publish delta %d: %w", d.Revision, err)
		}
		// Already stored (a retry whose ack was lost, or another syncer): accept it only if
		// it is the same revision content.
		stored, rerr := p.read.Delta(ctx, d.Revision)
		if rerr != nil {
			return 0, fmt.Errorf("publish delta %d: already stored, and reading it back failed: %w", d.Revision, rerr)
		}
		if stored.Checksum != d.Checksum || stored.PrevRevision != d.PrevRevision {
			return 0, fmt.Errorf("publish delta %d: the stream already holds a different delta for this revision (prev %d checksum %s, ours prev %d checksum %s)",
				d.Revision, stored.PrevRevision, stored.Checksum, d.PrevRevision, d.Checksum)
		}
	} else {
		seq = ack.Sequence
	}
	if p.quiet {
		return seq, nil
	}
	if err := p.fenced(fmt.Sprintf("announce delta %d", d.Revision)); err != nil {
		return seq, err
	}
	if err := p.nc.PublishMsg(w.live); err != nil {
		return seq, fmt.Errorf("announce delta %d: %w", d.Revision, err)
	}
	return seq, nil
}

// Heartbeat publishes hb on the heartbeat subject (core NATS, not stored).
func (p *Publisher) Heartbeat(hb *protocol.Heartbeat) error {
	data, err := json.Marshal(hb)
	if err != nil {
		return err
	}
	m := nats.NewMsg(p.names.Heartbeat())
	m.Data = data
	if err := p.sign(protocol.KindHeartbeat, m); err != nil {
		return err
	}
	if err := p.fenced("heartbeat"); err != nil {
		return err
	}
	return p.nc.PublishMsg(m)
}

// LastDelta returns the newest stored delta, or nil when the stream holds none.
func (p *Publisher) LastDelta(ctx context.Context) (*protocol.Delta, error) {
	s, err := p.js.Stream(ctx, p.names.DeltaStream)
	if err != nil {
		return nil, fmt.Errorf("delta stream: %w", err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("delta stream info: %w", err)
	}
	if info.State.Msgs == 0 {
		return nil, nil
	}
	// The newest message on any delta subject, not the message at State.LastSeq: the
	// stream keeps LastSeq when its last messages are deleted or lost, and a direct get of
	// that sequence then finds nothing.
	st, err := p.read.Last(ctx, p.names.DeltaStream, p.names.DeltaSubjects())
	if errors.Is(err, protocol.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read last delta: %w", err)
	}
	d, err := protocol.DecodeDelta(st.Data)
	if err != nil {
		return nil, fmt.Errorf("last stored delta (seq %d): %w", st.Sequence, err)
	}
	return d, nil
}

// WriteSnapshot stores snap as chunks followed by its manifest, then purges the snapshots
// no router may still be reading: it keeps the previous one and those replaced less than
// Config.SnapshotGrace ago, within Config.SnapshotRetainBytes (see SnapshotWait). Unless
// force is set, writing the revision of the stored manifest is a no-op, and an older
// revision than the stored one is never written.
func (p *Publisher) WriteSnapshot(ctx context.Context, snap *cache.Snapshot, force bool) (*protocol.Manifest, error) {
	return p.WriteSnapshotFrom(ctx, snap, force, Origin{})
}

// Origin identifies a snapshot's revision in the registry database it came from.
type Origin struct {
	RegistryID  string
	CommittedAt time.Time // zero: unknown (revision 0, or the fixtures source)
}

// WriteSnapshotFrom is WriteSnapshot with the revision's origin recorded in the manifest.
func (p *Publisher) WriteSnapshotFrom(ctx context.Context, snap *cache.Snapshot, force bool, origin Origin) (*protocol.Manifest, error) {
	prev, err := p.read.Manifest(ctx)
	if err != nil && !errors.Is(err, protocol.ErrNotFound) {
		return nil, fmt.Errorf("read current manifest: %w", err)
	}
	if !force && prev != nil && (prev.Revision > snap.Revision() || (prev.Revision == snap.Revision() && prev.Content().Matches(snap))) {
		return prev, nil
	}
	doc, err := snap.Encode()
	if err != nil {
		return nil, fmt.Errorf("encode snapshot %d: %w", snap.Revision(), err)
	}
	if err := p.fenced(fmt.Sprintf("write snapshot %d", snap.Revision())); err != nil {
		return nil, err
	}
	chunk := p.cfg.ChunkSize
	if chunk == 0 || chunk > p.maxMessage() {
		chunk = p.maxMessage()
	}
	n := (len(doc) + chunk - 1) / chunk
	subject := p.names.ChunkSubject(snap.Revision())
	futures := make([]jetstream.PubAckFuture, 0, n)
	for i := 0; i < n; i++ {
		part := doc[i*chunk : min(len(doc), (i+1)*chunk)]
		m := nats.NewMsg(subject)
		m.Data = part
		m.Header.Set(protocol.HeaderChunk, strconv.Itoa(i)+"/"+strconv.Itoa(n))
		m.Header.Set(protocol.HeaderRevision, strconv.FormatInt(snap.Revision(), 10))
		f, err := p.js.PublishMsgAsync(m)
		if err != nil {
			return nil, fmt.Errorf("write snapshot %d chunk %d: %w", snap.Revision(), i, err)
		}
		futures = append(futures, f)
	}
	seqs := make([]uint64, n)
	for i, f := range futures {
		select {
		case ack := <-f.Ok():
			seqs[i] = ack.Sequence
		case err := <-f.Err():
			return nil, fmt.Errorf("write snapshot %d chunk %d: %w", snap.Revision(), i, err)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	digest := sha256.Sum256(doc)
	man := &protocol.Manifest{Revision: snap.Revision(), Checksum: snap.Checksum(), ChecksumV2: snap.ChecksumV2(),
		SHA256: hex.EncodeToString(digest[:]), Source: snap.Source(),
		Count: snap.Len(), Size: len(doc), Sequences: seqs, CreatedAt: p.cfg.Clock().UTC(), RegistryID: origin.RegistryID}
	if !origin.CommittedAt.IsZero() {
		at := origin.CommittedAt.UTC()
		man.CommittedAt = &at
	}
	data, err := json.Marshal(man)
	if err != nil {
		return nil, err
	}
	if err := p.fenced(fmt.Sprintf("write snapshot %d manifest", snap.Revision())); err != nil {
		return nil, err
	}
	mm := nats.NewMsg(p.names.Manifest())
	mm.Data = data
	mm.Header.Set(protocol.HeaderRevision, strconv.FormatInt(man.Revision, 10))
	mm.Header.Set(protocol.HeaderChecksum, man.Checksum)
	mm.Header.Set(protocol.HeaderChecksumV2, man.ChecksumV2)
	if err := p.sign(protocol.KindManifest, mm); err != nil {
		return nil, err
	}
	// The key record first: a stream with a size limit may have dropped it.
	if err := p.EnsureKey(ctx); err != nil {
		return nil, fmt.Errorf("write snapshot %d: %w", snap.Revision(), err)
	}
	ack, err := p.js.PublishMsg(ctx, mm)
	if err != nil {
		return nil, fmt.Errorf("write snapshot %d manifest: %w", snap.Revision(), err)
	}
	// Keep the snapshots a router may still be reading; purge older chunks and manifests.
	if err := p.fenced(fmt.Sprintf("purge snapshots before %d", snap.Revision())); err != nil {
		return man, err
	}
	if err := p.purgeSnapshots(ctx, man, ack.Sequence); err != nil {
		return man, fmt.Errorf("purge old snapshots after writing %d: %w", snap.Revision(), err)
	}
	return man, nil
}

// storedManifest is one message of the manifest subject.
type storedManifest struct {
	seq uint64
	m   *protocol.Manifest // nil: undecodable (never kept, nor anything older)
}

// maxStoredManifests bounds the manifests storedManifests reads: far more than
// purgeSnapshots keeps.
const maxStoredManifests = 10_000

// maxReplacedKept bounds the replaced snapshots kept within their grace, whatever their
// size, so that a write reads at most that many manifests: with the default interval (1 s)
// and grace (30 s) it never binds; with an interval below SnapshotGrace/40 the grace is 40
// intervals.
const maxReplacedKept = 40

// storedManifests reads every manifest the stream holds, oldest first, one direct get
// each (next_by_subj, answered by every supported server).
func (p *Publisher) storedManifests(ctx context.Context) ([]storedManifest, error) {
	var out []storedManifest
	for from := uint64(1); len(out) < maxStoredManifests; {
		st, err := p.read.Next(ctx, p.names.SnapshotStream, p.names.Manifest(), from)
		if errors.Is(err, protocol.ErrNotFound) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read the stored manifests: %w", err)
		}
		sm := storedManifest{seq: st.Sequence}
		var m protocol.Manifest
		if json.Unmarshal(st.Data, &m) == nil && m.Validate() == nil {
			sm.m = &m
		}
		out = append(out, sm)
		from = st.Sequence + 1
	}
	return nil, fmt.Errorf("read the stored manifests: more than %d on %s", maxStoredManifests, p.names.Manifest())
}

// oldestKept returns the index in ms (stored manifests, oldest first; the last is the
// current snapshot) of the oldest snapshot kept at now: the current one and the one
// before it always; an older one while it was replaced (its successor's manifest
// created) less than SnapshotGrace ago and, counting from the newest, the sizes fit in
// SnapshotRetainBytes and at most maxReplacedKept are replaced ones.
func (p *Publisher) oldestKept(ms []storedManifest, now time.Time) int {
	k, total := len(ms), int64(0)
	for i := len(ms) - 1; i >= 0; i-- {
		m := ms[i].m
		if m == nil {
			break
		}
		total += int64(m.Size)
		if i < len(ms)-2 && (now.Sub(ms[i+1].m.CreatedAt) >= p.cfg.SnapshotGrace || total > p.cfg.SnapshotRetainBytes || len(ms)-1-i > maxReplacedKept) {
			break
		}
		k = i
	}
	return k
}

// SnapshotWait reports how long to wait before writing the next snapshot so that every
// snapshot replaced less than Config.SnapshotGrace ago stays within
// Config.SnapshotRetainBytes, counting the new one as large as the current one (0: write
// now). This is what makes the snapshot interval adapt to the snapshot's size: at most
// RetainBytes/size snapshots are kept, so at most that many are written per grace period.
// A write is never deferred when only the current snapshot and the one before it would be
// kept.
func (p *Publisher) SnapshotWait(ctx context.Context) (time.Duration, error) {
	ms, err := p.storedManifests(ctx)
	if err != nil || len(ms) < 2 || ms[len(ms)-1].m == nil {
		return 0, err
	}
	now := p.cfg.Clock()
	cur := ms[len(ms)-1].m
	total := 2 * int64(cur.Size) // the new snapshot and the current one
	for i := len(ms) - 2; i >= 0 && ms[i].m != nil; i-- {
		expires := ms[i+1].m.CreatedAt.Add(p.cfg.SnapshotGrace)
		if !now.Before(expires) {
			break
		}
		if total += int64(ms[i].m.Size); total > p.cfg.SnapshotRetainBytes {
			return expires.Sub(now), nil // the older ones expire before it
		}
	}
	return 0, nil
}

// purgeSnapshots keeps the snapshot just written (cur, whose manifest is at sequence
// curSeq) and those oldestKept picks, and purges every other chunk and manifest.
//
// Every purge names one literal subject, found in the stream's subject listing: older
// servers (measured on 2.9.10, 2.10.29 and 2.11.12; fixed in 2.12.10 and 2.14.2) purge
// every matching message when a purge combines a wildcard subject with a sequence, the new
// snapshot's chunks included.
// Chunks of a revision above cur are left alone: another syncer may be writing them (the
// next snapshot written after them purges them).
func (p *Publisher) purgeSnapshots(ctx context.Context, cur *protocol.Manifest, curSeq uint64) error {
	ms, err := p.storedManifests(ctx)
	if err != nil {
		return err
	}
	s, err := p.js.Stream(ctx, p.names.SnapshotStream)
	if err != nil {
		return err
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(p.names.ChunkSubjects()))
	if err != nil {
		return err
	}
	oldest := p.oldestKept(ms, p.cfg.Clock())
	kept := []*protocol.Manifest{cur}
	for _, sm := range ms[oldest:] {
		if sm.seq != curSeq && sm.m != nil && len(sm.m.Sequences) > 0 {
			kept = append(kept, sm.m)
		}
	}
	// keep maps each kept chunk subject to its first sequence to keep and its chunk count
	// (forced rewrites of one revision share its subject).
	type span struct {
		from  uint64
		count uint64
	}
	keep := map[string]span{}
	for _, m := range kept {
		subj := p.names.ChunkSubject(m.Revision)
		k := keep[subj]
		if k.count == 0 || m.Sequences[0] < k.from {
			k.from = m.Sequences[0]
		}
		k.count += uint64(len(m.Sequences))
		keep[subj] = k
	}
	chunkPrefix := strings.TrimSuffix(p.names.ChunkSubjects(), ">")
	for subj, n := range info.State.Subjects {
		if k, ok := keep[subj]; ok {
			if n > k.count { // older chunks on a kept subject: a failed or replaced write
				if err := s.Purge(ctx, jetstream.WithPurgeSubject(subj), jetstream.WithPurgeSequence(k.from)); err != nil {
					return fmt.Errorf("%s: %w", subj, err)
				}
			}
			continue
		}
		if rev, err := strconv.ParseInt(strings.TrimPrefix(subj, chunkPrefix), 10, 64); err == nil && rev > cur.Revision {
			continue
		}
		if err := s.Purge(ctx, jetstream.WithPurgeSubject(subj)); err != nil {
			return fmt.Errorf("%s: %w", subj, err)
		}
	}
	switch {
	case oldest == 0 && len(ms) > 0: // every stored manifest is kept
		return nil
	case oldest >= len(ms): // none readable (the newest is not ours): keep the newest
		return s.Purge(ctx, jetstream.WithPurgeSubject(p.names.Manifest()), jetstream.WithPurgeKeep(1))
	}
	return s.Purge(ctx, jetstream.WithPurgeSubject(p.names.Manifest()), jetstream.WithPurgeSequence(ms[oldest].seq))
}
