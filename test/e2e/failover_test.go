package e2e

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/beamline/registry-syncer/protocol"
)

// failoverWithin is how soon after the leader's death the standby must publish: the
// README's bound (the lease TTL, 6 s by default, plus the standby's retry, 1 s).
const failoverWithin = 10 * time.Second

// TestFailover runs two syncer processes on one schema: exactly one leads (both /readyz
// 200, one as the leader, the other as a standby, and only the leader's heartbeats are
// heard). SIGKILL the leader and
// commit: the standby publishes that revision within failoverWithin, without a gap or a
// duplicate in the stream.
func TestFailover(t *testing.T) {
	t.Parallel()
	testFailover(t, setup(t, "e2e.failover"))
}

// testFailover is TestFailover on b, with syncer configuration overrides.
func testFailover(t *testing.T, b *testBundle, overrides ...string) {
	b.seedDefaults(t)

	beats := b.recordHeartbeats(t)
	procs := []*syncerProc{b.startSyncer(t, overrides...), b.startSyncer(t, overrides...)}
	var leader, standby *syncerProc
	leader, standby = b.leaderAndStandby(t, procs)
	base := b.storedSnapshot(t)
	f := b.startFleet(t, 5, true)
	_, at := b.commit(t, `UPDATE extensions SET retry = 1 WHERE id = 'pii_guard'`)
	f.converge(t, b.db(t), at, convergeWithin)
	code, st, err := standby.readyz(context.Background())
	if err != nil || code != http.StatusOK || st.Leader || st.Role != "standby" {
		t.Fatalf("standby /readyz: %d %+v (%v), want 200 as a standby", code, st, err)
	}
	t.Logf("leader %s (pid %d), standby %s (pid %d): %q", leader.name, leader.pid(), standby.name, standby.pid(), st.Reason)
	eventually(t, 5*time.Second, "a heartbeat from the leader", func() error {
		if beats.from(leader.pid(), time.Time{}) == 0 {
			return errWaiting
		}
		return nil
	})

	killedAt := time.Now()
	leader.kill(t)
	if n := beats.from(standby.pid(), time.Time{}); n != 0 {
		t.Errorf("the standby sent %d heartbeats while the leader lived", n)
	}
	rev, at := b.commit(t, `UPDATE extensions SET enabled = false WHERE id = 'pii_guard'`)
	want := b.db(t)
	c := f.converge(t, want, killedAt, failoverWithin)
	t.Logf("failover: revision %d, committed %s after the SIGKILL, served by every router and the watcher %s after the SIGKILL (%s)",
		rev, at.Sub(killedAt).Round(time.Millisecond), c.max.Round(time.Millisecond), c)
	standby.waitLeading(t, failoverWithin)
	t.Logf("failover: the standby's /readyz answers 200 as the leader %s after the SIGKILL", time.Since(killedAt).Round(time.Millisecond))

	_, at = b.commit(t, `UPDATE extensions SET enabled = true WHERE id = 'pii_guard'`)
	want = b.db(t)
	f.converge(t, want, at, convergeWithin)
	b.checkHistory(t, base, want)
	for _, r := range f.routers {
		if n := r.rejected.Load(); n != 0 {
			t.Errorf("%s rejected %d payloads: %v", r.name, n, r.errors())
		}
	}
}

// leaderAndStandby waits until one of two syncers leads and the other is a ready standby.
func (b *testBundle) leaderAndStandby(t *testing.T, procs []*syncerProc) (leader, standby *syncerProc) {
	t.Helper()
	eventually(t, 30*time.Second, "one leader and one standby", func() error {
		var codes [2]int
		var sts [2]syncerStatus
		for i, p := range procs {
			code, st, err := p.readyz(context.Background())
			if err != nil {
				return err
			}
			codes[i], sts[i] = code, st
		}
		ok := func(i int, role string) bool {
			return codes[i] == http.StatusOK && sts[i].Role == role && sts[i].Leader == (role == "leader")
		}
		switch {
		case ok(0, "leader") && ok(1, "standby"):
			leader, standby = procs[0], procs[1]
		case ok(1, "leader") && ok(0, "standby"):
			leader, standby = procs[1], procs[0]
		default:
			return fmt.Errorf("/readyz: %d %+v and %d %+v", codes[0], sts[0], codes[1], sts[1])
		}
		return nil
	})
	return leader, standby
}

// heartbeats records who sent each heartbeat (the syncer field is host:pid) and when.
type heartbeats struct {
	mu    sync.Mutex
	beats []heartbeat
}

type heartbeat struct {
	pid int
	at  time.Time
}

// recordHeartbeats subscribes to the heartbeat subject for the rest of the test.
func (b *testBundle) recordHeartbeats(t *testing.T) *heartbeats {
	t.Helper()
	h := &heartbeats{}
	sub, err := b.nc.Subscribe(b.names.Heartbeat(), func(m *nats.Msg) {
		hb, err := protocol.DecodeHeartbeat(m.Data)
		if err != nil {
			t.Errorf("heartbeat %q: %v", m.Data, err)
			return
		}
		pid, _ := strconv.Atoi(hb.Syncer[strings.LastIndexByte(hb.Syncer, ':')+1:])
		h.mu.Lock()
		h.beats = append(h.beats, heartbeat{pid, time.Now()})
		h.mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return h
}

// from counts the heartbeats of pid received after after.
func (h *heartbeats) from(pid int, after time.Time) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, hb := range h.beats {
		if hb.pid == pid && hb.at.After(after) {
			n++
		}
	}
	return n
}
