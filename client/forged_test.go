package client

import (
	"encoding/json"
	"fmt"
	"math"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/beamline/registry-syncer/cache"
	"github.com/beamline/registry-syncer/protocol"
	"github.com/beamline/registry-syncer/test/harness"
)

// Tests of what a NATS user allowed to publish on the live and heartbeat
// subjects can do to a router: nothing it sends is applied, and the router
// keeps following the real registry promptly.

// promptly is how soon the next real revision must be applied after a forged
// or garbage message (it is announced live; no snapshot is written for it).
const promptly = time.Second

// forgedDelta builds a delta on top of the source's state that points
// ext.000001 at an attacker's subject, with the right checksum and count for
// that forged content, at revision rev (prev).
func forgedDelta(t *testing.T, src *source, rev, prev int64) []byte {
	t.Helper()
	e, _ := src.state().Get("ext.000001")
	cp := *e
	cp.Subject = "attacker.steals.traffic.v1"
	ch := aggregate(t, &cp)
	next, _, err := src.state().Apply(src.state().Revision()+1, protocol.SourceDatabase, []cache.Change{ch})
	if err != nil {
		t.Fatal(err)
	}
	data, err := json.Marshal(&protocol.Delta{Revision: rev, PrevRevision: prev, Checksum: next.Checksum(), Count: next.Len(),
		Source: protocol.SourceDatabase, CommittedAt: time.Now().UTC(), Changes: []cache.Change{ch}})
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// notForged fails if the client serves the forged subject.
func notForged(t *testing.T, c *testClient) {
	t.Helper()
	if e, ok := c.Snapshot().Get("ext.000001"); !ok || e.Subject == "attacker.steals.traffic.v1" {
		t.Fatalf("the client serves forged content (revision %d)", c.Revision())
	}
}

// nextRealRevision commits a real revision and returns how long the client took
// to apply it; it fails the test beyond within.
func nextRealRevision(t *testing.T, c *testClient, src *source, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	d := src.commit(src.touch("ext.000003", 100+int(src.state().Revision()%1000)))
	deadline := start.Add(within)
	for c.Revision() != d.Revision || c.Snapshot().Checksum() != d.Checksum {
		if time.Now().After(deadline) {
			t.Fatalf("real revision %d not applied within %s (serving %d): %v", d.Revision, within, c.Revision(), c.Errors())
		}
		time.Sleep(time.Millisecond) // polling with a deadline
	}
	return time.Since(start)
}

// waitRejections waits until the client has rejected n payloads and OnError
// has heard of each (the counter goes up first).
func waitRejections(t *testing.T, c *testClient, n uint64, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for c.rejections.Load() < n || uint64(len(c.Errors())) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d rejections after %s, want %d (serving revision %d)", c.rejections.Load(), within, n, c.Revision())
		}
		time.Sleep(time.Millisecond)
	}
}

// Measured on the code before signatures: applied at once.
func TestForgedDeltaAtNextRevisionRefused(t *testing.T) {
	t.Parallel()
	srv := harness.NewNATS(t, harness.NATSOptions{})
	src := newSource(t, srv, 10, "")
	c := startClient(t, srv.Connect(t), Config{WaitBootstrap: true})
	cur := c.Revision()
	src.send(src.names().Live(), protocol.KindDelta, forgedDelta(t, src, cur+1, cur), nil)
	waitRejections(t, c, 1, 2*time.Second)
	notForged(t, c)
	took := nextRealRevision(t, c, src, promptly)
	notForged(t, c)
	t.Logf("next real revision applied %s after the forged delta was refused", took)
}

// Measured on the code before signatures: applied, and the router then ignored
// every later delta and heartbeat.
func TestForgedDeltaAtMaxRevisionRefused(t *testing.T) {
	t.Parallel()
	srv := harness.NewNATS(t, harness.NATSOptions{})
	src := newSource(t, srv, 10, "")
	c := startClient(t, srv.Connect(t), Config{WaitBootstrap: true})
	src.send(src.names().Live(), protocol.KindDelta, forgedDelta(t, src, math.MaxInt64, c.Revision()), nil)
	waitRejections(t, c, 1, 2*time.Second)
	notForged(t, c)
	for range 3 {
		t.Logf("real revision applied after %s", nextRealRevision(t, c, src, promptly))
	}
}

// Measured on the code before: a delta announced far ahead kept the client
// resyncing, real changes arriving only through snapshots. Here no snapshot
// is written after the forged message: only the live deltas can bring the
// client forward.
func TestForgedDeltaFarAheadDoesNotStall(t *testing.T) {
	t.Parallel()
	srv := harness.NewNATS(t, harness.NATSOptions{})
	src := newSource(t, srv, 10, "")
	c := startClient(t, srv.Connect(t), Config{WaitBootstrap: true})
	cur := c.Revision()
	src.send(src.names().Live(), protocol.KindDelta, forgedDelta(t, src, cur+1_000_000, cur+999_999), nil)
	waitRejections(t, c, 1, 2*time.Second)
	for range 5 {
		t.Logf("real revision applied after %s", nextRealRevision(t, c, src, promptly))
	}
}

