package e2e

import (
	"context"
	"errors"
	"syscall"
	"testing"
	"time"
)

// TestFrozenLeader freezes the leading syncer process with SIGSTOP while a standby runs:
// its sessions stay open (a session advisory lock would be held for as long as it is
// frozen), so only a lease the frozen leader stops renewing lets the standby in. The
// standby must lead and publish a commit within failoverWithin. Then SIGCONT: the old
// leader wakes up with timers long overdue and a heartbeat due; it must publish nothing
// (its lease ran out by its own monotonic clock), become a standby, and the stream must hold
// each revision once with an unbroken prev chain: never two publishers, no conflicting
// revision.
func TestFrozenLeader(t *testing.T) {
	t.Parallel()
	b := setup(t, "e2e.freeze")
	b.seedDefaults(t)

	beats := b.recordHeartbeats(t)
	beatsFrom := beats.from

	procs := []*syncerProc{b.startSyncer(t), b.startSyncer(t)}
	leader, standby := b.leaderAndStandby(t, procs)
	base := b.storedSnapshot(t)
	f := b.startFleet(t, 3, false)
	_, at := b.commit(t, `UPDATE extensions SET retry = 1 WHERE id = 'pii_guard'`)
	f.converge(t, b.db(t), at, convergeWithin)

	if err := syscall.Kill(leader.pid(), syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	frozen := time.Now()
	resumed := false
	t.Cleanup(func() {
		if !resumed {
			_ = syscall.Kill(leader.pid(), syscall.SIGCONT)
		}
	})
	_, at = b.commit(t, `UPDATE extensions SET enabled = false WHERE id = 'pii_guard'`)
	f.converge(t, b.db(t), frozen, failoverWithin)
	t.Logf("frozen leader: the commit %s after SIGSTOP reached every router %s after SIGSTOP",
		at.Sub(frozen).Round(time.Millisecond), time.Since(frozen).Round(time.Millisecond))
	standby.waitLeading(t, failoverWithin)
	took := time.Since(frozen)
	t.Logf("frozen leader: the standby leads (/readyz) %s after SIGSTOP", took.Round(time.Millisecond))

	// Keep it frozen well past its lease, as a hung process would be.
	eventually(t, 30*time.Second, "the new leader's heartbeats for a while", func() error {
		if time.Since(frozen) < 8*time.Second || beatsFrom(standby.pid(), frozen) < 3 {
			return errWaiting
		}
		return nil
	})
	if err := syscall.Kill(leader.pid(), syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	resumed = true
	woke := time.Now()
	_, at = b.commit(t, `UPDATE extensions SET enabled = true WHERE id = 'pii_guard'`)
	want := b.db(t)
	f.converge(t, want, at, convergeWithin)
	eventually(t, 20*time.Second, "the old leader a ready standby", func() error {
		_, st, err := leader.readyz(context.Background())
		if err != nil {
			return err
		}
		if st.Leader || st.Role != "standby" {
			return errWaiting
		}
		return nil
	})
	// A bounded "nothing else arrived" window: a few heartbeat intervals after waking.
	eventually(t, 10*time.Second, "a second of the new leader's heartbeats after SIGCONT", func() error {
		if time.Since(woke) < time.Second || beatsFrom(standby.pid(), woke) < 3 {
			return errWaiting
		}
		return nil
	})
	if n := beatsFrom(leader.pid(), frozen); n != 0 {
		t.Errorf("the deposed leader sent %d heartbeats after SIGSTOP/SIGCONT", n)
	}
	b.checkHistory(t, base, want)
	for _, r := range f.routers {
		if n := r.rejected.Load(); n != 0 {
			t.Errorf("%s rejected %d payloads: %v", r.name, n, r.errors())
		}
	}
}

// errWaiting is what an eventually condition returns while it does not hold yet.
var errWaiting = errors.New("not yet")
