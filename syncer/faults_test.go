package syncer_test

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/beamline/registry-syncer/protocol"
	"github.com/beamline/registry-syncer/syncer"
	"github.com/beamline/registry-syncer/test/harness"
)

// waitPublished waits until the delta of revision rev is stored and returns how long that
// took from start.
func (b *testBundle) waitPublished(t *testing.T, rev int64, start time.Time, within time.Duration) time.Duration {
	t.Helper()
	waitFor(t, within, "delta of the revision stored", func() (bool, error) {
		_, err := b.reader.Delta(context.Background(), rev)
		return err == nil, err
	})
	return time.Since(start)
}

// TestListenerTerminatedDuringBurst kills the LISTEN connection's backend three times
// while writers commit 300 transactions: notifications sent while it was down are lost,
// the change log is not, so nothing is missed. On a private cluster: terminating backends
// by application name would hit the listeners of parallel tests on the shared one.
func TestListenerTerminatedDuringBurst(t *testing.T) {
	t.Parallel()
	b, pg := setupPrivate(t)
	live := b.recordLive(t)
	r := b.start(t, func(c *syncer.Config) { c.Listener.PingInterval = 200 * time.Millisecond })
	b.waitConverged(t, 10*time.Second)

	ctx := context.Background()
	w := b.startWriters(2, 300, false)
	kills := 0
	for i := int64(1); i <= 3; i++ {
		w.waitCommits(t, 70*i, 60*time.Second)
		var killedAt time.Time
		if err := b.schema.Pool.QueryRow(ctx, `SELECT now()`).Scan(&killedAt); err != nil {
			t.Fatal(err)
		}
		n, err := pg.TerminateBackends(ctx, "registry-syncer-listener")
		if err != nil {
			t.Fatal(err)
		}
		kills += n
		// The next kill only after the listener is back (else it would hit nothing).
		waitFor(t, 10*time.Second, "a new listener backend", func() (bool, error) {
			var back bool
			err := b.schema.Pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_stat_activity
				WHERE application_name = 'registry-syncer-listener' AND backend_start > $1)`, killedAt).Scan(&back)
			return back, err
		})
	}
	w.waitCommits(t, 300, 60*time.Second)
	if err := w.wait(); err != nil {
		t.Fatal(err)
	}
	if kills < 3 {
		t.Errorf("terminated %d listener backends, want 3", kills)
	}
	rev := b.finalChecks(t)
	live.checkOrder(t, true)
	t.Logf("%d commits, %d revisions, %d listener backends terminated, listener reconnects metric %v, notifications %v",
		w.commits.Load(), rev, kills, testutil.ToFloat64(r.metrics.ListenerReconnect), testutil.ToFloat64(r.metrics.Notifications))
	logLag(t, r)
	r.stop(t)
}

// TestPostgresRestartDuringBurst restarts PostgreSQL (immediate stop: crash recovery on
// start) while writers commit; writers retry on connection errors. Every revision the
// database committed is published once, in order.
func TestPostgresRestartDuringBurst(t *testing.T) {
	t.Parallel()
	b, pg := setupPrivate(t)
	live := b.recordLive(t)
	r := b.start(t, nil)
	b.waitConverged(t, 10*time.Second)

	ctx := context.Background()
	w := b.startWriters(2, 0, true)
	w.waitCommits(t, 100, 60*time.Second)
	before := w.commits.Load()
	if err := pg.Restart(harness.StopImmediate); err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()
	w.waitCommits(t, before+150, 60*time.Second)
	if err := w.wait(); err != nil {
		t.Fatal(err)
	}
	// The first revision committed after the restart: how long until it was published.
	var first int64
	if err := b.schema.Pool.QueryRow(ctx, `SELECT min(revision) FROM registry_revisions WHERE committed_at >= $1`, restarted).Scan(&first); err != nil {
		t.Fatal(err)
	}
	rev := b.finalChecks(t)
	if at, ok := live.arrived(first); ok {
		t.Logf("first revision after the restart (%d) announced %s after the restart", first, at.Sub(restarted).Round(time.Millisecond))
	}
	live.checkOrder(t, true)
	t.Logf("%d commits (%d failed attempts while the database restarted), %d revisions published once each", w.commits.Load(), w.failures.Load(), rev)
	logLag(t, r)
	r.stop(t)
}

// TestNATSOutageDuringWrites stops NATS for 6 seconds while a writer keeps committing,
// then starts it again: every revision is published once, in order. The issue says 10 s;
// 6 s exercises the same paths (longer than the publisher's 5 s request timeout, so the
// first store attempt times out while its buffered copy may still reach the server on
// reconnect, and the retry must not store it twice) and keeps the package run short.
func TestNATSOutageDuringWrites(t *testing.T) {
	t.Parallel()
	const outage = 6 * time.Second
	b := setup(t)
	live := b.recordLive(t)
	r := b.start(t, nil)
	b.waitConverged(t, 10*time.Second)

	w := b.startWriters(1, 0, false)
	w.waitCommits(t, 50, 30*time.Second)
	b.nats.Shutdown()
	down := w.commits.Load()
	timer := time.NewTimer(outage) // the length of the outage, not a wait for an effect
	<-timer.C
	during := w.commits.Load() - down
	if err := b.nats.Start(); err != nil {
		t.Fatal(err)
	}
	up := time.Now()
	w.waitCommits(t, w.commits.Load()+50, 30*time.Second)
	if err := w.wait(); err != nil {
		t.Fatal(err)
	}
	dbRev := b.dbRevision(t)
	caughtUp := b.waitPublished(t, dbRev, up, 30*time.Second)
	if during == 0 {
		t.Error("no commit while NATS was down")
	}
	rev := b.finalChecks(t)
	live.checkOrder(t, true)
	t.Logf("%d commits (%d while NATS was down for %s), %d revisions; all published %s after NATS came back; publish errors %v",
		w.commits.Load(), during, outage, rev, caughtUp.Round(time.Millisecond), testutil.ToFloat64(r.metrics.PublishErrors))
	logLag(t, r)
	r.stop(t)
}

// TestSyncerRestartMidBurst stops the syncer abruptly (its context cancelled) twice while
// writers commit, each time starting a new one on the same schema and NATS: the new one
// continues from what is stored, with no duplicate and no gap.
func TestSyncerRestartMidBurst(t *testing.T) {
	t.Parallel()
	b := setup(t)
	live := b.recordLive(t)
	r := b.start(t, nil)
	b.waitConverged(t, 10*time.Second)

	w := b.startWriters(2, 0, false)
	for i := int64(1); i <= 2; i++ {
		w.waitCommits(t, 100*i, 60*time.Second)
		r.stop(t)
		r = b.start(t, nil)
	}
	w.waitCommits(t, 300, 60*time.Second)
	if err := w.wait(); err != nil {
		t.Fatal(err)
	}
	rev := b.finalChecks(t)
	live.checkOrder(t, true)
	t.Logf("%d commits, %d revisions over three syncers; the last one published %v of them", w.commits.Load(), rev, testutil.ToFloat64(r.metrics.Revisions))
	r.stop(t)
}

// TestFailoverToStandby runs two syncers on one schema and NATS: exactly one leads; when
// it stops, the other publishes the next committed revision within 5 s. The standby uses
// the production LeaderRetry (1 s) so that the measured failover time is realistic.
func TestFailoverToStandby(t *testing.T) {
	t.Parallel()
	b := setup(t)
	live := b.recordLive(t)
	r1 := b.start(t, func(c *syncer.Config) { c.InstanceID = "one" })
	waitFor(t, 10*time.Second, "the first syncer leading", func() (bool, error) { return r1.s.Status().Ready, nil })
	r2 := b.start(t, func(c *syncer.Config) { c.InstanceID = "two"; c.LeaderRetry = time.Second })

	// For a while (bounded: "no second leader appeared"), with commits going on, exactly one
	// leads.
	rev := b.exec(t, `INSERT INTO extensions (id, type, subject) VALUES ('a', 'pre', 'beamline.ext.pre.a.v1')`)
	deadline := time.Now().Add(1500 * time.Millisecond)
	for time.Now().Before(deadline) {
		s1, s2 := r1.s.Status(), r2.s.Status()
		if s1.Leader == s2.Leader {
			t.Fatalf("leaders: one %v, two %v; want exactly one", s1.Leader, s2.Leader)
		}
		time.Sleep(10 * time.Millisecond) // poll interval
	}
	if !r1.s.Status().Leader {
		t.Fatal("the first syncer lost the leadership")
	}
	b.waitPublished(t, rev, time.Now(), 5*time.Second)

	r1.stop(t)
	stopped := time.Now()
	rev = b.exec(t, `UPDATE extensions SET timeout_ms = 300 WHERE id = 'a'`)
	failover := b.waitPublished(t, rev, stopped, 5*time.Second)
	t.Logf("failover: revision %d committed after the leader stopped was published by the standby %s after the stop", rev, failover.Round(time.Millisecond))
	if !r2.s.Status().Leader {
		t.Error("the standby did not take the leadership")
	}
	d, err := b.reader.Delta(context.Background(), rev)
	if err != nil {
		t.Fatal(err)
	}
	if d.PrevRevision != rev-1 {
		t.Errorf("revision %d published with prev %d", rev, d.PrevRevision)
	}
	b.exec(t, `UPDATE extensions SET timeout_ms = 400 WHERE id = 'a'`)
	b.finalChecks(t)
	live.checkOrder(t, true)
	r2.stop(t)
}

// TestLeaderDatabaseStalled puts the leader's database connections (lease, listener,
// pool) behind a proxy that black-holes them — no RST, queries just never answer, as a
// partitioned network or a frozen middlebox does — while writers commit through a direct
// connection. The leader cannot renew its lease: it must stop publishing by its own clock
// (its NATS connection is fine, so only fencing stops it), the standby takes over within
// the lease TTL plus its retry, and from the standby's first heartbeat on, nothing comes
// from the old leader: never two publishers. After the network is back, the old leader
// is a standby and every revision is stored once.
func TestLeaderDatabaseStalled(t *testing.T) {
	t.Parallel()
	b := setup(t)
	u, err := url.Parse(b.schema.URL)
	if err != nil {
		t.Fatal(err)
	}
	proxy := harness.NewProxy(t, u.Host)
	u.Host = proxy.Addr()
	const ttl = 3 * time.Second

	type beat struct {
		from string
		at   time.Time
	}
	var (
		mu    sync.Mutex
		beats []beat
	)
	names := b.names(t)
	sub, err := b.nc.Subscribe(names.Heartbeat(), func(m *nats.Msg) {
		h, err := protocol.DecodeHeartbeat(m.Data)
		if err != nil {
			t.Errorf("heartbeat: %v", err)
			return
		}
		mu.Lock()
		beats = append(beats, beat{h.Syncer, time.Now()})
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()

	r1 := b.start(t, func(c *syncer.Config) { c.InstanceID = "one"; c.DatabaseURL = u.String(); c.LeaderTTL = ttl })
	waitFor(t, 10*time.Second, "the first syncer leading", func() (bool, error) { return r1.s.Status().Ready, nil })
	r2 := b.start(t, func(c *syncer.Config) {
		c.InstanceID = "two"
		c.LeaderTTL = ttl
		c.LeaderRetry = 200 * time.Millisecond
	})
	waitFor(t, 10*time.Second, "the second syncer a ready standby", func() (bool, error) {
		st := r2.s.Status()
		return st.Role == syncer.RoleStandby && st.Ready, nil
	})

	w := b.startWriters(1, 0, false)
	w.waitCommits(t, 30, 30*time.Second)
	proxy.Stall()
	stalled := time.Now()
	waitFor(t, ttl+5*time.Second, "the standby leading", func() (bool, error) { return r2.s.Status().Leader, nil })
	took := time.Since(stalled)
	var firstTwo time.Time
	waitFor(t, 10*time.Second, "a heartbeat from the new leader", func() (bool, error) {
		mu.Lock()
		defer mu.Unlock()
		for _, hb := range beats {
			if hb.from == "two" {
				firstTwo = hb.at
				return true, nil
			}
		}
		return false, nil
	})
	t.Logf("standby leads %s after the leader's database stalled (lease TTL %s)", took.Round(time.Millisecond), ttl)
	if took > ttl+3*time.Second {
		t.Errorf("takeover took %s, want at most TTL + 3s", took)
	}
	w.waitCommits(t, w.commits.Load()+30, 30*time.Second)
	// The old leader is still stalled: whatever it was doing, it sent nothing since the new
	// leader's first heartbeat (a bounded "nothing else arrived" check over a few beats).
	checkQuiet := func(until time.Time) {
		t.Helper()
		mu.Lock()
		defer mu.Unlock()
		for _, hb := range beats {
			if hb.from == "one" && hb.at.After(firstTwo) && hb.at.Before(until) {
				t.Errorf("heartbeat from the deposed leader %s after the new leader's first", hb.at.Sub(firstTwo))
			}
		}
	}
	checkQuiet(time.Now())
	proxy.Resume()
	waitFor(t, 20*time.Second, "the old leader a ready standby again", func() (bool, error) {
		st := r1.s.Status()
		return st.Role == syncer.RoleStandby && st.Ready, nil
	})
	if err := w.wait(); err != nil {
		t.Fatal(err)
	}
	checkQuiet(time.Now())
	rev := b.finalChecks(t)
	if s1, s2 := r1.s.Status(), r2.s.Status(); s1.Leader || !s2.Leader {
		t.Errorf("leaders at the end: one %v, two %v", s1.Leader, s2.Leader)
	}
	t.Logf("%d commits, %d revisions, each stored once", w.commits.Load(), rev)
	r1.stop(t)
	r2.stop(t)
}

// TestReadinessFollowsNATS: the leader is not ready once NATS stops taking its writes —
// within two heartbeat intervals (plus the client's own disconnect detection, here an
// in-process server that closes its sockets) — whether the registry is idle or a change is
// waiting; its status shows the change it cannot publish; ready again once it published it.
func TestReadinessFollowsNATS(t *testing.T) {
	t.Parallel()
	const hb = 200 * time.Millisecond
	b := setup(t)
	r := b.start(t, func(c *syncer.Config) { c.HeartbeatInterval = hb })
	b.exec(t, `INSERT INTO extensions (id, type, subject) VALUES ('a', 'pre', 'beamline.ext.pre.a.v1')`)
	b.waitConverged(t, 10*time.Second)
	waitFor(t, 10*time.Second, "ready", func() (bool, error) { return r.s.Status().Ready, nil })

	// Idle registry.
	b.nats.Shutdown()
	down := time.Now()
	waitFor(t, 2*hb+2*time.Second, "not ready with NATS down (idle)", func() (bool, error) { return !r.s.Status().Ready, nil })
	t.Logf("idle: not ready %s after NATS went down: %q", time.Since(down).Round(time.Millisecond), r.s.Status().Reason)
	// A change waiting to be published: still not ready, and the status names its revision.
	rev := b.exec(t, `UPDATE extensions SET retry = 1 WHERE id = 'a'`)
	waitFor(t, 5*time.Second, "the waiting revision in the status", func() (bool, error) {
		st := r.s.Status()
		return !st.Ready && st.DatabaseRevision == rev && st.Revision < rev, fmt.Errorf("%+v", st)
	})
	if err := b.nats.Start(); err != nil {
		t.Fatal(err)
	}
	b.waitPublished(t, rev, time.Now(), 20*time.Second)
	waitFor(t, 10*time.Second, "ready again", func() (bool, error) {
		st := r.s.Status()
		return st.Ready && st.Revision == rev, fmt.Errorf("%+v", st)
	})
	r.stop(t)
}

// TestReadinessNATSBlackhole: the leader's NATS connection goes through a proxy that
// black-holes it: the client library still believes it is connected (no RST, its pings are
// minutes apart by default), but nothing reaches the server. The leader must stop claiming
// ready within two heartbeat intervals plus one stream check, and recover after.
func TestReadinessNATSBlackhole(t *testing.T) {
	t.Parallel()
	const hb = 200 * time.Millisecond
	b := setup(t)
	proxy := harness.NewProxy(t, strings.TrimPrefix(b.nats.URL(), "nats://"))
	b.syncerNATS = "nats://" + proxy.Addr()
	r := b.start(t, func(c *syncer.Config) { c.HeartbeatInterval = hb })
	b.exec(t, `INSERT INTO extensions (id, type, subject) VALUES ('a', 'pre', 'beamline.ext.pre.a.v1')`)
	b.waitConverged(t, 10*time.Second)
	waitFor(t, 10*time.Second, "ready", func() (bool, error) { return r.s.Status().Ready, nil })
	proxy.Stall()
	stalled := time.Now()
	waitFor(t, 2*hb+6*time.Second, "not ready with NATS black-holed", func() (bool, error) { return !r.s.Status().Ready, nil })
	t.Logf("black hole: not ready %s after the stall (heartbeat %s): %q", time.Since(stalled).Round(time.Millisecond), hb, r.s.Status().Reason)
	proxy.Resume()
	rev := b.exec(t, `UPDATE extensions SET retry = 1 WHERE id = 'a'`)
	b.waitPublished(t, rev, time.Now(), 30*time.Second)
	waitFor(t, 10*time.Second, "ready again", func() (bool, error) { return r.s.Status().Ready, nil })
	r.stop(t)
}
