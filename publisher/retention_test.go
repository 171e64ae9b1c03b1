package publisher_test

import (
	"context"
	"errors"
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

// fakeClock is a publisher clock the test moves.
type fakeClock struct{ unix atomic.Int64 }

func (c *fakeClock) now() time.Time          { return time.Unix(c.unix.Load(), 0) }
func (c *fakeClock) advance(d time.Duration) { c.unix.Add(int64(d / time.Second)) }

// TestSnapshotGraceOnEveryServer: on every server of the matrix, a replaced snapshot stays
// readable, chunk by chunk, until SnapshotGrace after its replacement, within
// SnapshotRetainBytes (SnapshotWait says how long to defer a write that would not fit;
// a write made anyway purges the oldest beyond the bound); then its chunks and manifest go.
func TestSnapshotGraceOnEveryServer(t *testing.T) {
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
			clk := &fakeClock{}
			clk.unix.Store(1_800_000_000)
			const grace = 30 * time.Second
			p, err := publisher.New(nc, publisher.Config{Clock: clk.now, SnapshotGrace: grace})
			if err != nil {
				t.Fatal(err)
			}
			if err := p.EnsureStreams(ctx); err != nil {
				t.Fatal(err)
			}
			names, read := p.Names(), p.Reader()
			written := map[int64]*protocol.Manifest{}
			write := func(p *publisher.Publisher, rev int64) {
				t.Helper()
				m, err := p.WriteSnapshot(ctx, snapshot(t, rev, 1500), false)
				if err != nil {
					t.Fatalf("WriteSnapshot %d: %v", rev, err)
				}
				if len(m.Sequences) < 2 {
					t.Fatalf("snapshot %d in %d chunk(s), want several", rev, len(m.Sequences))
				}
				written[rev] = m
			}
			// kept checks that exactly the snapshots of revs are stored, each readable.
			kept := func(revs ...int64) {
				t.Helper()
				chunks := subjectCounts(t, ctx, js, names.SnapshotStream, names.ChunkSubjects())
				if len(chunks) != len(revs) {
					t.Fatalf("chunk subjects stored %v, want the snapshots of %v", chunks, revs)
				}
				for _, rev := range revs {
					m := written[rev]
					if chunks[names.ChunkSubject(rev)] != uint64(len(m.Sequences)) {
						t.Fatalf("chunks stored %v, want %d of revision %d", chunks, len(m.Sequences), rev)
					}
					for i, seq := range m.Sequences {
						st, err := read.BySeq(ctx, names.SnapshotStream, seq)
						if err != nil || st.Subject != names.ChunkSubject(rev) {
							t.Fatalf("chunk %d of snapshot %d (seq %d): %v, subject %v", i, rev, seq, err, st)
						}
					}
				}
				if mc := subjectCounts(t, ctx, js, names.SnapshotStream, names.Manifest()); sum(mc) != uint64(len(revs)) {
					t.Fatalf("manifests stored %v, want %d", mc, len(revs))
				}
				if _, m, err := read.Snapshot(ctx); err != nil || m.Revision != revs[len(revs)-1] {
					t.Fatalf("read the snapshot: %v (manifest %v), want revision %d", err, m, revs[len(revs)-1])
				}
			}
			wait := func(p *publisher.Publisher, want time.Duration) {
				t.Helper()
				if got, err := p.SnapshotWait(ctx); err != nil || got != want {
					t.Fatalf("SnapshotWait: %v, %v; want %v", got, err, want)
				}
			}

			// Within the grace every snapshot is kept.
			for rev := int64(1); rev <= 4; rev++ {
				wait(p, 0)
				write(p, rev)
				clk.advance(time.Second)
			}
			kept(1, 2, 3, 4)
			// 1 was replaced (by 2) 3 s ago, 3 (by 4) 1 s ago; at 30 s after 3's
			// replacement, 1 to 3 are past it: the next write keeps 4 (the previous).
			clk.advance(grace - time.Second)
			wait(p, 0)
			write(p, 5)
			kept(4, 5)

			// A retention of 3.5 snapshots keeps the current one, the previous one and one
			// more within the grace: the next write waits for the oldest to expire.
			size := int64(written[5].Size)
			q, err := publisher.New(nc, publisher.Config{Clock: clk.now, SnapshotGrace: grace, SnapshotRetainBytes: size * 7 / 2})
			if err != nil {
				t.Fatal(err)
			}
			clk.advance(time.Second)
			wait(q, 0) // 6, 5, and 4 (replaced 1 s ago)
			write(q, 6)
			kept(4, 5, 6)
			clk.advance(time.Second)
			// 7 would keep 7, 6, 5 and 4: 4 was replaced (by 5) 2 s ago.
			wait(q, grace-2*time.Second)
			// Written anyway (a forced write does not wait), the bound holds: 4 goes.
			write(q, 7)
			kept(5, 6, 7)
			clk.advance(grace)
			wait(q, 0)
			write(q, 8)
			kept(7, 8)

			// However small, at most 40 replaced snapshots are kept (each write reads the
			// manifests of those it keeps).
			lctx, lcancel := context.WithTimeout(t.Context(), 60*time.Second)
			defer lcancel()
			for rev := int64(9); rev <= 55; rev++ {
				if _, err := p.WriteSnapshot(lctx, snapshot(t, rev, 10), false); err != nil {
					t.Fatalf("WriteSnapshot %d: %v", rev, err)
				}
			}
			if mc := subjectCounts(t, lctx, js, names.SnapshotStream, names.Manifest()); sum(mc) != 41 {
				t.Fatalf("manifests stored %v after 47 writes within the grace, want 41 (the current one and 40 replaced)", mc)
			}
			if chunks := subjectCounts(t, lctx, js, names.SnapshotStream, names.ChunkSubjects()); len(chunks) != 41 || chunks[names.ChunkSubject(15)] != 1 || chunks[names.ChunkSubject(14)] != 0 {
				t.Fatalf("%d chunk subjects stored, want those of revisions 15 to 55", len(chunks))
			}

		})
	}
}

