package client

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/beamline/registry-syncer/cache"
	"github.com/beamline/registry-syncer/protocol"
	"github.com/beamline/registry-syncer/test/harness"
)

func TestBootstrapAndApply(t *testing.T) {
	t.Parallel()
	srv := harness.NewNATS(t, harness.NATSOptions{})
	src := newSource(t, srv, 20, "")
	c := startClient(t, srv.Connect(t), Config{WaitBootstrap: true})

	if !c.Ready() || c.Revision() != 1 || c.Snapshot().Checksum() != src.state().Checksum() {
		t.Fatalf("after bootstrap: ready %v revision %d", c.Ready(), c.Revision())
	}
	ev := c.Events()
	if len(ev) != 1 || ev[0].old != nil || len(ev[0].changed) != 20 {
		t.Fatalf("bootstrap OnChange: %+v", ev)
	}
	// Disabled extensions: known; one whose enabled v2 routes tenants t1 and t2 is in
	// rollout (PROTOCOL.md §3.1): returned, and serves those tenants only.
	e9, ok := c.Lookup("ext.000009")
	if !ok || e9.Enabled {
		t.Fatal("Lookup should return the disabled extension in rollout")
	}
	if ch, ok := e9.Choose(map[string]string{"tenant": "t1"}); !ok || ch.Version != "v2" {
		t.Errorf("disabled extension in rollout: tenant t1 got %+v, %v; want v2", ch, ok)
	}
	if _, ok := e9.Choose(map[string]string{"tenant": "t3"}); ok {
		t.Error("disabled extension in rollout served tenant t3, who is not in the rollout")
	}
	for _, e := range c.ByType(cache.TypeValidator) {
		if !e.Serves() {
			t.Errorf("ByType returned %s, which serves nobody", e.ID)
		}
	}
	if e, ok := c.Lookup("ext.000001"); !ok || e.ID != "ext.000001" {
		t.Fatal("Lookup ext.000001")
	}

	src.commit(src.touch("ext.000001", 777))
	src.commit(cache.Change{Op: cache.OpDelete, Kind: cache.KindAggregate, ID: "ext.000002"}, aggregate(t, newExtension("ext.new", true)))
	e3, _ := src.state().Get("ext.000003")
	off := *e3
	off.Enabled = false
	off.Versions = nil // no version in rollout: never invoked
	src.commit(aggregate(t, &off))
	waitSame(t, c, src)

	if got := c.revisions(); !equalRevs(got, []int64{1, 2, 3, 4}) {
		t.Fatalf("OnChange revisions %v", got)
	}
	ev = c.Events()
	if !slices.Equal(ev[1].changed, []string{"ext.000001"}) || !slices.Equal(ev[2].changed, []string{"ext.000002", "ext.new"}) ||
		!slices.Equal(ev[3].changed, []string{"ext.000003"}) {
		t.Errorf("changed ids: %v %v %v", ev[1].changed, ev[2].changed, ev[3].changed)
	}
	if ev[1].old != ev[0].new || ev[3].old != ev[2].new {
		t.Error("OnChange old is not the previously installed snapshot")
	}
	if e, _ := c.Lookup("ext.000001"); e.TimeoutMS != 777 {
		t.Errorf("timeout %d", e.TimeoutMS)
	}
	if _, ok := c.Lookup("ext.000002"); ok {
		t.Error("deleted extension still found")
	}
	if _, ok := c.Lookup("ext.000003"); ok {
		t.Error("disabled extension still returned by Lookup")
	}
	if _, ok := c.Lookup("ext.new"); !ok {
		t.Error("new extension not found")
	}
	if c.applied.Load() != 3 || c.rejections.Load() != 0 || c.resyncs.Load() != 0 {
		t.Errorf("applied %d rejections %d resyncs %d", c.applied.Load(), c.rejections.Load(), c.resyncs.Load())
	}
	if c.LastHeard().IsZero() {
		t.Error("LastHeard is zero after deltas")
	}
	before := c.LastHeard()
	src.heartbeat()
	waitFor(t, "the heartbeat to be heard", func() bool { return c.LastHeard().After(before) })
}

func TestCustomPrefix(t *testing.T) {
	t.Parallel()
	srv := harness.NewNATS(t, harness.NATSOptions{})
	src := newSource(t, srv, 5, "acme.registry-v2")
	other := newSource(t, srv, 7, "") // the default prefix, on the same server
	c := startClient(t, srv.Connect(t), Config{Prefix: "acme.registry-v2", WaitBootstrap: true})
	other.commit(other.touch("ext.000001", 99))
	src.commit(src.touch("ext.000001", 88))
	waitSame(t, c, src)
	if c.Snapshot().Len() != 5 {
		t.Fatalf("read the wrong registry: %d extensions", c.Snapshot().Len())
	}
}

func TestDuplicateDeltaIgnored(t *testing.T) {
	t.Parallel()
	srv := harness.NewNATS(t, harness.NATSOptions{})
	src := newSource(t, srv, 10, "")
	c := startClient(t, srv.Connect(t), Config{WaitBootstrap: true})

	d2, data2 := src.next(src.touch("ext.000001", 300))
	src.publish(d2, data2)
	src.publish(d2, data2) // a syncer retry: already stored, announced again
	src.announce(data2)    // and a plain duplicate on the live subject
	src.commit(src.touch("ext.000002", 400))
	waitSame(t, c, src)
	src.announce(data2) // old news after newer revisions
	src.heartbeat()
	waitFor(t, "the heartbeat", func() bool { return c.lastHeard.Load() != 0 })
	before := c.LastHeard()
	src.heartbeat()
	waitFor(t, "the second heartbeat", func() bool { return c.LastHeard().After(before) })

	if got := c.revisions(); !equalRevs(got, []int64{1, 2, 3}) {
		t.Fatalf("OnChange revisions %v, want [1 2 3]", got)
	}
	if c.applied.Load() != 2 || c.rejections.Load() != 0 || c.resyncs.Load() != 0 {
		t.Errorf("applied %d rejections %d resyncs %d", c.applied.Load(), c.rejections.Load(), c.resyncs.Load())
	}
}

