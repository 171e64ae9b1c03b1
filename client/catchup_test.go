package client

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/beamline/registry-syncer/test/harness"
)

// TestCatchUpTakesTheCheaperPath: with real NATS, a client far behind a small registry
// reads the snapshot rather than thousands of stored deltas (the count bound, 10,000,
// walked them all), and a client a few deltas behind a large registry applies them
// rather than the snapshot; each choice is counted under its path; a chain that
// outgrows the bytes it may hold gives way to the snapshot.
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
	t.Run("SnapshotWhenTheChainOutgrowsItsBytes", func(t *testing.T) {
		t.Parallel()
		srv := harness.NewNATS(t, harness.NATSOptions{})
		src := newSource(t, srv, 5000, "")
		// The chain the cost rule picks (as above: a few deltas on a large registry),
		// but each delta is 8 KB and the client may hold only 32 KiB of them.
		c := newClient(t, srv.Connect(t), Config{WaitBootstrap: true})
		c.chainBytes = 32 << 10
		if err := c.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		const behind = 40
		pad := strings.Repeat("p", 8000)
		for i := range behind {
			e, _ := src.state().Get(fmt.Sprintf("ext.%06d", i+1))
			cp := *e
			cp.Metadata = json.RawMessage(fmt.Sprintf(`{"pad":%q}`, pad))
			src.store(src.next(aggregate(t, &cp)))
		}
		src.writeSnapshot()
		src.heartbeat()
		waitSame(t, c, src)
		if n := c.applied.Load(); n != 0 {
			t.Fatalf("%d stored deltas applied, want none: 40 deltas of 8 KB exceed the 32 KiB the chain may hold", n)
		}
		if got := c.revisions(); len(got) != 2 || got[1] != 1+behind {
			t.Fatalf("OnChange revisions %v, want the bootstrap and then the snapshot at %d", got, 1+behind)
		}
	})
}
