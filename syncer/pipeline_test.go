package syncer_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/beamline/registry-syncer/protocol"
	"github.com/beamline/registry-syncer/syncer"
)

// TestPipelinedBacklog: a syncer restarted after a backlog built up while it was stopped
// publishes it with many stores in flight, and still announces every delta once, in
// revision order, each only after the stream stored it (a router reading the stored
// delta of an announcement finds it); every revision is stored exactly once and replays
// to the database's content. The change-log reads and the history run at small bounds
// in bytes, which they keep.
func TestPipelinedBacklog(t *testing.T) {
	t.Parallel()
	b := setup(t)
	r := b.start(t, nil)
	b.waitConverged(t, 10*time.Second)
	r.stop(t)

	w := b.startWriters(4, 1500, false)
	w.waitCommits(t, 1500, time.Minute)
	if err := w.wait(); err != nil {
		t.Fatal(err)
	}

	// Every announcement: is its delta stored when it arrives?
	names := b.names(t)
	reader := &protocol.Reader{NC: b.nats.Connect(t, nats.Name("reader")), Names: names}
	var (
		mu       sync.Mutex
		revs     []int64
		unstored []int64
		readErr  error
	)
	sub, err := b.nc.Subscribe(names.Live(), func(m *nats.Msg) {
		d, err := protocol.DeltaFromMsg(m)
		if err != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, rerr := reader.Delta(ctx, d.Revision)
		cancel()
		mu.Lock()
		defer mu.Unlock()
		revs = append(revs, d.Revision)
		switch {
		case errors.Is(rerr, protocol.ErrNotFound):
			unstored = append(unstored, d.Revision)
		case rerr != nil:
			readErr = rerr
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		t.Fatal(err)
	}
	if err := b.nc.Flush(); err != nil {
		t.Fatal(err)
	}

	const historyBytes = 64 << 10
	r = b.start(t, func(c *syncer.Config) {
		c.PublishWindow = 64
		c.BatchBytes = 4096
		c.HistoryBytes = historyBytes
	})
	rev := b.finalChecks(t)
	waitFor(t, 30*time.Second, "every announcement checked", func() (bool, error) {
		mu.Lock()
		defer mu.Unlock()
		if len(revs) > 0 && revs[len(revs)-1] == rev {
			return true, nil
		}
		return false, fmt.Errorf("%d announcements checked, want up to revision %d", len(revs), rev)
	})
	mu.Lock()
	defer mu.Unlock()
	if readErr != nil {
		t.Fatalf("reading a stored delta back: %v", readErr)
	}
	if len(unstored) > 0 {
		t.Fatalf("%d deltas announced before the stream stored them (first: revision %d)", len(unstored), unstored[0])
	}
	for i := 1; i < len(revs); i++ {
		if revs[i] <= revs[i-1] {
			t.Fatalf("announcement %d is revision %d after %d: not once each in revision order", i, revs[i], revs[i-1])
		}
	}
	if got := testutil.ToFloat64(r.metrics.HistoryBytes); got > historyBytes || got == 0 {
		t.Errorf("history holds %v bytes, want some and at most %d", got, historyBytes)
	}
	t.Logf("%d announcements of a backlog of 1,500 commits, up to revision %d; history %v deltas, %v bytes",
		len(revs), rev, testutil.ToFloat64(r.metrics.HistoryDeltas), testutil.ToFloat64(r.metrics.HistoryBytes))
	r.stop(t)
}