func TestGapFromDeltaPrevFetchedFromStream(t *testing.T) {
	t.Parallel()
	srv := harness.NewNATS(t, harness.NATSOptions{})
	src := newSource(t, srv, 10, "")
	c := startClient(t, srv.Connect(t), Config{WaitBootstrap: true})

	// Revisions 2 and 3 are stored but their announcements are lost.
	src.store(src.next(src.touch("ext.000001", 201)))
	src.store(src.next(src.touch("ext.000002", 202)))
	src.commit(src.touch("ext.000003", 203))
	waitSame(t, c, src)

	if got := c.revisions(); !equalRevs(got, []int64{1, 2, 3, 4}) {
		t.Fatalf("OnChange revisions %v", got)
	}
	if c.applied.Load() != 3 || c.resyncs.Load() != 1 || c.rejections.Load() != 0 {
		t.Errorf("applied %d resyncs %d rejections %d", c.applied.Load(), c.resyncs.Load(), c.rejections.Load())
	}
}

func TestGapWithRevisionJumps(t *testing.T) {
	t.Parallel()
	srv := harness.NewNATS(t, harness.NATSOptions{})
	src := newSource(t, srv, 10, "")
	c := startClient(t, srv.Connect(t), Config{WaitBootstrap: true})

	// Revisions 2..4 never touched the registry; 5 (prev 1) is stored, not announced.
	src.store(src.nextAt(5, src.touch("ext.000001", 205)))
	src.publish(src.nextAt(9, src.touch("ext.000002", 209)))
	waitSame(t, c, src)
	if got := c.revisions(); !equalRevs(got, []int64{1, 5, 9}) {
		t.Fatalf("OnChange revisions %v", got)
	}
}

func TestGapDetectedFromHeartbeat(t *testing.T) {
	t.Parallel()
	srv := harness.NewNATS(t, harness.NATSOptions{})
	src := newSource(t, srv, 10, "")
	c := startClient(t, srv.Connect(t), Config{WaitBootstrap: true})

	src.store(src.next(src.touch("ext.000001", 301)))
	src.store(src.next(src.touch("ext.000002", 302)))
	src.heartbeat()
	waitSame(t, c, src)
	if got := c.revisions(); !equalRevs(got, []int64{1, 2, 3}) {
		t.Fatalf("OnChange revisions %v", got)
	}
	if c.resyncs.Load() != 1 {
		t.Errorf("resyncs %d", c.resyncs.Load())
	}
}

func TestMissingDeltaRebootstrapsFromNewerSnapshot(t *testing.T) {
	t.Parallel()
	srv := harness.NewNATS(t, harness.NATSOptions{})
	src := newSource(t, srv, 10, "")
	c := startClient(t, srv.Connect(t), Config{WaitBootstrap: true})

	src.next(src.touch("ext.000001", 401)) // revision 2: never stored (lost, or aged out)
	src.commit(src.touch("ext.000002", 402))
	// The client finds revision 2 missing, and the snapshot (revision 1) behind.
	waitFor(t, "the client to retry the resync", func() bool { return c.resyncs.Load() == 1 })
	if c.Revision() != 1 {
		t.Fatalf("revision %d: applied across a gap", c.Revision())
	}
	// The snapshot catches up, as the syncer's snapshot writer does ~1 s later.
	src.writeSnapshot()
	waitSame(t, c, src)
	if got := c.revisions(); !equalRevs(got, []int64{1, 3}) {
		t.Fatalf("OnChange revisions %v", got)
	}
	ev := c.Events()
	if !slices.Equal(ev[1].changed, []string{"ext.000001", "ext.000002"}) {
		t.Errorf("changed %v", ev[1].changed)
	}
	if c.applied.Load() != 0 || c.rejections.Load() != 0 {
		t.Errorf("applied %d rejections %d", c.applied.Load(), c.rejections.Load())
	}
}

func TestResyncDelta(t *testing.T) {
	t.Parallel()
	srv := harness.NewNATS(t, harness.NATSOptions{})
	src := newSource(t, srv, 10, "")
	c := startClient(t, srv.Connect(t), Config{WaitBootstrap: true})

	// A revision too large for one message: the syncer announces a resync delta
	// (here before the snapshot is written, the slow case).
	d, _ := src.next(src.touch("ext.000001", 501), src.touch("ext.000002", 502))
	rd := *d
	rd.Resync, rd.Changes = true, nil
	data, err := json.Marshal(&rd)
	if err != nil {
		t.Fatal(err)
	}
	src.publish(&rd, data)
	waitFor(t, "the resync to start", func() bool { return c.resyncs.Load() == 1 })
	src.writeSnapshot()
	waitSame(t, c, src)
	if got := c.revisions(); !equalRevs(got, []int64{1, 2}) {
		t.Fatalf("OnChange revisions %v", got)
	}
	src.commit(src.touch("ext.000003", 503))
	waitSame(t, c, src)
	if c.applied.Load() != 1 {
		t.Errorf("applied %d", c.applied.Load())
	}
}

