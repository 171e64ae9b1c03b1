package client

import (
	"fmt"
	"testing"

	"github.com/beamline/registry-syncer/test/harness"
)

// TestCatchUpTakesTheCheaperPath: with real NATS, a client far behind a small registry
// reads the snapshot rather than thousands of stored deltas (the count bound, 10,000,
// walked them all), and a client a few deltas behind a large registry applies them
// rather than the snapshot; each choice is counted under its path.
func TestCatchUpTakesTheCheaperPath(t *testing.T) {
	t.Parallel()
	t.Run("SnapshotWhenFarBehindASmallRegistry", func(t *testing.T) {
		t.Parallel()
		srv := harness.NewNATS(t, harness.NATSOptions{})
		src := newSource(t, srv, 10, "")
		c := startClient(t, srv.Connect(t), Config{WaitBootstrap: true})
		const behind = 3000
		for i := range behind {
			src.store(src.next(src.touch(fmt.Sprintf("ext.%06d", i%10), 1000+i)))
		}
		src.writeSnapshot()
		src.heartbeat()
		waitSame(t, c, src)
		if n := c.applied.Load(); n != 0 {
			t.Fatalf("%d stored deltas applied, want none: the snapshot is at the target", n)
		}
		if chain, snap := c.catchUps[pathChain].Load(), c.catchUps[pathSnapshot].Load(); snap != 1 || chain != 0 {
			t.Fatalf("catch-ups by chain %d, by snapshot %d; want the snapshot once", chain, snap)
		}
		if got := c.revisions(); len(got) != 2 || got[1] != 1+behind {
			t.Fatalf("OnChange revisions %v, want the bootstrap and then %d", got, 1+behind)
		}
	})
	t.Run("ChainWhenAFewBehindALargeRegistry", func(t *testing.T) {
		t.Parallel()
		srv := harness.NewNATS(t, harness.NATSOptions{})
		src := newSource(t, srv, 5000, "")
		c := startClient(t, srv.Connect(t), Config{WaitBootstrap: true})
		// Enough deltas that reading the manifest may pay, far fewer than the snapshot's
		// cost; the snapshot is at the target, so it is a real alternative.
		const behind = 40
		for i := range behind {
			src.store(src.next(src.touch(fmt.Sprintf("ext.%06d", i+1), 1000+i)))
		}
		src.writeSnapshot()
		src.heartbeat()
		waitSame(t, c, src)
		if chain, snap := c.catchUps[pathChain].Load(), c.catchUps[pathSnapshot].Load(); chain != 1 || snap != 0 {
			t.Fatalf("catch-ups by chain %d, by snapshot %d; want the chain once", chain, snap)
		}
		if n := c.applied.Load(); n != behind {
			t.Fatalf("%d stored deltas applied, want %d", n, behind)
		}
	})
}
