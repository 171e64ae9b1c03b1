package syncer_test

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/beamline/registry-syncer/cache"
	"github.com/beamline/registry-syncer/syncer"
)

// seedForDrift commits a small registry and returns the converged revision.
func (b *testBundle) seedForDrift(t *testing.T) int64 {
	t.Helper()
	b.exec(t, `INSERT INTO extensions (id, type, subject, timeout_ms) VALUES
			('a', 'pre', 'beamline.ext.pre.a.v1', 100), ('b', 'post', 'beamline.ext.post.b.v1', 150), ('c', 'provider', 'beamline.provider.c.v1', 5000)`,
		`INSERT INTO extension_instances (extension_id, instance_id, subject, weight) VALUES ('b', 'i1', 'beamline.ext.post.b.v1.i1', 50), ('c', 'i1', 'beamline.provider.c.v1.i1', 100)`,
		`INSERT INTO extension_versions (id, version, subject) VALUES ('c', 'v2', 'beamline.provider.c.v2')`)
	b.exec(t, `UPDATE extensions SET retry = 1 WHERE id = 'c'`)
	return b.waitConverged(t, 10*time.Second).Revision()
}

// drift changes the tables the way pg_restore or logical replication apply do: with
// session_replication_role = replica no trigger fires, so there is no revision and no
// change-log entry. (Foreign-key cascades are triggers too: c's rows go explicitly.)
func (b *testBundle) drift(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	var xid string
	err := pgx.BeginFunc(ctx, b.schema.Pool, func(tx pgx.Tx) error {
		for _, s := range []string{
			`SET LOCAL session_replication_role = replica`,
			`UPDATE extensions SET timeout_ms = 999 WHERE id = 'a'`,
			`UPDATE extension_instances SET weight = 7 WHERE extension_id = 'b'`,
			`DELETE FROM extension_instances WHERE extension_id = 'c'`,
			`DELETE FROM extension_versions WHERE id = 'c'`,
			`DELETE FROM extensions WHERE id = 'c'`,
			`INSERT INTO extensions (id, type, subject) VALUES ('d', 'validator', 'beamline.ext.validate.d.v1')`,
		} {
			if _, err := tx.Exec(ctx, s); err != nil {
				return err
			}
		}
		return tx.QueryRow(ctx, `SELECT pg_current_xact_id()::text`).Scan(&xid)
	})
	if err != nil {
		t.Fatal(err)
	}
	var made bool
	if err := b.schema.Pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM registry_revisions WHERE xid = $1::xid8)`, xid).Scan(&made); err != nil {
		t.Fatal(err)
	}
	if made {
		t.Fatal("the drift made a revision: triggers fired")
	}
}

// checkRepair checks the repair revision: one delta of whole aggregates for exactly the
// drifted extensions, on top of the last revision, and the earlier deltas unchanged.
func (b *testBundle) checkRepair(t *testing.T, seeded int64, before map[int64][]byte) {
	t.Helper()
	got := b.waitConverged(t, 10*time.Second)
	if got.Revision() != seeded+1 {
		t.Fatalf("repaired under revision %d, want one new revision %d", got.Revision(), seeded+1)
	}
	deltas := b.checkExactlyOnce(t, 1, got.Revision(), 0)
	b.replayAll(t, deltas, got.Revision())
	d := deltas[got.Revision()]
	want := []string{"put aggregate a", "put aggregate b", "delete aggregate c", "put aggregate d"}
	have := changeList(d.Changes)
	slices.Sort(want)
	slices.Sort(have)
	if !slices.Equal(have, want) {
		t.Errorf("repair delta %d: changes %v, want %v", d.Revision, have, want)
	}
	for _, c := range d.Changes {
		if c.Kind == cache.KindAggregate && c.Op == cache.OpPut && c.ID == "b" {
			if ins, _ := field(t, c, "instances").([]any); len(ins) != 1 || ins[0].(map[string]any)["weight"] != 7.0 {
				t.Errorf("repair of b: %s", c.Value)
			}
		}
	}
	after := b.storedRaw(t, 1, seeded)
	for r, data := range before {
		if !bytes.Equal(after[r], data) {
			t.Errorf("stored delta %d changed by the repair", r)
		}
	}
	if e, _ := got.Get("a"); e == nil || e.TimeoutMS != 999 {
		t.Errorf("a after the repair: %+v", e)
	}
}

// TestForceSyncRepairsDrift changes rows behind the triggers' back, then forces a sync:
// the difference is published under a new revision of whole aggregates; what was published
// under earlier revisions is unchanged; a second forced sync finds nothing.
func TestForceSyncRepairsDrift(t *testing.T) {
	t.Parallel()
	b := setup(t)
	r := b.start(t, nil) // SyncInterval 60s: only the forced sync runs
	b.waitConverged(t, 10*time.Second)
	seeded := b.seedForDrift(t)
	before := b.storedRaw(t, 1, seeded)

	b.drift(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.s.ForceSync(ctx); err != nil {
		t.Fatal(err)
	}
	b.checkRepair(t, seeded, before)
	if n := testutil.ToFloat64(r.metrics.ReconcileRepairs); n != 1 {
		t.Errorf("ReconcileRepairs %v, want 1", n)
	}
	if n := testutil.ToFloat64(r.metrics.DriftExtensions); n != 4 {
		t.Errorf("DriftExtensions %v, want 4", n)
	}
	// Nothing left to repair: no new revision.
	if err := r.s.ForceSync(ctx); err != nil {
		t.Fatal(err)
	}
	if rev := b.dbRevision(t); rev != seeded+1 {
		t.Errorf("a forced sync without drift made revision %d", rev)
	}
	if n := testutil.ToFloat64(r.metrics.ReconcileRepairs); n != 1 {
		t.Errorf("ReconcileRepairs %v after a sync without drift, want 1", n)
	}
	t.Logf("drift of 4 extensions repaired under revision %d; reconcile runs %v", seeded+1, testutil.ToFloat64(r.metrics.ReconcileRuns))
	r.stop(t)
}

// TestPeriodicReconcileRepairsDrift is the same repair, found by the periodic reconcile.
func TestPeriodicReconcileRepairsDrift(t *testing.T) {
	t.Parallel()
	b := setup(t)
	r := b.start(t, func(c *syncer.Config) { c.SyncInterval = 300 * time.Millisecond })
	b.waitConverged(t, 10*time.Second)
	seeded := b.seedForDrift(t)
	before := b.storedRaw(t, 1, seeded)
	if n := testutil.ToFloat64(r.metrics.ReconcileRepairs); n != 0 {
		t.Fatalf("ReconcileRepairs %v before any drift", n)
	}
	b.drift(t)
	start := time.Now()
	waitFor(t, 10*time.Second, "the periodic reconcile repairing", func() (bool, error) {
		return testutil.ToFloat64(r.metrics.ReconcileRepairs) == 1, nil
	})
	t.Logf("drift repaired by the periodic reconcile (interval 300ms) %s after it was made", time.Since(start).Round(time.Millisecond))
	b.checkRepair(t, seeded, before)
	r.stop(t)
}

// TestPoisonRowWithheld commits rows the router side refuses (the CHECK constraint that
// would refuse the first was dropped; the database accepts the others today): publishing
// must not stop. Each revision goes out without the offending aggregate, which is withheld
// — routers keep its last valid content or never see it — named in the status, the
// reason and a metric; later valid commits reach routers at once. When the row is fixed,
// the aggregate is published whole and the status clears; a syncer restarted meanwhile
// finds what is withheld from the database.
func TestPoisonRowWithheld(t *testing.T) {
	t.Parallel()
	b := setup(t)
	// A database without today's rules (migration 00005 undone): the rows below stand for
	// what reaches the tables past the constraints, or before a rule was tightened.
	b.schema.UndoRules(t)
	r := b.start(t, nil)
	router := b.router(t)
	b.waitConverged(t, 10*time.Second)
	b.exec(t, `INSERT INTO extensions (id, type, subject, timeout_ms) VALUES ('a', 'pre', 'beamline.ext.pre.a.v1', 100)`)
	waitRouter(t, router, b.schema.Pool, 10*time.Second)
	b.exec(t, `ALTER TABLE extensions DROP CONSTRAINT extensions_timeout_ms_between_10_and_5000`)
	poisoned := time.Now()
	// One transaction: a valid new extension and an invalid one.
	bad := b.exec(t, `INSERT INTO extensions (id, type, subject, timeout_ms) VALUES ('good', 'pre', 'beamline.ext.pre.good.v1', 100), ('bad', 'pre', 'beamline.ext.pre.bad.v1', 1)`)
	// An existing extension made invalid by a version (a subject with U+00A0 inside, which
	// PostgreSQL's CHECK accepts and the router refuses).
	b.exec(t, "INSERT INTO extension_versions (id, version, subject) VALUES ('a', 'v2', 'beamline.ext.pre.a x.v2')")
	later := b.exec(t, `UPDATE extensions SET timeout_ms = 200 WHERE id = 'good'`)
	waitFor(t, 10*time.Second, "the revision after the poison rows at the router", func() (bool, error) {
		return router.Revision() >= later, fmt.Errorf("router at %d", router.Revision())
	})
	t.Logf("poison rows: the next valid revision reached the router %s after the first poison commit", time.Since(poisoned).Round(time.Millisecond))
	snap := router.Snapshot()
	if e, ok := snap.Get("good"); !ok || e.TimeoutMS != 200 {
		t.Errorf("good: %+v %v", e, ok)
	}
	if _, ok := snap.Get("bad"); ok {
		t.Error("the invalid extension reached the router")
	}
	if e, ok := snap.Get("a"); !ok || len(e.Versions) != 0 {
		t.Errorf("a: want its last valid content (no versions), got %+v %v", e, ok)
	}
	d, err := b.reader.Delta(context.Background(), bad)
	if err != nil {
		t.Fatalf("revision %d (valid and invalid rows) not published: %v", bad, err)
	}
	for _, c := range d.Changes {
		if c.ID == "bad" {
			t.Errorf("revision %d carries a change of the withheld extension: %+v", bad, c)
		}
	}
	checkWithheld := func(r *running, want ...string) {
		t.Helper()
		waitFor(t, 10*time.Second, fmt.Sprintf("withheld %v", want), func() (bool, error) {
			st := r.s.Status()
			var got []string
			for _, w := range st.Withheld {
				got = append(got, w.ID)
			}
			if strings.Join(got, ",") != strings.Join(want, ",") || testutil.ToFloat64(r.metrics.Withheld) != float64(len(want)) {
				return false, fmt.Errorf("withheld %v, metric %v", got, testutil.ToFloat64(r.metrics.Withheld))
			}
			if len(want) > 0 && (st.Ready || !strings.Contains(st.Reason, want[0])) {
				return false, fmt.Errorf("ready %v, reason %q", st.Ready, st.Reason)
			}
			return len(want) > 0 || st.Ready, fmt.Errorf("%+v", st)
		})
	}
	checkWithheld(r, "a", "bad")
	// What `syncer status` shows (the P.status answer).
	if fs, err := r.s.Fleet(); err != nil || len(fs.Withheld) != 2 || fs.Withheld[0].ID != "a" || fs.Withheld[1].ID != "bad" {
		t.Errorf("fleet status withheld %+v (%v), want a and bad", fs, err)
	}

	// A new syncer (a new term) finds them in the database.
	r.stop(t)
	r = b.start(t, nil)
	checkWithheld(r, "a", "bad")

	// Fixed rows are published whole, and nothing stays withheld.
	b.exec(t, `UPDATE extensions SET timeout_ms = 50 WHERE id = 'bad'`)
	b.exec(t, `UPDATE extension_versions SET subject = 'beamline.ext.pre.a.v2' WHERE id = 'a' AND version = 'v2'`)
	waitRouter(t, router, b.schema.Pool, 10*time.Second)
	if e, ok := router.Snapshot().Get("bad"); !ok || e.TimeoutMS != 50 {
		t.Errorf("bad after the fix: %+v %v", e, ok)
	}
	if e, _ := router.Snapshot().Get("a"); e == nil || len(e.Versions) != 1 {
		t.Errorf("a after the fix: %+v", e)
	}
	checkWithheld(r)
	b.finalChecks(t)
	r.stop(t)
}

func keys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// TestReconcileRepairsDriftUnderWrites repairs drift while writers keep committing: the
// repair must not wait for a quiet moment that never comes.
func TestReconcileRepairsDriftUnderWrites(t *testing.T) {
	t.Parallel()
	b := setup(t)
	r := b.start(t, func(c *syncer.Config) { c.SyncInterval = 300 * time.Millisecond })
	b.waitConverged(t, 10*time.Second)
	b.seedForDrift(t)
	w := b.startWriters(2, 0, false)
	w.waitCommits(t, 50, 30*time.Second)
	b.drift(t)
	start := time.Now()
	waitFor(t, 15*time.Second, "the drift repaired while writers commit", func() (bool, error) {
		return testutil.ToFloat64(r.metrics.ReconcileRepairs) >= 1, nil
	})
	t.Logf("drift repaired %s after it was made, with writers committing", time.Since(start).Round(time.Millisecond))
	if err := w.wait(); err != nil {
		t.Fatal(err)
	}
	got := b.waitConverged(t, 20*time.Second)
	deltas := b.checkExactlyOnce(t, 1, got.Revision(), 0)
	b.replayAll(t, deltas, got.Revision())
	repairs := 0
	for _, d := range deltas {
		if len(d.Changes) > 0 && d.Changes[0].Kind == cache.KindAggregate {
			repairs++
		}
	}
	if repairs != 1 {
		t.Errorf("%d repair revisions, want 1", repairs)
	}
	r.stop(t)
}

// TestEachPoisonRowWithheld pushes each of the rows measured to wedge the syncer (the
// database accepts them, the router side refuses them) and checks that the next valid
// revision still reaches a router, without the poison.
func TestEachPoisonRowWithheld(t *testing.T) {
	t.Parallel()
	ins := `INSERT INTO extensions (id, type, subject, version, config) VALUES `
	rows := map[string]string{
		"multibyte subject of 612 bytes": ins + `('p', 'pre', 'beamline.ext.pre.' || repeat('é', 296) || '.v1', 'v1', '{}')`,
		"control character in subject":   ins + `('p', 'pre', E'beamline.ext.pre.a\x01b.v1', 'v1', '{}')`,
		"no-break space in subject":      ins + "('p', 'pre', 'beamline.ext.pre.a\u00a0b.v1', 'v1', '{}')",
		"version of 80 bytes":            ins + `('p', 'pre', 'beamline.ext.pre.p.v1', repeat('é', 40), '{}')`,
		"config nested 300 deep":         ins + `('p', 'pre', 'beamline.ext.pre.p.v1', 'v1', (repeat('{"a":', 300) || '1' || repeat('}', 300))::jsonb)`,
		"number 1e400":                   ins + `('p', 'pre', 'beamline.ext.pre.p.v1', 'v1', '{"x": 1e400}')`,
		"instance_id of 400 bytes": `WITH e AS (` + ins + `('p', 'pre', 'beamline.ext.pre.p.v1', 'v1', '{}') RETURNING id)
			INSERT INTO extension_instances (extension_id, instance_id, subject) SELECT id, repeat('é', 200), 'beamline.ext.pre.p.v1' FROM e`,
	}
	for name, row := range rows {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			// Today's database refuses the row, naming the broken rule...
			if _, err := b.schema.Pool.Exec(context.Background(), row); err == nil || !strings.Contains(err.Error(), "violates check constraint") {
				t.Fatalf("the database accepted the poison row (or refused it without naming a constraint): %v", err)
			}
			// ...and a database without the rules (written before them, or past them) must
			// not stop publishing either.
			b.schema.UndoRules(t)
			r := b.start(t, nil)
			router := b.router(t)
			b.exec(t, `INSERT INTO extensions (id, type, subject) VALUES ('a', 'pre', 'beamline.ext.pre.a.v1')`)
			waitRouter(t, router, b.schema.Pool, 10*time.Second)
			poisoned := time.Now()
			b.exec(t, row)
			next := b.exec(t, `UPDATE extensions SET retry = 1 WHERE id = 'a'`)
			waitFor(t, 10*time.Second, "the next valid revision at the router", func() (bool, error) {
				return router.Revision() >= next, fmt.Errorf("router at %d", router.Revision())
			})
			t.Logf("%s: next valid revision at the router %s after the poison commit", name, time.Since(poisoned).Round(time.Millisecond))
			if _, ok := router.Snapshot().Get("p"); ok {
				t.Error("the poison row reached the router")
			}
			waitFor(t, 10*time.Second, "p withheld", func() (bool, error) {
				st := r.s.Status()
				return len(st.Withheld) == 1 && st.Withheld[0].ID == "p", fmt.Errorf("%+v", st.Withheld)
			})
			r.stop(t)
		})
	}
}

// TestForcedSyncReleasesWithheld: a withheld row fixed past the triggers (no revision, no
// notification — session_replication_role = replica, as pg_restore writes) is released by
// a forced sync (POST /admin/sync), which publishes it whole under a new revision.
func TestForcedSyncReleasesWithheld(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.schema.UndoRules(t) // a row from before today's rules
	r := b.start(t, nil)
	router := b.router(t)
	b.exec(t, "INSERT INTO extensions (id, type, subject) VALUES ('p', 'pre', 'beamline.ext.pre.p\u00a0x.v1')")
	b.exec(t, `INSERT INTO extensions (id, type, subject) VALUES ('a', 'pre', 'beamline.ext.pre.a.v1')`)
	waitRouter(t, router, b.schema.Pool, 10*time.Second)
	waitFor(t, 10*time.Second, "p withheld", func() (bool, error) { return len(r.s.Status().Withheld) == 1, nil })
	b.exec(t, `SET LOCAL session_replication_role = replica`, `UPDATE extensions SET subject = 'beamline.ext.pre.p.v1' WHERE id = 'p'`)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := r.s.ForceSync(ctx); err != nil {
		t.Fatal(err)
	}
	waitRouter(t, router, b.schema.Pool, 10*time.Second)
	if e, ok := router.Snapshot().Get("p"); !ok || e.Subject != "beamline.ext.pre.p.v1" {
		t.Errorf("p after the forced sync: %+v %v", e, ok)
	}
	if st := r.s.Status(); len(st.Withheld) != 0 || !st.Ready {
		t.Errorf("status after the forced sync: %+v", st)
	}
	r.stop(t)
}