func TestDriftFromHeartbeat(t *testing.T) {
	t.Parallel()
	srv := harness.NewNATS(t, harness.NATSOptions{})
	src := newSource(t, srv, 10, "")
	c := startClient(t, srv.Connect(t), Config{WaitBootstrap: true})

	// The syncer's state at revision 1 differs from what routers hold.
	exts := cache.Synthetic(10)
	exts[4].TimeoutMS = 4444
	drifted, err := cache.New(1, protocol.SourceDatabase, exts)
	if err != nil {
		t.Fatal(err)
	}
	src.mu.Lock()
	src.snap = drifted
	src.mu.Unlock()
	if _, err := src.pub.WriteSnapshot(context.Background(), drifted, true); err != nil {
		t.Fatal(err)
	}
	src.heartbeat()
	waitSame(t, c, src)
	ev := c.Events()
	if len(ev) != 2 || !slices.Equal(ev[1].changed, []string{"ext.000004"}) {
		t.Fatalf("events %d, changed %v", len(ev), ev[len(ev)-1].changed)
	}
}

// TestStartupRace publishes deltas while the client subscribes and reads the
// snapshot: every revision is installed exactly once, none is lost.
func TestStartupRace(t *testing.T) {
	t.Parallel()

	t.Run("DeltaAfterSubscribeNotInSnapshot", func(t *testing.T) {
		t.Parallel()
		srv := harness.NewNATS(t, harness.NATSOptions{})
		src := newSource(t, srv, 10, "")
		c := newClient(t, srv.Connect(t), Config{})
		hooked := make(chan struct{})
		c.testBeforeBootstrap = func() {
			src.commit(src.touch("ext.000001", 601))
			close(hooked)
		}
		if err := c.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		<-hooked
		waitSame(t, c, src)
		src.commit(src.touch("ext.000002", 602))
		waitSame(t, c, src)
		if got := c.revisions(); !equalRevs(got, []int64{1, 2, 3}) {
			t.Fatalf("OnChange revisions %v", got)
		}
		if c.applied.Load() != 2 {
			t.Errorf("applied %d", c.applied.Load())
		}
	})

	t.Run("DeltaAfterSubscribeAlreadyInSnapshot", func(t *testing.T) {
		t.Parallel()
		srv := harness.NewNATS(t, harness.NATSOptions{})
		src := newSource(t, srv, 10, "")
		c := newClient(t, srv.Connect(t), Config{})
		hooked := make(chan struct{})
		c.testBeforeBootstrap = func() {
			src.commit(src.touch("ext.000001", 611))
			src.writeSnapshot()
			close(hooked)
		}
		if err := c.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		<-hooked
		waitSame(t, c, src)
		src.commit(src.touch("ext.000002", 612))
		waitSame(t, c, src)
		if got := c.revisions(); !equalRevs(got, []int64{2, 3}) {
			t.Fatalf("OnChange revisions %v (the buffered delta 2 must be ignored)", got)
		}
		if c.applied.Load() != 1 {
			t.Errorf("applied %d", c.applied.Load())
		}
	})

	t.Run("Concurrent", func(t *testing.T) {
		t.Parallel()
		srv := harness.NewNATS(t, harness.NATSOptions{})
		src := newSource(t, srv, 50, "")
		const revisions, clients = 200, 12
		started := make(chan *testClient, clients)
		var wg sync.WaitGroup
		nc := srv.Connect(t)
		launched := 0
		wg.Go(func() {
			for i := range revisions {
				src.commit(src.touch(fmt.Sprintf("ext.%06d", i%50), 10+i))
				if i%15 == 0 {
					src.writeSnapshot()
				}
				if i%(revisions/clients) == 0 && launched < clients {
					launched++
					// Start a client in the middle of the stream of deltas.
					wg.Go(func() {
						c := newClient(t, nc, Config{})
						if err := c.Start(context.Background()); err != nil {
							t.Error(err)
						}
						started <- c
					})
				}
			}
		})
		wg.Wait()
		close(started)
		src.heartbeat()
		n := 0
		for c := range started {
			n++
			waitSame(t, c, src)
			revs := c.revisions()
			for i := 1; i < len(revs); i++ {
				if revs[i] <= revs[i-1] {
					t.Fatalf("client installed revision %d after %d: %v", revs[i], revs[i-1], revs)
				}
			}
			if c.rejections.Load() != 0 {
				t.Errorf("rejections %d: %v", c.rejections.Load(), c.Errors())
			}
		}
		if n != clients {
			t.Fatalf("%d clients started", n)
		}
	})
}

