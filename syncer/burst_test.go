package syncer_test

import (
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/beamline/registry-syncer/syncer"
)

// TestBurst has 4 writers commit as fast as they can for 2 s (or 2,000 commits; at least
// 300, so that a loaded machine still makes a burst): one delta per revision, in order;
// snapshot writes coalesce (at most one per SnapshotInterval, far fewer than revisions);
// and a single change right after the burst is published within 1 s.
func TestBurst(t *testing.T) {
	t.Parallel()
	const interval = 200 * time.Millisecond
	b := setup(t)
	live := b.recordLive(t)
	r := b.start(t, func(c *syncer.Config) { c.SnapshotInterval = interval })
	b.waitConverged(t, 10*time.Second)
	writesBefore := testutil.ToFloat64(r.metrics.SnapshotWrites)
	var mu sync.Mutex
	var beats []time.Time
	sub, err := b.nc.Subscribe(b.names(t).Heartbeat(), func(*nats.Msg) {
		mu.Lock()
		beats = append(beats, time.Now())
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()

	w := b.startWriters(4, 2000, false)
	start := time.Now()
	waitFor(t, 30*time.Second, "2 s of writes or 2,000 commits", func() (bool, error) {
		n := w.commits.Load()
		return n >= 2000 || (n >= 300 && time.Since(start) >= 2*time.Second), nil
	})
	if err := w.wait(); err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(start)
	rev := b.finalChecks(t)
	converged := time.Since(start)
	live.checkOrder(t, true)
	revisions := testutil.ToFloat64(r.metrics.Revisions)
	writes := testutil.ToFloat64(r.metrics.SnapshotWrites) - writesBefore
	t.Logf("burst: %d commits in %s by 4 writers, %d revisions, %v deltas published, %v snapshot writes (interval %s) until converged %s after the start",
		w.commits.Load(), elapsed.Round(time.Millisecond), rev, revisions, writes, interval, converged.Round(time.Millisecond))
	if revisions != float64(rev) {
		t.Errorf("published %v deltas for %d revisions", revisions, rev)
	}
	if limit := float64(converged/interval) + 3; writes > limit {
		t.Errorf("%v snapshot writes in %s: more than one per %s", writes, converged, interval)
	}
	// Coalescing shows when revisions come much faster than the interval (a loaded machine
	// publishes slower, and then one snapshot per interval is close to one per revision;
	// the limit above is the invariant).
	if windows := float64(converged / interval); revisions >= 10*windows && writes*5 > revisions {
		t.Errorf("%v snapshot writes for %v revisions in %v intervals: snapshots do not coalesce", writes, revisions, windows)
	}
	// Heartbeats kept coming while the syncer worked through the burst (interval 100ms):
	// catching up must not hold back the rest of the lead loop.
	mu.Lock()
	gap, prev := time.Duration(0), start
	for _, at := range beats {
		if at.After(start) {
			gap, prev = max(gap, at.Sub(prev)), at
		}
	}
	gap = max(gap, time.Since(prev))
	mu.Unlock()
	t.Logf("longest time without a heartbeat during the burst and its catch-up: %s", gap.Round(time.Millisecond))
	if gap > time.Second {
		t.Errorf("no heartbeat for %s during the burst (interval 100ms)", gap)
	}
	logLag(t, r)

	// A single change after the burst.
	commit := time.Now()
	single := b.exec(t, `INSERT INTO extensions (id, type, subject) VALUES ('single', 'post', 'beamline.ext.post.single.v1')`)
	waitFor(t, 5*time.Second, "the single change announced", func() (bool, error) {
		_, ok := live.arrived(single)
		return ok, nil
	})
	at, _ := live.arrived(single)
	took := at.Sub(commit)
	t.Logf("a single change after the burst was announced %s after its transaction started (stored before the announcement)", took.Round(100*time.Microsecond))
	if took > time.Second {
		t.Errorf("single change published after %s, want < 1s", took)
	}
	b.finalChecks(t)
	r.stop(t)
}
