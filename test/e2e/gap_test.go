package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// TestGapAfterDisconnect cuts one router's TCP connection to NATS (through a proxy that
// then refuses to reconnect it) while 100 revisions are published; once it can connect
// again it must notice what it missed and converge by fetching the stored deltas. The
// other routers never lose their connection. Three ways to notice: the reconnect itself
// (the client reads the newest stored delta once its subscriptions are back, PROTOCOL.md
// §9 Q2), the next heartbeat (an idle registry), and, with heartbeats an hour apart, the
// next delta whose prev_revision is ahead of the router's revision — whichever comes first.
func TestGapAfterDisconnect(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		heartbeat string
		reason    string // logged by the client when it notices
		commit    bool   // commit one more change after the reconnect
	}{
		{name: "heartbeat", heartbeat: "250ms", reason: `reason="heartbeat ahead"`},
		{name: "delta", heartbeat: "1h", reason: `reason=gap`, commit: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			testGap(t, tc.heartbeat, tc.reason, tc.commit)
		})
	}
}

func testGap(t *testing.T, heartbeat, reason string, commitAfter bool) {
	b := setup(t, "e2e.gap")
	b.seedDefaults(t)
	s := b.startSyncer(t, "HEARTBEAT_INTERVAL", heartbeat)
	s.waitReady(t, 30*time.Second)
	f := b.startFleet(t, 4, false)
	px := startProxy(t, fmt.Sprintf("127.0.0.1:%d", b.nats.Port))
	cut := b.startRouter(t, px.url())
	all := &fleet{routers: append(append([]*router(nil), f.routers...), cut)}
	all.converge(t, b.db(t), time.Now(), 30*time.Second)

	before := b.db(t)
	resyncs := cut.metric(t, "registry_client_resyncs_total")
	px.setCut(true)
	eventually(t, 10*time.Second, "the cut router disconnected", func() error {
		if st := cut.nc.Status(); st == nats.CONNECTED {
			return fmt.Errorf("%s: %s", cut.name, st)
		}
		return nil
	})
	for i := range 100 {
		b.commit(t, fmt.Sprintf(`UPDATE extensions SET metadata = '{"n": %d}' WHERE id = 'pii_guard'`, i))
	}
	missed := b.db(t)
	if missed.Revision() != before.Revision()+100 {
		t.Fatalf("database at revision %d, want %d", missed.Revision(), before.Revision()+100)
	}
	f.converge(t, missed, time.Now(), 10*time.Second) // published while the router was cut off
	if err := cut.serves(before); err != nil {
		t.Fatalf("the cut router moved while cut off: %v", err)
	}
	heard := cut.c.LastHeard()

	mark := cut.log.len()
	restored := time.Now()
	px.setCut(false)
	want := missed
	if commitAfter {
		eventually(t, 10*time.Second, "the cut router reconnected", func() error {
			if st := cut.nc.Status(); st != nats.CONNECTED {
				return fmt.Errorf("%s: %s", cut.name, st)
			}
			return nil
		})
		b.commit(t, `UPDATE extensions SET retry = 3 WHERE id = 'pii_guard'`)
		want = b.db(t)
	}
	c := (&fleet{routers: []*router{cut}}).converge(t, want, restored, 10*time.Second)
	t.Logf("gap of %d revisions (%d..%d): converged %s after the proxy let the router reconnect",
		want.Revision()-before.Revision(), before.Revision()+1, want.Revision(), c.max.Round(time.Millisecond))

	if got := cut.metric(t, "registry_client_resyncs_total"); got <= resyncs {
		t.Errorf("resyncs_total %v after the gap, was %v: the gap was not detected as one", got, resyncs)
	}
	lines, _, _ := cut.log.from(mark)
	var resyncLines []string
	for _, l := range lines {
		if strings.Contains(l.text, `msg="client: resyncing"`) {
			resyncLines = append(resyncLines, l.text[strings.Index(l.text, "reason="):])
		}
	}
	if len(resyncLines) == 0 || (!strings.HasPrefix(resyncLines[0], reason) && !strings.HasPrefix(resyncLines[0], `reason=reconnected`)) {
		t.Errorf("resyncs logged after the reconnect: %q; want the first with %s or reason=reconnected", resyncLines, reason)
	}
	t.Logf("detected as: %s", strings.Join(resyncLines, "; "))
	if !cut.c.LastHeard().After(heard) {
		t.Error("LastHeard did not advance after the reconnect")
	}
	// Bridged by the cheaper path (PROTOCOL.md §6.3): the stored deltas, every missed
	// revision installed in order, or the snapshot (here, a registry of a few
	// extensions, it is the cheaper one), then the deltas after it. Either way the
	// installs move forward only, end at the database's revision, and the client logs
	// which path it chose and why.
	var after []int64
	for _, in := range cut.installsSince(0) {
		if in.at.After(restored) {
			after = append(after, in.rev)
		}
	}
	for i := 1; i < len(after); i++ {
		if after[i] <= after[i-1] {
			t.Fatalf("installs after the reconnect %v: not in revision order", after)
		}
	}
	if len(after) == 0 || after[len(after)-1] != want.Revision() || after[0] <= before.Revision() {
		t.Fatalf("installs after the reconnect %v, want revisions above %d ending at %d", after, before.Revision(), want.Revision())
	}
	var chosen []string
	for _, l := range lines {
		if strings.Contains(l.text, `msg="client: catch-up path chosen"`) {
			chosen = append(chosen, l.text[strings.Index(l.text, "path="):])
		}
	}
	if len(chosen) == 0 {
		t.Errorf("no catch-up path logged after the reconnect")
	}
	t.Logf("catch-up: %s; installs %v", strings.Join(chosen, "; "), after)
	if n := cut.rejected.Load(); n != 0 {
		t.Errorf("%s rejected %d payloads: %v", cut.name, n, cut.errors())
	}
}