func TestCorruptLiveMessageRejected(t *testing.T) {
	t.Parallel()
	srv := harness.NewNATS(t, harness.NATSOptions{})
	src := newSource(t, srv, 10, "")
	c := startClient(t, srv.Connect(t), Config{WaitBootstrap: true})
	good := c.Snapshot()

	check := func(t *testing.T, rejections uint64) {
		t.Helper()
		waitFor(t, "the rejection", func() bool { return c.rejections.Load() == rejections && len(c.Errors()) == int(rejections) })
		if c.Snapshot() != good {
			t.Fatal("the last good snapshot was replaced")
		}
		errs := c.Errors()
		if len(errs) != int(rejections) || !allRejected(errs) {
			t.Fatalf("OnError got %v", errs)
		}
		if e, ok := c.Lookup("ext.000001"); !ok || e.TimeoutMS != good.All()[1].TimeoutMS {
			t.Fatal("lookups no longer serve the last good snapshot")
		}
	}

	src.announce([]byte("\x00garbage{"))
	check(t, 1)

	// Valid JSON and envelope, but applying it does not give its checksum.
	ch := src.touch("ext.000001", 999)
	bad := &protocol.Delta{Revision: 2, PrevRevision: 1, Checksum: strings.Repeat("ab", 32), Count: 10,
		Source: protocol.SourceDatabase, CommittedAt: time.Now(), Changes: []cache.Change{ch}}
	data, _ := json.Marshal(bad)
	src.announce(data)
	check(t, 2)

	// A change that cannot be applied (a version of an unknown extension).
	bad.Checksum = good.Checksum()
	bad.Changes = []cache.Change{{Op: cache.OpPut, Kind: cache.KindVersion, ID: "nope", Key: "v1",
		Value: json.RawMessage(`{"version":"v1","subject":"beamline.ext.pre.nope.v1","timeout_ms":100,"retry":0,"enabled":true,"config":{},"metadata":{},"routing_rules":{}}`)}}
	data, _ = json.Marshal(bad)
	src.announce(data)
	check(t, 3)

	// An envelope that fails validation.
	src.announce([]byte(`{"revision":2,"prev_revision":5,"checksum":"x","count":1,"source":"database","changes":[]}`))
	check(t, 4)

	// The next good revision converges.
	src.commit(src.touch("ext.000001", 998))
	waitSame(t, c, src)
	if got := c.revisions(); !equalRevs(got, []int64{1, 2}) {
		t.Fatalf("OnChange revisions %v", got)
	}
}

// writeRawSnapshot stores the document doc as a one-chunk snapshot whose
// manifest claims the given revision and checksum.
func writeRawSnapshot(t *testing.T, src *source, rev int64, sum string, doc []byte) {
	t.Helper()
	writeRawSnapshotWith(t, src, rev, doc, func(m *protocol.Manifest) { m.Checksum = sum })
}

// writeRawSnapshotWith stores doc as a one-chunk snapshot of revision rev, with the
// manifest edit gives.
func writeRawSnapshotWith(t *testing.T, src *source, rev int64, doc []byte, edit func(*protocol.Manifest)) {
	t.Helper()
	n := src.names()
	m := nats.NewMsg(n.ChunkSubject(rev))
	m.Data = doc
	m.Header.Set(protocol.HeaderChunk, "0/1")
	ack, err := src.js.PublishMsg(context.Background(), m)
	if err != nil {
		t.Fatal(err)
	}
	man := &protocol.Manifest{Revision: rev, Source: protocol.SourceDatabase, Count: 10,
		Size: len(doc), Sequences: []uint64{ack.Sequence}, CreatedAt: time.Now()}
	edit(man)
	src.storeManifest(man)
}

func otherChecksum(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

func TestSnapshotWithWrongChecksumRejected(t *testing.T) {
	t.Parallel()

	for _, tc := range []struct {
		name    string
		corrupt func(t *testing.T, snap *cache.Snapshot) (sum string, doc []byte)
	}{
		{"ManifestChecksum", func(t *testing.T, snap *cache.Snapshot) (string, []byte) {
			doc, err := snap.Encode()
			if err != nil {
				t.Fatal(err)
			}
			return otherChecksum("x"), doc
		}},
		{"DocumentContent", func(t *testing.T, snap *cache.Snapshot) (string, []byte) {
			doc, err := snap.Encode()
			if err != nil {
				t.Fatal(err)
			}
			doc = []byte(strings.Replace(string(doc), `"timeout_ms":`, `"timeout_ms":1`, 1))
			return snap.Checksum(), doc
		}},
	} {
		t.Run(tc.name+"/Fresh", func(t *testing.T) {
			t.Parallel()
			srv := harness.NewNATS(t, harness.NATSOptions{})
			src := newSource(t, srv, 10, "")
			snap3, err := cache.New(3, protocol.SourceDatabase, cache.Synthetic(10))
			if err != nil {
				t.Fatal(err)
			}
			sum, doc := tc.corrupt(t, snap3)
			writeRawSnapshot(t, src, 3, sum, doc)

			c := startClient(t, srv.Connect(t), Config{})
			waitFor(t, "the rejection", func() bool { return c.rejections.Load() == 1 && len(c.Errors()) == 1 })
			if c.Ready() || c.Snapshot() != nil {
				t.Fatal("a bad snapshot was installed")
			}
			if errs := c.Errors(); len(errs) != 1 || !allRejected(errs) || !errors.Is(errs[0], protocol.ErrInvalid) {
				t.Fatalf("OnError got %v", errs)
			}
			// A good snapshot replaces it.
			src.mu.Lock()
			src.snap, _, _ = src.snap.Apply(4, protocol.SourceDatabase, nil)
			src.mu.Unlock()
			src.writeSnapshot()
			waitSame(t, c, src)
			if c.rejections.Load() != 1 {
				t.Errorf("the same bad snapshot was rejected %d times", c.rejections.Load())
			}
		})

		t.Run(tc.name+"/KeepsPrevious", func(t *testing.T) {
			t.Parallel()
			srv := harness.NewNATS(t, harness.NATSOptions{})
			src := newSource(t, srv, 10, "")
			c := startClient(t, srv.Connect(t), Config{WaitBootstrap: true})
			good := c.Snapshot()

			snap5, _, err := good.Apply(5, protocol.SourceDatabase, []cache.Change{src.touch("ext.000001", 55)})
			if err != nil {
				t.Fatal(err)
			}
			sum, doc := tc.corrupt(t, snap5)
			writeRawSnapshot(t, src, 5, sum, doc)
			src.mu.Lock()
			src.snap = snap5
			src.mu.Unlock()
			src.heartbeat() // revision 5: the client looks for it
			waitFor(t, "the rejection", func() bool { return c.rejections.Load() == 1 })
			if c.Snapshot() != good || !c.Ready() {
				t.Fatal("the previous snapshot was not kept")
			}
			src.mu.Lock()
			src.snap, _, _ = snap5.Apply(6, protocol.SourceDatabase, nil)
			src.mu.Unlock()
			src.writeSnapshot()
			src.heartbeat()
			waitSame(t, c, src)
		})
	}
}

// A manifest whose size cannot be true is refused before anything is read or
// allocated for it.
func TestManifestWithImpossibleSizeRejected(t *testing.T) {
	t.Parallel()
	srv := harness.NewNATS(t, harness.NATSOptions{})
	src := newSource(t, srv, 10, "")
	c := startClient(t, srv.Connect(t), Config{WaitBootstrap: true})
	good := c.Snapshot()

	src.storeManifest(&protocol.Manifest{Revision: 7, Checksum: otherChecksum("x"), Source: protocol.SourceDatabase,
		Count: 10, Size: 1 << 62, Sequences: []uint64{1}, CreatedAt: time.Now()})
	src.sendHeartbeat(&protocol.Heartbeat{Revision: 7, Checksum: otherChecksum("x"), Source: "database", Time: time.Now(), IntervalMS: 1000}, src.signer)
	waitFor(t, "the rejection", func() bool { return c.rejections.Load() == 1 && len(c.Errors()) == 1 })
	if c.Snapshot() != good || !errors.Is(c.Errors()[0], protocol.ErrInvalid) {
		t.Fatalf("snapshot replaced, or error %v", c.Errors())
	}
}

func TestNoConsumersWithFiftyClients(t *testing.T) {
	t.Parallel()
	srv := harness.NewNATS(t, harness.NATSOptions{})
	src := newSource(t, srv, 30, "")
	src.commit(src.touch("ext.000001", 700)) // something to catch up on after the snapshot
	conns := make([]*nats.Conn, 5)
	for i := range conns {
		conns[i] = srv.Connect(t)
	}
	clients := make([]*testClient, 50)
	for i := range clients {
		clients[i] = startClient(t, conns[i%len(conns)], Config{})
	}
	for i := range 3 {
		src.commit(src.touch("ext.000002", 701+i))
	}
	src.heartbeat()
	for _, c := range clients {
		waitSame(t, c, src)
	}
	n, err := srv.ConsumerCount()
	if err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("%d JetStream consumers exist; the client must create none", n)
	}
}

