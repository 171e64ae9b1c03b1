package syncer_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/beamline/registry-syncer/protocol"
	"github.com/beamline/registry-syncer/syncer"
)

// storedRaw returns the stored payload of the deltas from..to.
func (b *testBundle) storedRaw(t *testing.T, from, to int64) map[int64][]byte {
	t.Helper()
	out := map[int64][]byte{}
	names := b.names(t)
	for r := from; r <= to; r++ {
		st, err := b.reader.Last(context.Background(), names.DeltaStream, names.DeltaSubject(r))
		if err != nil {
			t.Fatalf("read delta %d: %v", r, err)
		}
		out[r] = st.Data
	}
	return out
}

// waitRestored waits until every delta in want is stored again, byte for byte.
func (b *testBundle) waitRestored(t *testing.T, want map[int64][]byte, within time.Duration) {
	t.Helper()
	names := b.names(t)
	waitFor(t, within, "the lost deltas republished", func() (bool, error) {
		for r, data := range want {
			st, err := b.reader.Last(context.Background(), names.DeltaStream, names.DeltaSubject(r))
			if err != nil {
				return false, err
			}
			if !bytes.Equal(st.Data, data) {
				t.Fatalf("delta %d republished with different content:\n%s\nwas:\n%s", r, st.Data, data)
			}
		}
		return true, nil
	})
}

// TestRepublishesDeltasTheStreamLost deletes the last stored deltas behind the syncer's
// back (what a NATS crash does to acknowledged messages it had not synced to disk): the
// syncer notices and republishes the same content.
func TestRepublishesDeltasTheStreamLost(t *testing.T) {
	t.Parallel()
	b := setup(t)
	r := b.start(t, nil)
	b.waitConverged(t, 10*time.Second)
	for i := 0; i < 20; i++ {
		b.exec(t, `INSERT INTO extensions (id, type, subject, timeout_ms) VALUES ('a', 'pre', 'beamline.ext.pre.a.v1', 100)
			ON CONFLICT (id) DO UPDATE SET timeout_ms = extensions.timeout_ms + 1`)
	}
	last := b.waitConverged(t, 10*time.Second).Revision()
	const lost = 5
	before := b.storedRaw(t, 1, last)

	ctx := context.Background()
	s := b.deltaStream(t)
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Oldest first: the syncer checks the stream concurrently, and a tail is only missing
	// once its last message is gone (deleting newest first, a check in between would
	// republish the newest and leave the stream with a hole below them).
	for seq := info.State.LastSeq - lost + 1; seq <= info.State.LastSeq; seq++ {
		if err := s.DeleteMsg(ctx, seq); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	b.waitRestored(t, before, 10*time.Second)
	took := time.Since(start)
	waitFor(t, 5*time.Second, "the republished metric counting them", func() (bool, error) {
		return testutil.ToFloat64(r.metrics.Republished) >= lost, nil // counted after the store is acknowledged
	})
	t.Logf("%d lost deltas republished within %s (heartbeat/check interval 100ms); republished metric %v",
		lost, took.Round(time.Millisecond), testutil.ToFloat64(r.metrics.Republished))
	// Publishing continues on top.
	b.exec(t, `UPDATE extensions SET timeout_ms = 4000 WHERE id = 'a'`)
	b.finalChecks(t)
	r.stop(t)
}

// TestRepublishesAfterTheStreamVanished removes the delta stream's whole directory while
// NATS is down (total loss of the stream) and commits while it is down and right after it
// comes back: the syncer recreates the stream, republishes the history it kept, and
// publishes the new revisions after it, in order.
func TestRepublishesAfterTheStreamVanished(t *testing.T) {
	t.Parallel()
	b := setup(t)
	r := b.start(t, nil)
	b.waitConverged(t, 10*time.Second)
	for i := 0; i < 10; i++ {
		b.exec(t, `INSERT INTO extensions (id, type, subject, timeout_ms) VALUES ('a', 'pre', 'beamline.ext.pre.a.v1', 100)
			ON CONFLICT (id) DO UPDATE SET timeout_ms = extensions.timeout_ms + 1`)
	}
	last := b.waitConverged(t, 10*time.Second).Revision()
	before := b.storedRaw(t, 1, last)

	dir := filepath.Join(b.nats.StoreDir, "jetstream", "$G", "streams", b.names(t).DeltaStream)
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("delta stream directory: %v", err)
	}
	b.nats.Shutdown()
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	// A commit while NATS is down, another right after it is back.
	b.exec(t, `UPDATE extensions SET timeout_ms = 3000 WHERE id = 'a'`)
	if err := b.nats.Start(); err != nil {
		t.Fatal(err)
	}
	b.exec(t, `UPDATE extensions SET timeout_ms = 3001 WHERE id = 'a'`)
	start := time.Now()
	b.waitRestored(t, before, 20*time.Second)
	t.Logf("stream recreated and %d deltas republished within %s of the restart", len(before), time.Since(start).Round(time.Millisecond))
	b.finalChecks(t)
	r.stop(t)
}

