package client

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/beamline/registry-syncer/cache"
	"github.com/beamline/registry-syncer/protocol"
	"github.com/beamline/registry-syncer/publisher"
	"github.com/beamline/registry-syncer/test/harness"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// source plays the syncer: it keeps the published state and writes deltas,
// snapshots and heartbeats with the real publisher.
type source struct {
	tb  testing.TB
	nc  *nats.Conn
	pub *publisher.Publisher
	js  jetstream.JetStream
	// signer signs what the source publishes (its key is stored as the key record).
	signer *protocol.Signer

	mu   sync.Mutex
	snap *cache.Snapshot
	// v1only makes the source a syncer that predates checksum v2: its deltas and
	// heartbeats carry the v1 checksum only.
	v1only bool
}

// newSource creates the streams and writes a snapshot of n synthetic
// extensions at revision 1.
func newSource(tb testing.TB, srv *harness.NATS, n int, prefix string) *source {
	tb.Helper()
	nc := srv.Connect(tb)
	signer, _, err := protocol.GenerateSigner()
	if err != nil {
		tb.Fatalf("signer: %v", err)
	}
	pub, err := publisher.New(nc, publisher.Config{Prefix: prefix, Signer: signer})
	if err != nil {
		tb.Fatalf("publisher: %v", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		tb.Fatalf("jetstream: %v", err)
	}
	if err := pub.EnsureStreams(context.Background()); err != nil {
		tb.Fatalf("ensure streams: %v", err)
	}
	snap, err := cache.New(1, protocol.SourceDatabase, cache.Synthetic(n))
	if err != nil {
		tb.Fatalf("snapshot: %v", err)
	}
	s := &source{tb: tb, nc: nc, pub: pub, js: js, snap: snap, signer: signer}
	s.writeSnapshot()
	return s
}

func (s *source) state() *cache.Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.snap
}

func (s *source) names() protocol.Names { return s.pub.Names() }

// next builds the delta of the next revision and makes it the state, without
// publishing it.
func (s *source) next(changes ...cache.Change) (*protocol.Delta, []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.nextAtLocked(s.snap.Revision()+1, changes)
}

// nextAt is next with an explicit revision (revisions may jump).
func (s *source) nextAt(rev int64, changes ...cache.Change) (*protocol.Delta, []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.nextAtLocked(rev, changes)
}

func (s *source) nextAtLocked(rev int64, changes []cache.Change) (*protocol.Delta, []byte) {
	s.tb.Helper()
	next, _, err := s.snap.Apply(rev, protocol.SourceDatabase, changes)
	if err != nil {
		s.tb.Errorf("apply revision %d: %v", rev, err)
		return nil, nil
	}
	d := &protocol.Delta{Revision: rev, PrevRevision: s.snap.Revision(), Checksum: next.Checksum(), Count: next.Len(),
		Source: protocol.SourceDatabase, CommittedAt: time.Now().UTC(), Changes: changes}
	if !s.v1only {
		d.ChecksumV2 = next.ChecksumV2()
	}
	data, err := publisher.EncodeDelta(d)
	if err != nil {
		s.tb.Errorf("encode delta: %v", err)
	}
	s.snap = next
	return d, data
}

// commit publishes the next revision (stored, then announced).
func (s *source) commit(changes ...cache.Change) *protocol.Delta {
	s.tb.Helper()
	d, data := s.next(changes...)
	s.publish(d, data)
	return d
}

func (s *source) publish(d *protocol.Delta, data []byte) {
	s.tb.Helper()
	if err := s.pub.PublishDelta(context.Background(), d, data); err != nil {
		s.tb.Errorf("publish delta %d: %v", d.Revision, err)
	}
}

// store writes a delta to the stream without announcing it.
func (s *source) store(d *protocol.Delta, data []byte) {
	s.tb.Helper()
	n := s.names()
	m := d.Msg(n.DeltaSubject(d.Revision), data)
	if err := s.signer.Sign(protocol.KindDelta, m); err != nil {
		s.tb.Fatalf("sign: %v", err)
	}
	if _, err := s.js.PublishMsg(context.Background(), m, jetstream.WithMsgID(n.MsgID(d.Revision))); err != nil {
		s.tb.Errorf("store delta %d: %v", d.Revision, err)
	}
}

// announce publishes bytes on the live subject only, signed by the source's
// key (what a syncer sends, whatever the bytes).
func (s *source) announce(data []byte) {
	s.tb.Helper()
	s.send(s.names().Live(), protocol.KindDelta, data, s.signer)
}

// send publishes data on subject (core NATS), signed as kind by signer (nil:
// unsigned).
func (s *source) send(subject, kind string, data []byte, signer *protocol.Signer) {
	s.tb.Helper()
	m := nats.NewMsg(subject)
	m.Data = data
	if signer != nil {
		if err := signer.Sign(kind, m); err != nil {
			s.tb.Fatalf("sign: %v", err)
		}
	}
	if err := s.nc.PublishMsg(m); err != nil {
		s.tb.Errorf("publish on %s: %v", subject, err)
	}
	if err := s.nc.Flush(); err != nil {
		s.tb.Errorf("flush: %v", err)
	}
}

// sendHeartbeat publishes hb on the heartbeat subject, signed by signer (nil:
// unsigned).
func (s *source) sendHeartbeat(hb *protocol.Heartbeat, signer *protocol.Signer) {
	s.tb.Helper()
	data, err := json.Marshal(hb)
	if err != nil {
		s.tb.Fatal(err)
	}
	s.send(s.names().Heartbeat(), protocol.KindHeartbeat, data, signer)
}

