package publisher_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/beamline/registry-syncer/protocol"
	"github.com/beamline/registry-syncer/publisher"
	"github.com/beamline/registry-syncer/test/harness"
)

// TestSnapshotsOnEveryServer writes snapshots against every real nats-server binary of
// the matrix (2.9 through the newest), each long after the one before: after each write
// the new snapshot reads back, the one before it is still readable chunk by chunk (a
// router may be reading it), and every older chunk and manifest is gone. Servers before 2.12.10 purged every chunk, the new
// snapshot's included, when a purge combined a wildcard subject with a sequence.
func TestSnapshotsOnEveryServer(t *testing.T) {
	t.Parallel()
	for _, bin := range harness.Servers(t) {
		t.Run(bin.Name(), func(t *testing.T) {
			t.Parallel()
			srv := harness.NewNATSProc(t, bin, harness.NATSProcOptions{MaxPayload: 64 * 1024})
			nc := srv.Connect(t)
			js, err := jetstream.New(nc)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
			defer cancel()
			// Every reading of the clock is a minute after the one before: each snapshot
			// is replaced long before the next one is written, so that only the current
			// and the previous one are kept (TestSnapshotGraceOnEveryServer keeps more).
			p, err := publisher.New(nc, publisher.Config{Clock: steppingClock()})
			if err != nil {
				t.Fatal(err)
			}
			if err := p.EnsureStreams(ctx); err != nil {
				t.Fatalf("EnsureStreams: %v", err)
			}
			names := p.Names()
			read := p.Reader()

			// checkStored verifies the stored state after writing cur (prev written before it).
			checkStored := func(t *testing.T, cur, prev *protocol.Manifest) {
				t.Helper()
				got, gm, err := read.Snapshot(ctx)
				if err != nil {
					t.Fatalf("read snapshot %d back: %v", cur.Revision, err)
				}
				if got.Revision() != cur.Revision || gm.Checksum != cur.Checksum {
					t.Fatalf("read back revision %d checksum %.12s, want %d %.12s", got.Revision(), gm.Checksum, cur.Revision, cur.Checksum)
				}
				want := map[string]uint64{names.ChunkSubject(cur.Revision): uint64(len(cur.Sequences))}
				if prev != nil {
					want[names.ChunkSubject(prev.Revision)] += uint64(len(prev.Sequences))
					for i, seq := range prev.Sequences {
						st, err := read.BySeq(ctx, names.SnapshotStream, seq)
						if err != nil {
							t.Fatalf("chunk %d of the previous snapshot %d (seq %d): %v", i, prev.Revision, seq, err)
						}
						if st.Subject != names.ChunkSubject(prev.Revision) {
							t.Fatalf("seq %d holds %s, want a chunk of revision %d", seq, st.Subject, prev.Revision)
						}
					}
				}
				chunks := subjectCounts(t, ctx, js, names.SnapshotStream, names.ChunkSubjects())
				if len(chunks) != len(want) {
					t.Fatalf("chunks stored %v, want %v", chunks, want)
				}
				for subj, n := range want {
					if chunks[subj] != n {
						t.Fatalf("chunks stored %v, want %v", chunks, want)
					}
				}
				wantManifests := uint64(1)
				if prev != nil {
					wantManifests = 2
				}
				if mc := subjectCounts(t, ctx, js, names.SnapshotStream, names.Manifest()); sum(mc) != wantManifests {
					t.Fatalf("manifests stored %v, want %d", mc, wantManifests)
				}
			}

			var prev *protocol.Manifest
			for _, rev := range []int64{1, 2, 3} {
				m, err := p.WriteSnapshot(ctx, snapshot(t, rev, 1500), false)
				if err != nil {
					t.Fatalf("WriteSnapshot %d: %v", rev, err)
				}
				if len(m.Sequences) < 2 {
					t.Fatalf("snapshot %d in %d chunk(s), want several with max_payload 64 KiB", rev, len(m.Sequences))
				}
				checkStored(t, m, prev)
				prev = m
			}

			// A forced rewrite of the same revision shares its chunk subject with the
			// snapshot it replaces: both stay readable.
			m, err := p.WriteSnapshot(ctx, snapshot(t, 3, 1500), true)
			if err != nil {
				t.Fatalf("forced WriteSnapshot 3: %v", err)
			}
			checkStored(t, m, prev)
			prev = m

			// Chunks a crashed writer left behind without a manifest (older revision) are
			// purged; chunks of a newer revision being written by another syncer are not.
			orphan := nats.NewMsg(names.ChunkSubject(2))
			orphan.Header.Set(protocol.HeaderChunk, "0/1")
			if _, err := js.PublishMsg(ctx, orphan); err != nil {
				t.Fatal(err)
			}
			m, err = p.WriteSnapshot(ctx, snapshot(t, 4, 1500), false)
			if err != nil {
				t.Fatalf("WriteSnapshot 4: %v", err)
			}
			checkStored(t, m, prev)
			prev = m
			inFlight := nats.NewMsg(names.ChunkSubject(9))
			inFlight.Header.Set(protocol.HeaderChunk, "0/2")
			if _, err := js.PublishMsg(ctx, inFlight); err != nil {
				t.Fatal(err)
			}
			m, err = p.WriteSnapshot(ctx, snapshot(t, 5, 1500), false)
			if err != nil {
				t.Fatalf("WriteSnapshot 5: %v", err)
			}
			if n := subjectCounts(t, ctx, js, names.SnapshotStream, names.ChunkSubject(9))[names.ChunkSubject(9)]; n != 1 {
				t.Fatalf("the newer revision's chunk was purged (%d left)", n)
			}
			stream, err := js.Stream(ctx, names.SnapshotStream)
			if err != nil {
				t.Fatal(err)
			}
			if err := stream.DeleteMsg(ctx, mustSeq(t, ctx, read, names.SnapshotStream, names.ChunkSubject(9))); err != nil {
				t.Fatal(err)
			}
			checkStored(t, m, prev)

			// EnsureStreams leaves a readable snapshot alone, and deletes a manifest whose
			// chunks are gone (what the old purge left on these servers), so that the
			// syncer writes a new snapshot instead of retrying forever.
			if err := p.EnsureStreams(ctx); err != nil {
				t.Fatal(err)
			}
			checkStored(t, m, prev)
			// The newest snapshot's chunks gone, the previous one's there: that one is
			// what readers get once the newest manifest is deleted.
			if err := stream.Purge(ctx, jetstream.WithPurgeSubject(names.ChunkSubject(m.Revision))); err != nil {
				t.Fatal(err)
			}
			if err := p.EnsureStreams(ctx); err != nil {
				t.Fatal(err)
			}
			// nats-server 2.9 answers last_by_subj with 404 once the subject's last message
			// is deleted, older ones notwithstanding: there readers find no snapshot until
			// the syncer writes one, as before the grace (the manifest was the only one).
			noLast := false
			if _, gm, err := read.Snapshot(ctx); strings.HasPrefix(bin.Version, "2.9.") && errors.Is(err, protocol.ErrNotFound) {
				t.Logf("nats-server %s: no manifest found after the newest was deleted", bin.Version)
				noLast = true
			} else if err != nil || gm.Revision != prev.Revision {
				t.Fatalf("after the newest snapshot's chunks are gone: %v, manifest %v; want the previous, %d", err, gm, prev.Revision)
			}
			if err := stream.Purge(ctx, jetstream.WithPurgeSubject(names.ChunkSubjects())); err != nil {
				t.Fatal(err)
			}
			if _, _, err := read.Snapshot(ctx); !errors.Is(err, protocol.ErrSnapshotMoved) && !(noLast && errors.Is(err, protocol.ErrNotFound)) {
				t.Fatalf("snapshot without chunks: %v, want ErrSnapshotMoved", err)
			}
			if err := p.EnsureStreams(ctx); err != nil {
				t.Fatal(err)
			}
			if _, err := read.Manifest(ctx); !errors.Is(err, protocol.ErrNotFound) {
				t.Fatalf("manifest of a snapshot without chunks after EnsureStreams: %v, want it deleted", err)
			}
			m, err = p.WriteSnapshot(ctx, snapshot(t, 6, 1500), false)
			if err != nil {
				t.Fatalf("WriteSnapshot 6: %v", err)
			}
			checkStored(t, m, nil)
		})
	}
}