// A real, signed announcement of a revision the streams do not hold does not
// keep the following real revisions from applying as they come.
func TestAnnouncedButAbsentRevisionDoesNotStall(t *testing.T) {
	t.Parallel()
	srv := harness.NewNATS(t, harness.NATSOptions{})
	src := newSource(t, srv, 10, "")
	c := startClient(t, srv.Connect(t), Config{WaitBootstrap: true})
	cur := c.Revision()
	src.sendHeartbeat(&protocol.Heartbeat{Revision: cur + 500, Checksum: otherChecksum("absent"), Source: "database",
		Time: time.Now(), IntervalMS: 1000, Syncer: "replayed"}, src.signer)
	src.announce(forgedDelta(t, src, cur+1000, cur+999)) // signed, never stored
	for range 3 {
		t.Logf("real revision applied after %s", nextRealRevision(t, c, src, promptly))
	}
	if c.rejections.Load() != 0 {
		t.Fatalf("rejections: %v", c.Errors())
	}
}

// directGets counts the JetStream direct-get requests on srv.
func directGets(t *testing.T, srv *harness.NATS) *atomic.Int64 {
	t.Helper()
	var n atomic.Int64
	nc := srv.Connect(t)
	if _, err := nc.Subscribe("$JS.API.DIRECT.GET.>", func(*nats.Msg) { n.Add(1) }); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return &n
}

// Measured on the code before: alternating "ahead" and "confirm" heartbeats
// reset the backoff and made the client read the streams for each pair.
func TestAlternatingHeartbeatsDoNotDefeatBackoff(t *testing.T) {
	t.Parallel()
	for _, signed := range []bool{false, true} {
		t.Run(fmt.Sprintf("signed=%v", signed), func(t *testing.T) {
			t.Parallel()
			srv := harness.NewNATS(t, harness.NATSOptions{})
			src := newSource(t, srv, 10, "")
			c := startClient(t, srv.Connect(t), Config{WaitBootstrap: true})
			gets := directGets(t, srv)
			var signer *protocol.Signer
			if signed {
				signer = src.signer // a replaying or broken syncer: signed nonsense
			}
			cur := src.state()
			start := time.Now()
			const pairs = 300
			for i := range pairs {
				src.sendHeartbeat(&protocol.Heartbeat{Revision: cur.Revision() + 1 + int64(i), Checksum: otherChecksum("ahead"),
					Source: "database", Time: time.Now(), IntervalMS: 1000}, signer)
				src.sendHeartbeat(&protocol.Heartbeat{Revision: cur.Revision(), Checksum: cur.Checksum(),
					Source: "database", Time: time.Now(), IntervalMS: 1000}, signer)
			}
			took := time.Since(start)
			// Let the client handle the burst: the next real revision is applied.
			applied := nextRealRevision(t, c, src, 3*time.Second)
			elapsed := time.Since(start)
			n := gets.Load()
			t.Logf("%d pairs sent in %s; %d direct gets in %s; next real revision after %s", pairs, took, n, elapsed, applied)
			// At most one resync round (a few gets) per backoff step, which is at least
			// backoffMin and grows: bounded by time, not by what arrives.
			if limit := int64(10 + 4*elapsed/backoffMin); n > limit {
				t.Fatalf("%d direct gets for %d heartbeat pairs in %s (limit %d)", n, pairs, elapsed, limit)
			}
		})
	}
}