func TestLateJoiner(t *testing.T) {
	t.Parallel()
	srv := harness.NewNATS(t, harness.NATSOptions{})
	src := newSource(t, srv, 10, "")
	src.commit(src.touch("ext.000001", 801))
	src.commit(src.touch("ext.000002", 802)) // the snapshot lags at revision 1
	src.nc.Close()                           // no syncer any more

	c := startClient(t, srv.Connect(t), Config{WaitBootstrap: true})
	waitSame(t, c, src)
	if got := c.revisions(); !equalRevs(got, []int64{1, 2, 3}) {
		t.Fatalf("OnChange revisions %v", got)
	}
}

func TestMultiChunkSnapshot(t *testing.T) {
	t.Parallel()
	srv := harness.NewNATS(t, harness.NATSOptions{MaxPayload: 64 * 1024})
	src := newSource(t, srv, 2000, "")
	man, err := src.pub.Reader().Manifest(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(man.Sequences) < 2 {
		t.Fatalf("snapshot of %d bytes in %d chunk(s): not multi-chunk", man.Size, len(man.Sequences))
	}
	c := startClient(t, srv.Connect(t), Config{WaitBootstrap: true})
	waitSame(t, c, src)
	if c.Snapshot().Len() != 2000 {
		t.Fatalf("%d extensions", c.Snapshot().Len())
	}
	src.commit(src.touch("ext.001999", 123))
	waitSame(t, c, src)
	t.Logf("snapshot: %d bytes in %d chunks", man.Size, len(man.Sequences))
}

func TestFallback(t *testing.T) {
	t.Parallel()

	t.Run("UsedThenReplaced", func(t *testing.T) {
		t.Parallel()
		srv := harness.NewNATS(t, harness.NATSOptions{})
		fixtures, err := cache.New(0, "", cache.Synthetic(3))
		if err != nil {
			t.Fatal(err)
		}
		c := startClient(t, srv.Connect(t), Config{
			WaitBootstrap: true,
			FallbackAfter: 50 * time.Millisecond,
			Fallback:      func() (*cache.Snapshot, error) { return fixtures, nil },
		})
		if !c.Ready() || c.Snapshot().Source() != protocol.SourceFixtures || c.Snapshot().Len() != 3 {
			t.Fatalf("fallback not served: ready %v", c.Ready())
		}
		if got := gaugeValue(t, c, "registry_client_fallback"); got != 1 {
			t.Errorf("registry_client_fallback %v", got)
		}

		src := newSource(t, srv, 10, "")
		src.heartbeat()
		waitSame(t, c, src)
		if c.Snapshot().Source() != protocol.SourceDatabase {
			t.Fatalf("source %q", c.Snapshot().Source())
		}
		ev := c.Events()
		if len(ev) != 2 || ev[0].old != nil || ev[1].old.Source() != protocol.SourceFixtures {
			t.Fatalf("events %+v", ev)
		}
		if gaugeValue(t, c, "registry_client_fallback") != 0 {
			t.Error("registry_client_fallback still 1")
		}
		src.commit(src.touch("ext.000001", 901))
		waitSame(t, c, src)
	})

	t.Run("NotUsedWhenTheRegistryAnswers", func(t *testing.T) {
		t.Parallel()
		srv := harness.NewNATS(t, harness.NATSOptions{})
		src := newSource(t, srv, 10, "")
		called := make(chan struct{}, 1)
		c := startClient(t, srv.Connect(t), Config{
			WaitBootstrap: true,
			FallbackAfter: time.Nanosecond,
			Fallback:      func() (*cache.Snapshot, error) { called <- struct{}{}; return nil, errors.New("unused") },
		})
		waitSame(t, c, src)
		select {
		case <-called:
			t.Fatal("fallback used although the snapshot was readable")
		default:
		}
	})

	t.Run("FailureReported", func(t *testing.T) {
		t.Parallel()
		srv := harness.NewNATS(t, harness.NATSOptions{})
		c := startClient(t, srv.Connect(t), Config{
			FallbackAfter: time.Millisecond,
			Fallback:      func() (*cache.Snapshot, error) { return nil, errors.New("no fixtures dir") },
		})
		waitFor(t, "OnError", func() bool { return len(c.Errors()) > 0 })
		if c.Ready() || !strings.Contains(c.Errors()[0].Error(), "no fixtures dir") {
			t.Fatalf("ready %v errors %v", c.Ready(), c.Errors())
		}
	})
}

func TestBufferOverflowCatchesUp(t *testing.T) {
	t.Parallel()
	srv := harness.NewNATS(t, harness.NATSOptions{})
	src := newSource(t, srv, 10, "")
	release := make(chan struct{})
	quiet := nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}) // the slow-consumer report is expected
	c := startClient(t, srv.Connect(t, quiet), Config{
		WaitBootstrap: true,
		BufferSize:    4,
		OnChange: func(_, new *cache.Snapshot, _ []string) {
			if new.Revision() == 2 {
				<-release // the client is busy; live messages pile up
			}
		},
	})
	for i := range 40 {
		src.commit(src.touch("ext.000001", 100+i))
	}
	waitFor(t, "the buffer to drop messages", func() bool { return c.dropped() > 0 })
	close(release)
	waitSame(t, c, src)
	if c.resyncs.Load() == 0 {
		t.Error("no resync after dropped messages")
	}
	revs := c.revisions()
	for i := 1; i < len(revs); i++ {
		if revs[i] != revs[i-1]+1 {
			t.Fatalf("revisions not applied one by one: %v", revs)
		}
	}
}

