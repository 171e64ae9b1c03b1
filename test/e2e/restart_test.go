package e2e

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestLateJoinerWhileSyncerStopped starts a router while no syncer runs (the only one
// was killed): it bootstraps from the streams alone (invariant 6) — from a snapshot older
// than the newest delta, so it must also read the deltas stored after it — and then
// follows a new syncer process that catches up with a change committed meanwhile.
func TestLateJoinerWhileSyncerStopped(t *testing.T) {
	t.Parallel()
	b := setup(t, "e2e.latejoiner")
	b.seedDefaults(t)
	// A snapshot interval of an hour: after the first snapshot, only deltas are stored.
	first := b.startSyncer(t, "SNAPSHOT_INTERVAL", "1h")
	first.waitReady(t, 30*time.Second)
	base := b.storedSnapshot(t)
	f := b.startFleet(t, 5, true)
	f.converge(t, b.db(t), time.Now(), 30*time.Second)
	for i := range 3 {
		_, at := b.commit(t, fmt.Sprintf(`UPDATE extensions SET metadata = '{"step": %d}' WHERE id = 'mask_pii'`, i))
		f.converge(t, b.db(t), at, convergeWithin)
	}
	published := b.db(t)
	if stored := b.storedSnapshot(t); stored.Revision() >= published.Revision() {
		t.Fatalf("stored snapshot at revision %d, want it older than the newest delta %d for this test", stored.Revision(), published.Revision())
	}

	first.kill(t)
	start := time.Now()
	late := b.startRouter(t, b.url)
	eventually(t, 10*time.Second, "the late joiner bootstrapped", func() error { return late.serves(published) })
	t.Logf("late joiner with no syncer running: revision %d served %s after start (snapshot %d + stored deltas)",
		published.Revision(), time.Since(start).Round(time.Millisecond), base.Revision())
	if _, ok := late.c.Lookup("mask_pii"); !ok {
		t.Fatal("late joiner: Lookup(mask_pii) found nothing")
	}

	// A change while no syncer runs reaches nobody...
	rev, at := b.commit(t, `INSERT INTO extensions (id, type, subject, timeout_ms) VALUES ('late_one', 'post', 'beamline.ext.post.late_one.v1', 50)`)
	if late.c.Revision() != published.Revision() {
		t.Fatalf("late joiner at revision %d with no syncer running", late.c.Revision())
	}
	// ...until a new syncer process catches up from the change log.
	second := b.startSyncer(t)
	second.waitReady(t, 30*time.Second)
	f.routers = append(f.routers, late)
	c := f.converge(t, b.db(t), at, 30*time.Second)
	t.Logf("revision %d committed while no syncer ran: served %s after the commit (syncer start included)", rev, c.max.Round(time.Millisecond))
	_, at = b.commit(t, `UPDATE extensions SET enabled = false WHERE id = 'late_one'`)
	c = f.converge(t, b.db(t), at, convergeWithin)
	t.Logf("next change through the new syncer: %s", c)
	if _, ok := late.c.Lookup("late_one"); ok {
		t.Error("late joiner: Lookup returns the disabled late_one")
	}
	if n := late.rejected.Load(); n != 0 {
		t.Errorf("late joiner rejected %d payloads: %v", n, late.errors())
	}
	b.checkHistory(t, base, b.db(t))
}

// TestSyncerKilledMidBurst kills the syncer with SIGKILL while a writer commits 500
// transactions and starts a new process: every revision is published exactly once, in
// order, the routers converge and the stored snapshot equals the database.
func TestSyncerKilledMidBurst(t *testing.T) {
	t.Parallel()
	b := setup(t, "e2e.killburst")
	b.seedDefaults(t)
	first := b.startSyncer(t)
	first.waitReady(t, 30*time.Second)
	base := b.storedSnapshot(t)
	f := b.startFleet(t, 5, false)
	f.converge(t, b.db(t), time.Now(), 30*time.Second)

	const commits = 500
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var (
		wg       sync.WaitGroup
		burstErr atomic.Pointer[error]
	)
	wg.Go(func() {
		for i := range commits {
			var stmts []string
			switch {
			case i%5 == 4: // a multi-table transaction
				stmts = []string{
					fmt.Sprintf(`INSERT INTO extension_instances (extension_id, instance_id, subject, weight) VALUES ('burst_%03d', 'i', 'beamline.ext.post.burst_%03d.v1.i', %d)`, i-2, i-2, i%100),
					fmt.Sprintf(`UPDATE extensions SET retry = %d WHERE id = 'burst_%03d'`, i%4, i-3),
				}
			case i%5 == 3:
				stmts = []string{fmt.Sprintf(`UPDATE extensions SET metadata = '{"i": %d}' WHERE id = 'normalize_text'`, i)}
			default:
				stmts = []string{fmt.Sprintf(`INSERT INTO extensions (id, type, subject, timeout_ms) VALUES ('burst_%03d', 'post', 'beamline.ext.post.burst_%03d.v1', %d)`, i, i, 10+i)}
			}
			if _, _, err := commitOn(ctx, b.schema.Pool, stmts...); err != nil {
				err = fmt.Errorf("commit %d of the burst: %w", i, err)
				burstErr.Store(&err)
				return
			}
		}
	})

	// Kill once the routers have applied a hundred revisions of the burst.
	r0 := f.routers[0]
	eventually(t, 30*time.Second, "100 revisions of the burst applied", func() error {
		if err := burstErr.Load(); err != nil {
			t.Fatal(*err)
		}
		if rev := r0.c.Revision(); rev < base.Revision()+100 {
			return fmt.Errorf("%s at revision %d", r0.name, rev)
		}
		return nil
	})
	killedAt := r0.c.Revision()
	first.kill(t)
	dbAtKill := b.db(t).Revision()
	t.Logf("SIGKILL with the routers at revision %d, the database at %d", killedAt, dbAtKill)
	restartAt := time.Now()
	backlog := b.db(t).Revision() // committed before the new process started
	second := b.startSyncer(t)
	wg.Wait()
	burstEnd := time.Now()
	if err := burstErr.Load(); err != nil {
		t.Fatal(*err)
	}
	want := b.db(t)
	if want.Revision() != base.Revision()+commits {
		t.Fatalf("database at revision %d after %d commits from %d", want.Revision(), commits, base.Revision())
	}
	if want.Revision() <= dbAtKill {
		t.Fatalf("the burst ended (revision %d) before the kill (database at %d): nothing was committed during the outage", want.Revision(), dbAtKill)
	}
	second.waitReady(t, 30*time.Second)
	c := f.converge(t, want, restartAt, 30*time.Second)
	t.Logf("the routers reached the burst's last revision %d %s after the new process started, %s after the last commit (%s)",
		want.Revision(), c.max.Round(time.Millisecond), max(0, c.max-burstEnd.Sub(restartAt)).Round(time.Millisecond), c)
	var caughtUp time.Duration
	for _, r := range f.routers {
		for _, in := range r.installsSince(0) {
			if in.rev >= backlog {
				caughtUp = max(caughtUp, in.at.Sub(restartAt))
				break
			}
		}
	}
	t.Logf("backlog: the routers were at revision %d when the syncer died; the new process brought them to revision %d (the database when it started) %s after its start",
		killedAt, backlog, caughtUp.Round(time.Millisecond))
	b.waitStoredSnapshot(t, want, 10*time.Second)
	b.checkHistory(t, base, want)
	for _, r := range f.routers {
		if n := r.rejected.Load(); n != 0 {
			t.Errorf("%s rejected %d payloads: %v", r.name, n, r.errors())
		}
	}
}
