package syncer_test

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestBurst has 4 writers commit as fast as they can for 2 s (or 2,000 commits): one
// delta per revision, in order; snapshot writes coalesce (far fewer than revisions); and a
// single change right after the burst is published within 1 s.
func TestBurst(t *testing.T) {
	t.Parallel()
	b := setup(t)
	live := b.recordLive(t)
	r := b.start(t, nil) // SnapshotInterval 50ms
	b.waitConverged(t, 10*time.Second)
	writesBefore := testutil.ToFloat64(r.metrics.SnapshotWrites)

	w := b.startWriters(context.Background(), 4, 2000, false)
	start := time.Now()
	waitFor(t, 30*time.Second, "2 s of writes or 2,000 commits", func() (bool, error) {
		return w.commits.Load() >= 2000 || time.Since(start) >= 2*time.Second, nil
	})
	if err := w.wait(); err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(start)
	rev := b.finalChecks(t)
	live.checkOrder(t, true)
	revisions := testutil.ToFloat64(r.metrics.Revisions)
	writes := testutil.ToFloat64(r.metrics.SnapshotWrites) - writesBefore
	t.Logf("burst: %d commits in %s by 4 writers, %d revisions, %v deltas published, %v snapshot writes (interval 50ms)",
		w.commits.Load(), elapsed.Round(time.Millisecond), rev, revisions, writes)
	if revisions != float64(rev) {
		t.Errorf("published %v deltas for %d revisions", revisions, rev)
	}
	if writes*10 > revisions {
		t.Errorf("%v snapshot writes for %v revisions: snapshots do not coalesce", writes, revisions)
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