// Garbage and forged messages at the extremes, unsigned or signed by a wrong
// key, on both live subjects: each is refused and the next real revision
// applies promptly.
func TestForgedAndGarbageAtExtremes(t *testing.T) {
	t.Parallel()
	srv := harness.NewNATS(t, harness.NATSOptions{})
	src := newSource(t, srv, 10, "")
	c := startClient(t, srv.Connect(t), Config{WaitBootstrap: true})
	wrong, _, err := protocol.GenerateSigner()
	if err != nil {
		t.Fatal(err)
	}
	type message struct {
		name    string
		subject string
		kind    string
		data    func() []byte
	}
	delta := func(rev, prev int64) func() []byte {
		return func() []byte { return forgedDelta(t, src, rev, prev) }
	}
	heartbeat := func(rev int64) func() []byte {
		return func() []byte {
			data, _ := json.Marshal(&protocol.Heartbeat{Revision: rev, Checksum: otherChecksum("x"), Source: "database",
				Time: time.Now(), IntervalMS: 1000})
			return data
		}
	}
	live, hb := src.names().Live(), src.names().Heartbeat()
	var msgs []message
	for _, m := range []struct {
		name      string
		rev, prev int64
	}{
		{"revision 0", 0, 0}, {"revision -1", -1, -2}, {"revision MaxInt64", math.MaxInt64, 1},
		{"prev far behind", 0, 0}, {"prev far ahead", 0, 0}, {"prev -1", 0, -1},
	} {
		rev, prev := m.rev, m.prev
		switch m.name {
		case "prev far behind":
			msgs = append(msgs, message{m.name, live, protocol.KindDelta, func() []byte {
				return forgedDelta(t, src, src.state().Revision()+1, 0)
			}})
			continue
		case "prev far ahead":
			msgs = append(msgs, message{m.name, live, protocol.KindDelta, func() []byte {
				return forgedDelta(t, src, math.MaxInt64, math.MaxInt64-1)
			}})
			continue
		case "prev -1":
			msgs = append(msgs, message{m.name, live, protocol.KindDelta, func() []byte {
				return forgedDelta(t, src, src.state().Revision()+1, -1)
			}})
			continue
		}
		msgs = append(msgs, message{"delta " + m.name, live, protocol.KindDelta, delta(rev, prev)})
		msgs = append(msgs, message{"heartbeat " + m.name, hb, protocol.KindHeartbeat, heartbeat(rev)})
	}
	msgs = append(msgs,
		message{"garbage delta", live, protocol.KindDelta, func() []byte { return []byte("\x00\xff{garbage") }},
		message{"garbage heartbeat", hb, protocol.KindHeartbeat, func() []byte { return []byte("[]") }},
		message{"empty delta", live, protocol.KindDelta, func() []byte { return nil }})

	var worst time.Duration
	for _, signer := range []*protocol.Signer{nil, wrong} {
		for _, m := range msgs {
			what := m.name + " unsigned"
			if signer != nil {
				what = m.name + " signed by a wrong key"
			}
			before := c.rejections.Load()
			src.send(m.subject, m.kind, m.data(), signer)
			waitRejections(t, c, before+1, 2*time.Second)
			notForged(t, c)
			took := nextRealRevision(t, c, src, promptly)
			worst = max(worst, took)
			t.Logf("%s: refused; next real revision applied after %s", what, took)
		}
	}
	t.Logf("worst time to the next real revision: %s", worst)
	// A signature copied from a real message onto other bytes does not verify.
	d, data := src.next(src.touch("ext.000004", 444))
	m := d.Msg(live, forgedDelta(t, src, d.Revision+1, d.Revision))
	if err := src.signer.Sign(protocol.KindDelta, m); err != nil {
		t.Fatal(err)
	}
	real := d.Msg(live, data)
	if err := src.signer.Sign(protocol.KindDelta, real); err != nil {
		t.Fatal(err)
	}
	m.Header.Set(protocol.HeaderSignature, real.Header.Get(protocol.HeaderSignature))
	before := c.rejections.Load()
	if err := src.nc.PublishMsg(m); err != nil {
		t.Fatal(err)
	}
	waitRejections(t, c, before+1, 2*time.Second)
	src.publish(d, data)
	waitSame(t, c, src)
	notForged(t, c)
}

// A revision announced (signed) but absent from the streams is not chased for
// ever: once the goal times out, the client stops reading the streams for it.
func TestAbsentRevisionGivenUp(t *testing.T) {
	t.Parallel()
	srv := harness.NewNATS(t, harness.NATSOptions{})
	src := newSource(t, srv, 10, "")
	c := newClient(t, srv.Connect(t), Config{WaitBootstrap: true})
	c.goalTimeout = 500 * time.Millisecond
	if err := c.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	gets := directGets(t, srv)
	cur := c.Revision()
	start := time.Now()
	src.sendHeartbeat(&protocol.Heartbeat{Revision: cur + 500, Checksum: otherChecksum("absent"), Source: "database",
		Time: time.Now(), IntervalMS: 1000, Syncer: "replayed"}, src.signer)
	// Chased for about goalTimeout, then given up: the reads stop.
	deadline := time.Now().Add(10 * time.Second)
	for {
		before := gets.Load()
		quiet := time.Now().Add(2 * backoffMax)
		for time.Now().Before(quiet) && gets.Load() == before {
			time.Sleep(10 * time.Millisecond) // a "nothing else happens" check, bounded
		}
		if gets.Load() == before && before > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still reading the streams %s after an absent revision was announced (%d direct gets)", time.Since(start), gets.Load())
		}
	}
	t.Logf("the absent revision %d was chased with %d direct gets, then given up (quiet by %s)", cur+500, gets.Load(), time.Since(start).Round(time.Millisecond))
	t.Logf("real revision applied after %s", nextRealRevision(t, c, src, promptly))
}