// storeManifest stores a manifest signed by the source's key.
func (s *source) storeManifest(man *protocol.Manifest) {
	s.tb.Helper()
	data, err := json.Marshal(man)
	if err != nil {
		s.tb.Fatal(err)
	}
	m := nats.NewMsg(s.names().Manifest())
	m.Data = data
	if err := s.signer.Sign(protocol.KindManifest, m); err != nil {
		s.tb.Fatal(err)
	}
	if _, err := s.js.PublishMsg(context.Background(), m); err != nil {
		s.tb.Fatalf("store manifest: %v", err)
	}
}

func (s *source) writeSnapshot() {
	s.tb.Helper()
	if _, err := s.pub.WriteSnapshot(context.Background(), s.state(), false); err != nil {
		s.tb.Errorf("write snapshot: %v", err)
	}
}

func (s *source) heartbeat() {
	s.tb.Helper()
	st := s.state()
	hb := &protocol.Heartbeat{Revision: st.Revision(), Checksum: st.Checksum(), Source: st.Source(),
		Time: time.Now().UTC(), IntervalMS: 2000, Syncer: "test"}
	s.mu.Lock()
	if !s.v1only {
		hb.ChecksumV2 = st.ChecksumV2()
	}
	s.mu.Unlock()
	if err := s.pub.Heartbeat(hb); err != nil {
		s.tb.Errorf("heartbeat: %v", err)
	}
}

// touch changes the timeout of an existing extension.
func (s *source) touch(id string, timeoutMS int) cache.Change {
	s.tb.Helper()
	e, ok := s.state().Get(id)
	if !ok {
		s.tb.Fatalf("touch: no extension %q", id)
	}
	cp := *e
	cp.TimeoutMS = timeoutMS
	return aggregate(s.tb, &cp)
}

func aggregate(tb testing.TB, e *cache.Extension) cache.Change {
	tb.Helper()
	raw, err := cache.Canonical(e)
	if err != nil {
		tb.Fatalf("canonical: %v", err)
	}
	return cache.Change{Op: cache.OpPut, Kind: cache.KindAggregate, ID: e.ID, Value: raw}
}

func newExtension(id string, enabled bool) *cache.Extension {
	return &cache.Extension{ID: id, Type: cache.TypePost, Subject: "beamline.ext.post." + id + ".v1", TimeoutMS: 150,
		Enabled: enabled, Version: "v1", Config: json.RawMessage(`{}`), Metadata: json.RawMessage(`{}`)}
}

// event is one OnChange call.
type event struct {
	old, new *cache.Snapshot
	changed  []string
}

// testClient is a started client that records its callbacks.
type testClient struct {
	*Client
	mu     sync.Mutex
	events []event
	errs   []error
}

func (tc *testClient) Events() []event {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	return append([]event(nil), tc.events...)
}

func (tc *testClient) Errors() []error {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	return append([]error(nil), tc.errs...)
}

// revisions lists the revision of every installed snapshot, in order.
func (tc *testClient) revisions() []int64 {
	var out []int64
	for _, e := range tc.Events() {
		out = append(out, e.new.Revision())
	}
	return out
}

// newClient creates a client whose callbacks are recorded (OnChange and
// OnError in cfg, if set, run too) and whose logs go to the test log.
func newClient(tb testing.TB, nc *nats.Conn, cfg Config) *testClient {
	tb.Helper()
	tc := &testClient{}
	onChange, onError := cfg.OnChange, cfg.OnError
	cfg.OnChange = func(old, new *cache.Snapshot, changed []string) {
		tc.mu.Lock()
		tc.events = append(tc.events, event{old, new, changed})
		tc.mu.Unlock()
		if onChange != nil {
			onChange(old, new, changed)
		}
	}
	cfg.OnError = func(err error) {
		tc.mu.Lock()
		tc.errs = append(tc.errs, err)
		tc.mu.Unlock()
		if onError != nil {
			onError(err)
		}
	}
	if cfg.Logger == nil {
		cfg.Logger = testLogger(tb)
	}
	c, err := New(nc, cfg)
	if err != nil {
		tb.Fatalf("new client: %v", err)
	}
	tc.Client = c
	tb.Cleanup(c.Stop)
	return tc
}

// startClient is newClient followed by Start.
func startClient(tb testing.TB, nc *nats.Conn, cfg Config) *testClient {
	tb.Helper()
	tc := newClient(tb, nc, cfg)
	if err := tc.Start(context.Background()); err != nil {
		tb.Fatalf("start client: %v", err)
	}
	return tc
}

type logWriter struct{ tb testing.TB }

func (w logWriter) Write(p []byte) (int, error) {
	w.tb.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func testLogger(tb testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(logWriter{tb}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// waitFor polls cond until it holds, failing the test after a deadline.
func waitFor(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(15 * time.Second)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

// waitSame waits until the client serves exactly the source's state.
func waitSame(tb testing.TB, c *testClient, src *source) {
	tb.Helper()
	want := src.state()
	waitFor(tb, "the client to reach the source's state", func() bool {
		s := c.Snapshot()
		if s == nil || s.Revision() != want.Revision() || s.Checksum() != want.Checksum() {
			return false
		}
		// The snapshot is served before OnChange reports it: wait for the report too, so
		// that a test reading Events next sees it.
		ev := c.Events()
		return len(ev) > 0 && ev[len(ev)-1].new == s
	})
}

func equalRevs(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func allRejected(errs []error) bool {
	for _, err := range errs {
		if !errors.Is(err, ErrRejected) {
			return false
		}
	}
	return true
}