// TestBufferBoundInBytes: with room for thousands of messages but only 16 KiB, large
// deltas arriving while the client is busy are dropped once they would exceed the
// bytes, never queued beyond them; the client then catches up from the stream.
func TestBufferBoundInBytes(t *testing.T) {
	t.Parallel()
	srv := harness.NewNATS(t, harness.NATSOptions{})
	src := newSource(t, srv, 10, "")
	release := make(chan struct{})
	const bound = 16 << 10
	c := startClient(t, srv.Connect(t), Config{
		WaitBootstrap: true,
		BufferSize:    4096,
		BufferBytes:   bound,
		OnChange: func(_, new *cache.Snapshot, _ []string) {
			if new.Revision() == 2 {
				<-release
			}
		},
	})
	big := strings.Repeat("x", 3000)
	for i := range 30 {
		e, _ := src.state().Get("ext.000002")
		cp := *e
		cp.Metadata = json.RawMessage(fmt.Sprintf(`{"pad":%q,"n":%d}`, big, i))
		src.commit(aggregate(t, &cp))
	}
	waitFor(t, "the buffer to drop messages by bytes", func() bool { return c.dropped() > 0 })
	if d := c.dropped(); d >= 30 {
		t.Errorf("%d of 30 dropped: the buffer held none", d)
	}
	c.msgs.mu.Lock()
	peak := c.msgs.peakBytes
	c.msgs.mu.Unlock()
	if peak > bound || peak == 0 {
		t.Errorf("the buffer held up to %d bytes, bound %d", peak, bound)
	}
	close(release)
	waitSame(t, c, src)
	if c.resyncs.Load() == 0 {
		t.Error("no resync after dropped messages")
	}
}

func TestConfig(t *testing.T) {
	t.Parallel()
	srv := harness.NewNATS(t, harness.NATSOptions{})
	nc := srv.Connect(t)

	if _, err := New(nil, Config{}); err == nil {
		t.Error("New(nil) succeeded")
	}
	_, err := New(nc, Config{Prefix: "bad..prefix", BufferSize: -1, BufferBytes: 100, RequestTimeout: -time.Second, FallbackAfter: -1})
	if err == nil {
		t.Fatal("invalid config accepted")
	}
	for _, field := range []string{"Config.Prefix", "Config.BufferSize", "Config.BufferBytes", "Config.RequestTimeout", "Config.FallbackAfter"} {
		if !strings.Contains(err.Error(), field) {
			t.Errorf("error does not name %s: %v", field, err)
		}
	}
	d := Config{}.WithDefaults()
	if d.Prefix != protocol.DefaultPrefix || d.BufferSize != 4096 || d.BufferBytes != 64<<20 || d.RequestTimeout != 2*time.Second || d.FallbackAfter != 5*time.Second || d.Logger == nil {
		t.Errorf("defaults %+v", d)
	}
}