// TestSlowSnapshotReaderOnEveryServer: a router whose link is throttled so that one
// snapshot read takes longer than several snapshot intervals, while snapshots are written
// continuously (the writer paced as the syncer's is, by SnapshotWait), reads a snapshot.
// Before the grace (only the previous snapshot kept) every read ended in ErrSnapshotMoved.
func TestSlowSnapshotReaderOnEveryServer(t *testing.T) {
	t.Parallel()
	for _, bin := range harness.Servers(t) {
		t.Run(bin.Name(), func(t *testing.T) {
			t.Parallel()
			srv := harness.NewNATSProc(t, bin, harness.NATSProcOptions{MaxPayload: 64 * 1024})
			nc := srv.Connect(t)
			ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
			defer cancel()
			p, err := publisher.New(nc, publisher.Config{SnapshotGrace: 10 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			if err := p.EnsureStreams(ctx); err != nil {
				t.Fatal(err)
			}
			first, err := p.WriteSnapshot(ctx, snapshot(t, 1, 1500), false)
			if err != nil {
				t.Fatal(err)
			}

			// The writer: a new revision every interval, as under continuous commits.
			const interval = 20 * time.Millisecond
			var writes atomic.Int64
			writerCtx, stopWriter := context.WithCancel(ctx)
			writerDone := make(chan error, 1)
			go func() {
				tick := time.NewTicker(interval)
				defer tick.Stop()
				for rev := int64(2); ; rev++ {
					select {
					case <-writerCtx.Done():
						writerDone <- nil
						return
					case <-tick.C:
					}
					if wait, err := p.SnapshotWait(writerCtx); err != nil || wait > 0 {
						if err != nil && writerCtx.Err() == nil {
							writerDone <- err
							return
						}
						continue
					}
					snap, err := cache.New(rev, protocol.SourceDatabase, cache.Synthetic(1500))
					if err == nil {
						_, err = p.WriteSnapshot(writerCtx, snap, false)
					}
					if err != nil {
						if writerCtx.Err() != nil {
							err = nil
						}
						writerDone <- err
						return
					}
					writes.Add(1)
				}
			}()
			defer func() {
				stopWriter()
				if err := <-writerDone; err != nil {
					t.Errorf("writer: %v", err)
				}
			}()

			// The reader: 1.5 s for one snapshot at its link's rate (75 intervals; the
			// writes take longer than the interval on a busy machine: at least 3 are
			// checked to happen during the read, which is 1 more than ever was kept).
			proxy := harness.NewProxy(t, srv.Addr())
			proxy.Throttle(int(float64(first.Size) / 1.5))
			slow, err := nats.Connect("nats://" + proxy.Addr())
			if err != nil {
				t.Fatal(err)
			}
			defer slow.Close()
			r := &protocol.Reader{NC: slow, Names: p.Names()}
			var moved int
			for {
				before, start := writes.Load(), time.Now()
				snap, m, err := r.Snapshot(ctx)
				took, during := time.Since(start), writes.Load()-before
				if errors.Is(err, protocol.ErrSnapshotMoved) && moved < 3 {
					moved++
					t.Logf("read %d: moved after %s (%d snapshots written meanwhile)", moved, took, during)
					continue
				}
				if err != nil {
					t.Fatalf("slow reader: %v after %s (%d snapshots written meanwhile, %d moved before)", err, took, during, moved)
				}
				if during < 3 {
					t.Fatalf("the read took %s while %d snapshots were written: not slower than several intervals; the test proves nothing", took, during)
				}
				t.Logf("slow reader: snapshot %d (%d chunks) in %s while %d snapshots were written", snap.Revision(), len(m.Sequences), took, during)
				break
			}
		})
	}
}