// loseTail simulates what a NATS crash does to messages it acknowledged but had not yet
// synced to disk: with the server stopped, it cuts the last n records off the stream's
// newest message block and removes the stream's index (stale after a crash), so that the
// server rebuilds the stream from what is on disk when it starts again.
func loseTail(t *testing.T, storeDir, stream string, n int) {
	t.Helper()
	dir := filepath.Join(storeDir, "jetstream", "$G", "streams", stream, "msgs")
	blks, err := filepath.Glob(filepath.Join(dir, "*.blk"))
	if err != nil || len(blks) == 0 {
		t.Fatalf("message blocks of %s: %v (%d)", stream, err, len(blks))
	}
	slices.SortFunc(blks, func(a, b string) int {
		na, _ := strconv.Atoi(strings.TrimSuffix(filepath.Base(a), ".blk"))
		nb, _ := strconv.Atoi(strings.TrimSuffix(filepath.Base(b), ".blk"))
		return na - nb
	})
	blk := blks[len(blks)-1]
	buf, err := os.ReadFile(blk)
	if err != nil {
		t.Fatal(err)
	}
	// A record starts with its length (4 bytes, little endian, the top bit flags headers).
	var starts []int
	for i := 0; i+4 <= len(buf); {
		starts = append(starts, i)
		rl := int(binary.LittleEndian.Uint32(buf[i:]) &^ (1 << 31))
		if rl <= 0 {
			t.Fatalf("%s: bad record length at %d", blk, i)
		}
		i += rl
	}
	if len(starts) < n {
		t.Fatalf("%s holds %d records, cannot lose %d", blk, len(starts), n)
	}
	if err := os.Truncate(blk, int64(starts[len(starts)-n])); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, "index.db")); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
}