func TestLifecycle(t *testing.T) {
	t.Parallel()

	t.Run("StopWithoutStart", func(t *testing.T) {
		t.Parallel()
		srv := harness.NewNATS(t, harness.NATSOptions{})
		c, err := New(srv.Connect(t), Config{})
		if err != nil {
			t.Fatal(err)
		}
		c.Stop()
		c.Stop()
		if err := c.Start(context.Background()); err == nil {
			t.Error("Start after Stop succeeded")
		}
	})

	t.Run("StartTwiceAndStopTwice", func(t *testing.T) {
		t.Parallel()
		srv := harness.NewNATS(t, harness.NATSOptions{})
		newSource(t, srv, 3, "")
		c := startClient(t, srv.Connect(t), Config{WaitBootstrap: true})
		if err := c.Start(context.Background()); err == nil {
			t.Error("second Start succeeded")
		}
		c.Stop()
		c.Stop()
		if !c.Ready() || c.Revision() != 1 {
			t.Error("the last snapshot is no longer readable after Stop")
		}
	})

	t.Run("FailsFastOnClosedConnection", func(t *testing.T) {
		t.Parallel()
		srv := harness.NewNATS(t, harness.NATSOptions{})
		nc := srv.Connect(t)
		nc.Close()
		c := newClient(t, nc, Config{})
		if err := c.Start(context.Background()); err == nil {
			t.Fatal("Start succeeded on a closed connection")
		}
	})

	t.Run("FailsFastWhenServerDown", func(t *testing.T) {
		t.Parallel()
		srv := harness.NewNATS(t, harness.NATSOptions{})
		nc := srv.Connect(t)
		srv.Shutdown()
		c := newClient(t, nc, Config{RequestTimeout: 200 * time.Millisecond})
		if err := c.Start(context.Background()); err == nil {
			t.Fatal("Start succeeded while NATS is down")
		}
	})

	t.Run("WaitBootstrapHonoursContext", func(t *testing.T) {
		t.Parallel()
		srv := harness.NewNATS(t, harness.NATSOptions{})
		c := newClient(t, srv.Connect(t), Config{WaitBootstrap: true})
		ctx, cancel := context.WithCancel(context.Background())
		errc := make(chan error, 1)
		go func() { errc <- c.Start(ctx) }()
		waitFor(t, "a bootstrap attempt", func() bool { return c.startedAt.Load() != 0 })
		cancel()
		if err := <-errc; !errors.Is(err, context.Canceled) {
			t.Fatalf("Start returned %v", err)
		}
		c.Stop()
	})

	t.Run("StopUnblocksWaitBootstrap", func(t *testing.T) {
		t.Parallel()
		srv := harness.NewNATS(t, harness.NATSOptions{})
		c := newClient(t, srv.Connect(t), Config{WaitBootstrap: true})
		errc := make(chan error, 1)
		go func() { errc <- c.Start(context.Background()) }()
		waitFor(t, "a bootstrap attempt", func() bool { return c.startedAt.Load() != 0 })
		c.Stop()
		if err := <-errc; err == nil {
			t.Fatal("Start returned nil after Stop")
		}
	})

	t.Run("ConcurrentStartStop", func(t *testing.T) {
		t.Parallel()
		srv := harness.NewNATS(t, harness.NATSOptions{})
		newSource(t, srv, 3, "")
		nc := srv.Connect(t)
		for range 20 {
			c := newClient(t, nc, Config{})
			var wg sync.WaitGroup
			for j := range 6 {
				wg.Go(func() {
					if j%2 == 0 {
						_ = c.Start(context.Background())
					} else {
						c.Stop()
					}
				})
			}
			wg.Wait()
			c.Stop()
		}
	})
}

func gaugeValue(t *testing.T, c *testClient, name string) float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c.Collector())
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		m := mf.GetMetric()[0]
		switch {
		case m.GetGauge() != nil:
			return m.GetGauge().GetValue()
		case m.GetCounter() != nil:
			return m.GetCounter().GetValue()
		case m.GetHistogram() != nil:
			return float64(m.GetHistogram().GetSampleCount())
		}
	}
	t.Fatalf("metric %s not found", name)
	return 0
}

func TestCollector(t *testing.T) {
	t.Parallel()
	srv := harness.NewNATS(t, harness.NATSOptions{})
	src := newSource(t, srv, 10, "")
	c := startClient(t, srv.Connect(t), Config{WaitBootstrap: true})

	problems, err := testutil.CollectAndLint(c.Collector())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
	src.commit(src.touch("ext.000001", 111))
	src.announce([]byte("junk"))
	waitFor(t, "the rejection", func() bool { return c.rejections.Load() == 1 })
	waitSame(t, c, src)

	want := `
# HELP registry_client_deltas_applied_total Deltas applied and verified, from the live subject or fetched from the stream.
# TYPE registry_client_deltas_applied_total counter
registry_client_deltas_applied_total 1
# HELP registry_client_rejections_total Payloads the client refused (undecodable, invalid, not applicable, or failing checksum verification).
# TYPE registry_client_rejections_total counter
registry_client_rejections_total 1
# HELP registry_client_revision Registry revision of the snapshot the client serves (0 before the first one).
# TYPE registry_client_revision gauge
registry_client_revision 2
# HELP registry_client_ready 1 when the client serves a snapshot (from the registry or the fallback), else 0.
# TYPE registry_client_ready gauge
registry_client_ready 1
# HELP registry_client_catchups_total Catch-ups of more than a few deltas, by the path their estimated cost chose: chain (the stored deltas) or snapshot (PROTOCOL.md §6).
# TYPE registry_client_catchups_total counter
registry_client_catchups_total{path="chain"} 0
registry_client_catchups_total{path="snapshot"} 0
`
	if err := testutil.CollectAndCompare(c.Collector(), strings.NewReader(want),
		"registry_client_deltas_applied_total", "registry_client_rejections_total", "registry_client_revision", "registry_client_ready",
		"registry_client_catchups_total"); err != nil {
		t.Error(err)
	}
	if n := gaugeValue(t, c, "registry_client_commit_to_apply_seconds"); n != 1 {
		t.Errorf("commit_to_apply observations %v", n)
	}
	if s := gaugeValue(t, c, "registry_client_staleness_seconds"); s < 0 || s > 60 {
		t.Errorf("staleness %v", s)
	}
	if n := testutil.CollectAndCount(c.Collector()); n != 10 {
		t.Errorf("%d metrics", n)
	}
}

