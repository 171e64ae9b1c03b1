package syncer_test

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/beamline/registry-syncer/publisher"
	"github.com/beamline/registry-syncer/syncer"
)

// TestSnapshotWritesWaitForTheRetention: under continuous commits, with a retention that
// holds no snapshot beyond the current and the previous one, the snapshot writer waits
// for each replaced snapshot's grace to pass (a write at most once per grace, not once
// per SnapshotInterval), counts the deferrals, and the published state still converges.
func TestSnapshotWritesWaitForTheRetention(t *testing.T) {
	t.Parallel()
	const grace = 700 * time.Millisecond
	b := setup(t)
	b.pubMod = func(c *publisher.Config) { c.SnapshotGrace, c.SnapshotRetainBytes = grace, 1 }
	r := b.start(t, func(c *syncer.Config) { c.SnapshotInterval = 20 * time.Millisecond })
	b.waitConverged(t, 10*time.Second)
	writesBefore := testutil.ToFloat64(r.metrics.SnapshotWrites)

	w := b.startWriters(2, 0, false)
	start := time.Now()
	waitFor(t, 30*time.Second, "3 s of commits", func() (bool, error) {
		return time.Since(start) >= 3*time.Second && w.commits.Load() >= 100, nil
	})
	if err := w.wait(); err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(start)
	writes := testutil.ToFloat64(r.metrics.SnapshotWrites) - writesBefore
	deferrals := testutil.ToFloat64(r.metrics.SnapshotDeferrals)
	t.Logf("%d commits in %s: %v snapshot writes, %v deferrals (grace %s, interval 20ms)",
		w.commits.Load(), elapsed.Round(time.Millisecond), writes, deferrals, grace)
	if limit := float64(elapsed/grace) + 2; writes > limit {
		t.Errorf("%v snapshot writes in %s: more than one per grace (%s) with a retention of 1 byte", writes, elapsed, grace)
	}
	if writes < 2 || deferrals < 1 {
		t.Errorf("%v snapshot writes and %v deferrals: the writer should have written, and waited", writes, deferrals)
	}
	b.finalChecks(t)
}