func mustSeq(t *testing.T, ctx context.Context, r *protocol.Reader, stream, subject string) uint64 {
	t.Helper()
	st, err := r.Last(ctx, stream, subject)
	if err != nil {
		t.Fatalf("last on %s: %v", subject, err)
	}
	return st.Sequence
}

// TestCheckServerOnEveryServer: every binary of the matrix passes CheckServer with
// JetStream, and without it (no -js) CheckServer and EnsureStreams fail at once with
// ErrNoJetStream, saying so, instead of "no responders" forever.
func TestCheckServerOnEveryServer(t *testing.T) {
	t.Parallel()
	for _, bin := range harness.Servers(t) {
		t.Run(bin.Name(), func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
			defer cancel()

			withJS := harness.NewNATSProc(t, bin, harness.NATSProcOptions{}).Connect(t)
			if got := withJS.ConnectedServerVersion(); got != bin.Version {
				t.Fatalf("connected to version %q, want %s", got, bin.Version)
			}
			if err := publisher.CheckServer(ctx, withJS); err != nil {
				t.Fatalf("CheckServer with JetStream: %v", err)
			}

			noJS := harness.NewNATSProc(t, bin, harness.NATSProcOptions{NoJetStream: true}).Connect(t)
			err := publisher.CheckServer(ctx, noJS)
			if !errors.Is(err, publisher.ErrNoJetStream) || errors.Is(err, publisher.ErrUnsupportedServer) {
				t.Fatalf("CheckServer without JetStream: %v, want ErrNoJetStream", err)
			}
			if !strings.Contains(err.Error(), "JetStream not enabled") || !strings.Contains(err.Error(), bin.Version) {
				t.Errorf("CheckServer without JetStream: %q does not say so, naming the version", err)
			}
			p, err := publisher.New(noJS, publisher.Config{})
			if err != nil {
				t.Fatal(err)
			}
			if err := p.EnsureStreams(ctx); !errors.Is(err, publisher.ErrNoJetStream) {
				t.Fatalf("EnsureStreams without JetStream: %v, want ErrNoJetStream", err)
			}
		})
	}
}