// TestRepublishesTheTailLostInACrash loses the last stored deltas the way a NATS crash
// does (the stream comes back with a shorter tail and reuses its sequence numbers) while a
// commit waits to be published: the syncer publishes the new revision and republishes the
// lost ones, the same content, and the stream is complete again.
func TestRepublishesTheTailLostInACrash(t *testing.T) {
	t.Parallel()
	b := setup(t)
	r := b.start(t, nil)
	b.waitConverged(t, 10*time.Second)
	for i := 0; i < 20; i++ {
		b.exec(t, `INSERT INTO extensions (id, type, subject, timeout_ms) VALUES ('a', 'pre', 'beamline.ext.pre.a.v1', 100)
			ON CONFLICT (id) DO UPDATE SET timeout_ms = extensions.timeout_ms + 1`)
	}
	last := b.waitConverged(t, 10*time.Second).Revision()
	before := b.storedRaw(t, 1, last)

	b.nats.Shutdown()
	loseTail(t, b.nats.StoreDir, b.names(t).DeltaStream, 5)
	next := b.exec(t, `UPDATE extensions SET timeout_ms = 3000 WHERE id = 'a'`)
	if err := b.nats.Start(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	b.waitPublished(t, next, start, 20*time.Second)
	b.waitRestored(t, before, 20*time.Second)
	// Stored again, not found in place: the simulated crash did lose them.
	waitFor(t, 5*time.Second, "the republished metric counting them", func() (bool, error) {
		return testutil.ToFloat64(r.metrics.Republished) >= 5, nil // counted after the store is acknowledged
	})
	t.Logf("5 deltas lost in the crash republished, and revision %d published, within %s of the restart; republished metric %v",
		next, time.Since(start).Round(time.Millisecond), testutil.ToFloat64(r.metrics.Republished))
	b.finalChecks(t)
	r.stop(t)
}

// publishBadManifest stores a snapshot document and manifest for revision rev whose
// checksum matches nothing (a corrupt or foreign write), as the syncer stores them.
func (b *testBundle) publishBadManifest(t *testing.T, rev int64) {
	t.Helper()
	ctx := context.Background()
	js, err := jetstream.New(b.nc)
	if err != nil {
		t.Fatal(err)
	}
	names := b.names(t)
	const bad = "0000000000000000000000000000000000000000000000000000000000000000"
	doc := []byte(fmt.Sprintf(`{"revision":%d,"checksum":"%s","source":"database","count":0,"extensions":[]}`, rev, bad))
	chunk := nats.NewMsg(names.ChunkSubject(rev))
	chunk.Data = doc
	chunk.Header.Set(protocol.HeaderChunk, "0/1")
	ack, err := js.PublishMsg(ctx, chunk)
	if err != nil {
		t.Fatal(err)
	}
	man, err := json.Marshal(protocol.Manifest{Revision: rev, Checksum: bad, Source: protocol.SourceDatabase,
		Size: len(doc), Sequences: []uint64{ack.Sequence}, CreatedAt: time.Now().UTC()})
	if err != nil {
		t.Fatal(err)
	}
	mm := nats.NewMsg(names.Manifest())
	mm.Data = man
	if _, err := js.PublishMsg(ctx, mm); err != nil {
		t.Fatal(err)
	}
}

// TestReplacesABadManifest stores a manifest the syncer did not write: beyond the
// database's last revision (replaced at once when the syncer next writes), and at the
// very revision the syncer publishes next (replaced when it gets there, as its content
// differs). New routers can bootstrap again in both cases.
func TestReplacesABadManifest(t *testing.T) {
	t.Parallel()
	b := setup(t)
	r := b.start(t, nil)
	b.waitConverged(t, 10*time.Second)
	rev := b.exec(t, `INSERT INTO extensions (id, type, subject) VALUES ('a', 'pre', 'beamline.ext.pre.a.v1')`)
	b.waitConverged(t, 10*time.Second)

	b.publishBadManifest(t, rev+5)
	b.exec(t, `UPDATE extensions SET timeout_ms = 300 WHERE id = 'a'`)
	b.waitConverged(t, 10*time.Second)

	next := b.dbRevision(t) + 1
	b.publishBadManifest(t, next)
	if got := b.exec(t, `UPDATE extensions SET timeout_ms = 400 WHERE id = 'a'`); got != next {
		t.Fatalf("committed revision %d, want %d", got, next)
	}
	b.finalChecks(t)
	r.stop(t)
}

// deleteDelta removes the stored delta of revision rev from the stream (a hole in the
// middle: the tail stays intact).
func (b *testBundle) deleteDelta(t *testing.T, rev int64) {
	t.Helper()
	names := b.names(t)
	st, err := b.reader.Last(context.Background(), names.DeltaStream, names.DeltaSubject(rev))
	if err != nil {
		t.Fatalf("read delta %d: %v", rev, err)
	}
	if err := b.deltaStream(t).DeleteMsg(context.Background(), st.Sequence); err != nil {
		t.Fatalf("delete delta %d: %v", rev, err)
	}
}

// TestHoleInTheMiddleRepaired deletes one delta from the middle of the stream, between the
// stored snapshot and the head, while the syncer runs and the registry is idle: the
// syncer must notice within a few heartbeats (not at the next snapshot) and store it again
// with its original content, without announcing it live again.
func TestHoleInTheMiddleRepaired(t *testing.T) {
	t.Parallel()
	b := setup(t)
	live := b.recordLive(t)
	// A snapshot that stays behind: the hole lies between it and the head.
	r := b.start(t, func(c *syncer.Config) { c.SnapshotInterval = time.Hour })
	b.waitConverged(t, 10*time.Second)
	var last int64
	for i := 0; i < 10; i++ {
		last = b.exec(t, fmt.Sprintf(`INSERT INTO extensions (id, type, subject) VALUES ('e%d', 'pre', 'beamline.ext.pre.e%d.v1')`, i, i))
	}
	b.waitPublished(t, last, time.Now(), 10*time.Second)
	man, err := b.reader.Manifest(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	hole := last - 4
	if man.Revision >= hole {
		t.Fatalf("the stored snapshot is at %d, want it below the hole at %d", man.Revision, hole)
	}
	want := b.storedRaw(t, hole, hole)
	b.deleteDelta(t, hole)
	deleted := time.Now()
	b.waitRestored(t, want, 10*time.Second)
	t.Logf("hole at revision %d (snapshot %d, head %d) repaired %s after the delete (heartbeat 100ms)",
		hole, man.Revision, last, time.Since(deleted).Round(time.Millisecond))
	if n := testutil.ToFloat64(r.metrics.Republished); n != 1 {
		t.Errorf("republished %v deltas, want 1", n)
	}
	live.checkOrder(t, true) // announced once, in order: the repair was not re-announced
	if _, err := b.follow(context.Background()); err != nil {
		t.Errorf("a new router cannot follow the chain: %v", err)
	}
	r.stop(t)
}

// TestBrokenChainWhileDownNeverMislabelsTheSnapshot breaks the stored chain while no syncer
// runs (a delta between the snapshot and the head deleted). The restarted syncer publishes
// a full sync under a new revision; every snapshot it writes must hold the content of its
// own revision (its checksum equals the checksum of that revision's delta): never the old
// snapshot's content under the newest label.
func TestBrokenChainWhileDownNeverMislabelsTheSnapshot(t *testing.T) {
	t.Parallel()
	b := setup(t)
	r := b.start(t, func(c *syncer.Config) { c.SnapshotInterval = time.Hour })
	b.waitConverged(t, 10*time.Second)
	var last int64
	for i := 0; i < 6; i++ {
		last = b.exec(t, fmt.Sprintf(`INSERT INTO extensions (id, type, subject) VALUES ('e%d', 'pre', 'beamline.ext.pre.e%d.v1')`, i, i))
	}
	b.waitPublished(t, last, time.Now(), 10*time.Second)
	r.stop(t)
	b.deleteDelta(t, last-2)

	// Every manifest written from now on, as it is written.
	names := b.names(t)
	var mu sync.Mutex
	var manifests []*protocol.Manifest
	sub, err := b.nc.Subscribe(names.Manifest(), func(m *nats.Msg) {
		var man protocol.Manifest
		if err := json.Unmarshal(m.Data, &man); err != nil {
			t.Errorf("manifest %q: %v", m.Data, err)
			return
		}
		mu.Lock()
		manifests = append(manifests, &man)
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := b.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	r = b.start(t, nil)
	b.waitConverged(t, 15*time.Second)
	mu.Lock()
	defer mu.Unlock()
	if len(manifests) == 0 {
		t.Fatal("the restarted syncer wrote no snapshot")
	}
	for _, man := range manifests {
		d, err := b.reader.Delta(context.Background(), man.Revision)
		if err != nil {
			t.Errorf("snapshot %d: no delta of that revision to compare with: %v", man.Revision, err)
			continue
		}
		if man.Checksum != d.Checksum {
			t.Errorf("snapshot labelled revision %d holds checksum %s, the revision's delta says %s: another revision's content",
				man.Revision, man.Checksum, d.Checksum)
		}
	}
	r.stop(t)
}
