package publisher_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/beamline/registry-syncer/cache"
	"github.com/beamline/registry-syncer/protocol"
	"github.com/beamline/registry-syncer/publisher"
	"github.com/beamline/registry-syncer/test/harness"
)

const waitTimeout = 10 * time.Second

func checksum(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

func delta(rev int64, content string) *protocol.Delta {
	return &protocol.Delta{Revision: rev, PrevRevision: rev - 1, Checksum: checksum(content), Count: 0,
		Source: protocol.SourceDatabase, CommittedAt: time.Unix(1700000000, 0).UTC()}
}

func encode(t *testing.T, d *protocol.Delta) []byte {
	t.Helper()
	data, err := publisher.EncodeDelta(d)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func snapshot(t testing.TB, rev int64, n int) *cache.Snapshot {
	t.Helper()
	s, err := cache.New(rev, protocol.SourceDatabase, cache.Synthetic(n))
	if err != nil {
		t.Fatalf("cache.New: %v", err)
	}
	return s
}

func subscribe(t *testing.T, nc *nats.Conn, subject string) *nats.Subscription {
	t.Helper()
	sub, err := nc.SubscribeSync(subject)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return sub
}

// subjectCounts returns the stored message count per subject matching filter.
func subjectCounts(t *testing.T, ctx context.Context, js jetstream.JetStream, stream, filter string) map[string]uint64 {
	t.Helper()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(filter))
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Subjects
}

// steppingClock is a publisher clock a minute ahead at every reading: each snapshot is
// replaced long before the next one is written.
func steppingClock() func() time.Time {
	var clock atomic.Int64
	return func() time.Time { return time.Unix(1_800_000_000+clock.Add(60), 0) }
}

func sum(m map[string]uint64) (n uint64) {
	for _, v := range m {
		n += v
	}
	return n
}

func TestPublisher(t *testing.T) {
	t.Parallel()

	type testBundle struct {
		nats *harness.NATS
		nc   *nats.Conn
		js   jetstream.JetStream
		ctx  context.Context
	}

	setup := func(t *testing.T, opts harness.NATSOptions, cfg publisher.Config) (*publisher.Publisher, *testBundle) {
		t.Helper()
		b := &testBundle{nats: harness.NewNATS(t, opts)}
		b.nc = b.nats.Connect(t)
		var err error
		if b.js, err = jetstream.New(b.nc); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
		t.Cleanup(cancel)
		b.ctx = ctx
		p, err := publisher.New(b.nc, cfg)
		if err != nil {
			t.Fatalf("publisher.New: %v", err)
		}
		return p, b
	}

	start := func(t *testing.T, opts harness.NATSOptions) (*publisher.Publisher, *testBundle) {
		t.Helper()
		p, b := setup(t, opts, publisher.Config{})
		if err := p.EnsureStreams(b.ctx); err != nil {
			t.Fatalf("EnsureStreams: %v", err)
		}
		return p, b
	}

	t.Run("EnsureStreams", func(t *testing.T) {
		t.Parallel()
		p, b := setup(t, harness.NATSOptions{}, publisher.Config{})
		for i := range 2 {
			if err := p.EnsureStreams(b.ctx); err != nil {
				t.Fatalf("EnsureStreams call %d: %v", i+1, err)
			}
		}
		names := p.Names()
		for stream, subject := range map[string]string{
			names.DeltaStream:    names.DeltaSubjects(),
			names.SnapshotStream: names.SnapshotSubjects(),
		} {
			s, err := b.js.Stream(b.ctx, stream)
			if err != nil {
				t.Fatalf("stream %s: %v", stream, err)
			}
			cfg := s.CachedInfo().Config
			if !cfg.AllowDirect {
				t.Errorf("stream %s: AllowDirect = false", stream)
			}
			if len(cfg.Subjects) != 1 || cfg.Subjects[0] != subject {
				t.Errorf("stream %s: subjects %v, want [%s]", stream, cfg.Subjects, subject)
			}
			if cfg.Replicas != 1 {
				t.Errorf("stream %s: replicas %d, want 1", stream, cfg.Replicas)
			}
		}
	})

	t.Run("PublishDeltaOnce", func(t *testing.T) {
		t.Parallel()
		p, b := start(t, harness.NATSOptions{})
		names := p.Names()
		live := subscribe(t, b.nc, names.Live())

		d := delta(1, "one")
		data := encode(t, d)
		seq, err := p.StoreDelta(b.ctx, d, data)
		if err != nil {
			t.Fatalf("StoreDelta: %v", err)
		}
		if seq == 0 {
			t.Error("first StoreDelta returned sequence 0, want the stored sequence")
		}
		m, err := live.NextMsg(waitTimeout)
		if err != nil {
			t.Fatalf("live subject: %v", err)
		}
		got, err := protocol.DeltaFromMsg(m)
		if err != nil {
			t.Fatal(err)
		}
		if got.Revision != 1 || got.Checksum != d.Checksum {
			t.Fatalf("live delta = rev %d checksum %s, want rev 1 checksum %s", got.Revision, got.Checksum, d.Checksum)
		}

		// The same delta again (a retry) is accepted and not stored twice.
		seq, err = p.StoreDelta(b.ctx, d, data)
		if err != nil {
			t.Fatalf("republish the same delta: %v", err)
		}
		if seq != 0 {
			t.Errorf("republish stored at sequence %d, want 0 (already stored)", seq)
		}
		if err := p.PublishDelta(b.ctx, d, data); err != nil {
			t.Fatalf("PublishDelta of the same delta: %v", err)
		}

		// A different delta for the same revision is refused.
		other := delta(1, "another")
		err = p.PublishDelta(b.ctx, other, encode(t, other))
		if err == nil {
			t.Fatal("a different delta for revision 1 was accepted")
		}
		if !strings.Contains(err.Error(), "different delta") {
			t.Errorf("error %q does not say the stream holds a different delta", err)
		}

		counts := subjectCounts(t, b.ctx, b.js, names.DeltaStream, names.DeltaSubjects())
		if len(counts) != 1 || counts[names.DeltaSubject(1)] != 1 {
			t.Fatalf("stored deltas %v, want one on %s", counts, names.DeltaSubject(1))
		}
		stored, err := p.Reader().Delta(b.ctx, 1)
		if err != nil {
			t.Fatal(err)
		}
		if stored.Checksum != d.Checksum {
			t.Fatalf("stored checksum %s, want the first delta's %s", stored.Checksum, d.Checksum)
		}
	})

	t.Run("PublishDeltaTooLarge", func(t *testing.T) {
		t.Parallel()
		p, b := start(t, harness.NATSOptions{MaxPayload: 64 * 1024})
		d := delta(1, "big")
		err := p.PublishDelta(b.ctx, d, make([]byte, 60*1024))
		if !errors.Is(err, publisher.ErrTooLarge) {
			t.Fatalf("PublishDelta of 60 KiB with max_payload 64 KiB: %v, want ErrTooLarge", err)
		}
	})

	t.Run("WriteSnapshotChunksAndPurges", func(t *testing.T) {
		t.Parallel()
		// Snapshots written long after each other (SnapshotGrace keeps more: retention_test.go).
		p, b := setup(t, harness.NATSOptions{MaxPayload: 64 * 1024}, publisher.Config{Clock: steppingClock()})
		if err := p.EnsureStreams(b.ctx); err != nil {
			t.Fatal(err)
		}
		names := p.Names()

		snap1 := snapshot(t, 1, 2000)
		m1, err := p.WriteSnapshot(b.ctx, snap1, false)
		if err != nil {
			t.Fatalf("WriteSnapshot 1: %v", err)
		}
		if len(m1.Sequences) < 2 {
			t.Fatalf("snapshot of %d bytes in %d chunk(s), want several with max_payload 64 KiB", m1.Size, len(m1.Sequences))
		}
		got, gm, err := p.Reader().Snapshot(b.ctx)
		if err != nil {
			t.Fatalf("read snapshot back: %v", err)
		}
		if got.Checksum() != snap1.Checksum() || got.Revision() != 1 || got.Len() != 2000 || gm.Checksum != m1.Checksum {
			t.Fatalf("read back rev %d checksum %s len %d, want rev 1 checksum %s len 2000",
				got.Revision(), got.Checksum(), got.Len(), snap1.Checksum())
		}

		var m3 *protocol.Manifest
		mans := map[int64]*protocol.Manifest{}
		for _, rev := range []int64{2, 3} {
			m, err := p.WriteSnapshot(b.ctx, snapshot(t, rev, 2000), false)
			if err != nil {
				t.Fatalf("WriteSnapshot %d: %v", rev, err)
			}
			mans[rev] = m
			m3 = m
		}
		chunks := subjectCounts(t, b.ctx, b.js, names.SnapshotStream, names.ChunkSubjects())
		want := map[string]uint64{
			names.ChunkSubject(2): uint64(len(mans[2].Sequences)),
			names.ChunkSubject(3): uint64(len(mans[3].Sequences)),
		}
		if len(chunks) != len(want) || chunks[names.ChunkSubject(2)] != want[names.ChunkSubject(2)] || chunks[names.ChunkSubject(3)] != want[names.ChunkSubject(3)] {
			t.Fatalf("chunks stored %v (total %d), want %v", chunks, sum(chunks), want)
		}
		if mc := subjectCounts(t, b.ctx, b.js, names.SnapshotStream, names.Manifest()); sum(mc) != 2 {
			t.Fatalf("manifests stored %v, want 2 (the current and the previous snapshot's)", mc)
		}

		// An older revision than the stored one is not written.
		s, err := b.js.Stream(b.ctx, names.SnapshotStream)
		if err != nil {
			t.Fatal(err)
		}
		before, err := s.Info(b.ctx)
		if err != nil {
			t.Fatal(err)
		}
		m, err := p.WriteSnapshot(b.ctx, snapshot(t, 2, 10), false)
		if err != nil {
			t.Fatalf("WriteSnapshot of an older revision: %v", err)
		}
		if m.Revision != 3 || m.Checksum != m3.Checksum {
			t.Fatalf("older write returned manifest rev %d, want the stored rev 3", m.Revision)
		}
		// The same revision and checksum again is a no-op too.
		if _, err := p.WriteSnapshot(b.ctx, snapshot(t, 3, 2000), false); err != nil {
			t.Fatalf("rewrite of revision 3: %v", err)
		}
		after, err := s.Info(b.ctx)
		if err != nil {
			t.Fatal(err)
		}
		if after.State.LastSeq != before.State.LastSeq || after.State.Msgs != before.State.Msgs {
			t.Fatalf("no-op writes changed the stream: last seq %d -> %d, msgs %d -> %d",
				before.State.LastSeq, after.State.LastSeq, before.State.Msgs, after.State.Msgs)
		}
		got, _, err = p.Reader().Snapshot(b.ctx)
		if err != nil {
			t.Fatal(err)
		}
		if got.Revision() != 3 || got.Checksum() != m3.Checksum {
			t.Fatalf("stored snapshot rev %d checksum %s, want rev 3 checksum %s", got.Revision(), got.Checksum(), m3.Checksum)
		}
	})

	t.Run("LastDeltaAndHeartbeat", func(t *testing.T) {
		t.Parallel()
		p, b := start(t, harness.NATSOptions{})

		last, err := p.LastDelta(b.ctx)
		if err != nil {
			t.Fatalf("LastDelta on an empty stream: %v", err)
		}
		if last != nil {
			t.Fatalf("LastDelta on an empty stream = rev %d, want nil", last.Revision)
		}
		for rev := int64(1); rev <= 3; rev++ {
			d := delta(rev, "content")
			if err := p.PublishDelta(b.ctx, d, encode(t, d)); err != nil {
				t.Fatalf("PublishDelta %d: %v", rev, err)
			}
		}
		last, err = p.LastDelta(b.ctx)
		if err != nil {
			t.Fatal(err)
		}
		if last == nil || last.Revision != 3 || last.PrevRevision != 2 {
			t.Fatalf("LastDelta = %+v, want revision 3", last)
		}

		hbSub := subscribe(t, b.nc, p.Names().Heartbeat())
		hb := &protocol.Heartbeat{Revision: 3, Checksum: checksum("content"), Source: protocol.SourceDatabase,
			Time: time.Now().UTC(), IntervalMS: 1000, Syncer: "test"}
		if err := p.Heartbeat(hb); err != nil {
			t.Fatalf("Heartbeat: %v", err)
		}
		m, err := hbSub.NextMsg(waitTimeout)
		if err != nil {
			t.Fatalf("heartbeat subject: %v", err)
		}
		got, err := protocol.DecodeHeartbeat(m.Data)
		if err != nil {
			t.Fatal(err)
		}
		if got.Revision != 3 || got.Syncer != "test" || got.Checksum != hb.Checksum {
			t.Fatalf("heartbeat = %+v, want %+v", got, hb)
		}
	})

	t.Run("ConfigValidation", func(t *testing.T) {
		t.Parallel()
		for _, tc := range []struct {
			name  string
			cfg   publisher.Config
			field string
		}{
			{"Replicas", publisher.Config{Replicas: 7}, "Replicas"},
			{"NegativeReplicas", publisher.Config{Replicas: -1}, "Replicas"},
			{"DeltaMaxAge", publisher.Config{DeltaMaxAge: time.Second}, "DeltaMaxAge"},
			{"DeltaMaxMsgs", publisher.Config{DeltaMaxMsgs: 10}, "DeltaMaxMsgs"},
			{"DuplicateWindow", publisher.Config{DuplicateWindow: time.Millisecond}, "DuplicateWindow"},
			{"ChunkSize", publisher.Config{ChunkSize: -1}, "ChunkSize"},
			{"Prefix", publisher.Config{Prefix: "bad..prefix"}, "prefix"},
		} {
			// Validation comes before any use of the connection.
			_, err := publisher.New(nil, tc.cfg)
			if err == nil {
				t.Errorf("%s: New succeeded, want an error naming %s", tc.name, tc.field)
				continue
			}
			if !strings.Contains(err.Error(), tc.field) {
				t.Errorf("%s: error %q does not name %s", tc.name, err, tc.field)
			}
		}
		d := publisher.Config{}.WithDefaults()
		if d.Replicas != 1 || d.Prefix != protocol.DefaultPrefix || d.DeltaMaxAge != 7*24*time.Hour {
			t.Errorf("defaults = %+v", d)
		}
	})
}