// Not parallel: testing.AllocsPerRun refuses to run in a parallel test.
func TestReadsDoNotAllocate(t *testing.T) {
	srv := harness.NewNATS(t, harness.NATSOptions{})
	newSource(t, srv, 100, "")
	c := newClient(t, srv.Connect(t), Config{WaitBootstrap: true})
	reads := func() {
		_, _ = c.Lookup("ext.000042")
		_ = c.ByType(cache.TypePost)
		_ = c.Snapshot()
		_ = c.Revision()
		_ = c.Ready()
	}
	if n := testing.AllocsPerRun(100, reads); n != 0 {
		t.Errorf("reads before bootstrap allocate %v times", n)
	}
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, ok := c.Lookup("ext.000042"); !ok {
		t.Fatal("lookup")
	}
	if n := testing.AllocsPerRun(1000, reads); n != 0 {
		t.Errorf("reads allocate %v times", n)
	}
	if n := testing.AllocsPerRun(1000, func() {
		e, _ := c.Lookup("ext.000003")
		_ = e.SelectVersion(map[string]string{"tenant": "t1"})
	}); n != 0 {
		t.Errorf("Lookup+SelectVersion allocates %v times", n)
	}
}

// Test that a heartbeat at a lower revision is ignored and one that matches the
// served state raises nothing.
func TestHeartbeatBehindOrEqualIgnored(t *testing.T) {
	t.Parallel()
	srv := harness.NewNATS(t, harness.NATSOptions{})
	src := newSource(t, srv, 10, "")
	c := startClient(t, srv.Connect(t), Config{WaitBootstrap: true})
	src.commit(src.touch("ext.000001", 120))
	waitSame(t, c, src)
	for _, h := range []protocol.Heartbeat{
		{Revision: 1, Checksum: otherChecksum("old"), Source: "database", Time: time.Now(), IntervalMS: 1000},
		{Revision: 2, Checksum: src.state().Checksum(), Source: "database", Time: time.Now(), IntervalMS: 1000},
	} {
		before := c.LastHeard()
		src.sendHeartbeat(&h, src.signer)
		waitFor(t, "the heartbeat", func() bool { return c.LastHeard().After(before) })
	}
	if c.resyncs.Load() != 0 || len(c.Events()) != 2 {
		t.Fatalf("resyncs %d events %d", c.resyncs.Load(), len(c.Events()))
	}
}

// TestReconnectCatchesUp: a delta stored and announced while the client was disconnected,
// with no heartbeat afterwards (the syncer stopped): once the client is connected again it
// reads the newest stored delta and catches up, without waiting for a heartbeat that may
// never come (PROTOCOL.md §9, reconnection).
func TestReconnectCatchesUp(t *testing.T) {
	t.Parallel()
	srv := harness.NewNATS(t, harness.NATSOptions{})
	src := newSource(t, srv, 5, "")
	proxy := harness.NewProxy(t, strings.TrimPrefix(srv.URL(), "nats://"))
	nc, err := nats.Connect("nats://"+proxy.Addr(), nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	c := startClient(t, nc, Config{WaitBootstrap: true})
	before := nc.Stats().Reconnects
	// Cut the client off while the source stores and announces one delta.
	proxy.Stall()
	proxy.Cut()
	d := src.commit(src.touch("ext.000001", 888))
	proxy.Resume()
	waitFor(t, "the client reconnected", func() bool { return nc.Stats().Reconnects > before && nc.IsConnected() })
	waitFor(t, "the client caught up after the reconnect", func() bool { return c.Revision() == d.Revision })
	if e, _ := c.Lookup("ext.000001"); e == nil || e.TimeoutMS != 888 {
		t.Errorf("after the reconnect: %+v", e)
	}
}

// TestBufferTakesABurst: announcements arriving back to back (the syncer completes a
// window of pipelined deltas at once; the connection hands over a whole read buffer of
// them without yielding) are all queued, none dropped, with nothing else running slow.
func TestBufferTakesABurst(t *testing.T) {
	t.Parallel()
	srv := harness.NewNATS(t, harness.NATSOptions{})
	src := newSource(t, srv, 10, "")
	c := startClient(t, srv.Connect(t), Config{WaitBootstrap: true})
	const burst = 500
	msgs := make([]*nats.Msg, 0, burst)
	for i := range burst {
		d, data := src.next(src.touch(fmt.Sprintf("ext.%06d", i%10), 1000+i))
		src.store(d, data)
		m := d.Msg(src.names().Live(), data)
		if err := src.signer.Sign(protocol.KindDelta, m); err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, m)
	}
	for _, m := range msgs { // one flush: the messages go out, and arrive, together
		if err := src.nc.PublishMsg(m); err != nil {
			t.Fatal(err)
		}
	}
	if err := src.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	waitSame(t, c, src)
	if n := c.dropped(); n != 0 {
		t.Errorf("%d of %d announcements dropped", n, burst)
	}
	if n := c.resyncs.Load(); n != 0 {
		t.Errorf("%d resyncs, want none", n)
	}
}
