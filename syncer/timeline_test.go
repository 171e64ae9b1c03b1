package syncer_test

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/beamline/registry-syncer/cache"
	"github.com/beamline/registry-syncer/client"
	"github.com/beamline/registry-syncer/migrations"
	"github.com/beamline/registry-syncer/syncer"
	"github.com/beamline/registry-syncer/test/harness"
)

// A router for the timeline tests: the Go client on its own connection.
func (b *testBundle) router(t *testing.T) *client.Client {
	t.Helper()
	c, err := client.New(b.nats.Connect(t), client.Config{Prefix: b.prefix})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	return c
}

// waitRouter waits until the router serves the database's content at the database's
// revision (read through pool) and returns it.
func waitRouter(t *testing.T, c *client.Client, pool *pgxpool.Pool, within time.Duration) *cache.Snapshot {
	t.Helper()
	var db *cache.Snapshot
	waitFor(t, within, "the router serving the database's content", func() (bool, error) {
		var err error
		if db, err = syncer.ReadDatabase(context.Background(), pool); err != nil {
			return false, err
		}
		got := c.Snapshot()
		if got == nil {
			return false, fmt.Errorf("router has no snapshot")
		}
		if got.Revision() != db.Revision() || got.Checksum() != db.Checksum() {
			return false, fmt.Errorf("router at %d (%s), database at %d (%s), differing %v",
				got.Revision(), got.Checksum()[:8], db.Revision(), db.Checksum()[:8], got.Diff(db))
		}
		return true, nil
	})
	return db
}

func execOn(t *testing.T, pool *pgxpool.Pool, stmts ...string) {
	t.Helper()
	err := pgx.BeginFunc(context.Background(), pool, func(tx pgx.Tx) error {
		for _, s := range stmts {
			if _, err := tx.Exec(context.Background(), s); err != nil {
				return fmt.Errorf("%s: %w", s, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// checkNewTimeline: the router serves the new timeline's content under a revision above
// everything published before, without the rows only the old timeline had, the change was
// counted, and the syncer is ready again.
func checkNewTimeline(t *testing.T, r *running, c *client.Client, publishedBefore int64, gone string) {
	t.Helper()
	snap := c.Snapshot()
	if snap.Revision() <= publishedBefore {
		t.Errorf("new timeline served at revision %d, not above the %d published before", snap.Revision(), publishedBefore)
	}
	if _, ok := snap.Get(gone); ok {
		t.Errorf("the router still has %q, which exists only on the old timeline", gone)
	}
	if n := testutil.ToFloat64(r.metrics.TimelineChanges); n < 1 {
		t.Errorf("registry_syncer_timeline_changes_total = %v, want at least 1", n)
	}
	waitFor(t, 10*time.Second, "the syncer ready on the new timeline", func() (bool, error) {
		st := r.s.Status()
		return st.Ready && st.Revision == snap.Revision() && st.DatabaseRevision == snap.Revision(), fmt.Errorf("%+v", st)
	})
}

// TestPromotedStandbyNewTimeline: a primary with an asynchronous streaming standby whose
// replication is held back (a stalled proxy), commits the standby never gets, the primary
// SIGKILLed, the standby promoted — as asynchronous replication allows, acknowledged
// commits are lost, and the standby's revision numbers then name other transactions. The
// syncer, on a multi-host URL with target_session_attrs=read-write, must notice and publish
// the promoted database's content above every published revision; routers converge.
func TestPromotedStandbyNewTimeline(t *testing.T) {
	t.Parallel()
	b, primary := setupPrivate(t)
	proxy := harness.NewProxy(t, primary.Addr())
	standby, err := primary.StartStandby(proxy.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(standby.Stop)
	u, err := url.Parse(b.schema.URL)
	if err != nil {
		t.Fatal(err)
	}
	u.Host = primary.Addr() + "," + standby.Addr()
	q := u.Query()
	q.Set("target_session_attrs", "read-write")
	u.RawQuery = q.Encode()
	r := b.start(t, func(c *syncer.Config) { c.DatabaseURL = u.String(); c.LeaderTTL = 2 * time.Second })
	router := b.router(t)

	b.exec(t, `INSERT INTO extensions (id, type, subject) VALUES ('a', 'pre', 'beamline.ext.pre.a.v1'), ('b', 'post', 'beamline.ext.post.b.v1')`)
	waitRouter(t, router, b.schema.Pool, 10*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := primary.WaitReplayed(ctx, standby); err != nil {
		t.Fatal(err)
	}
	proxy.Stall() // replication stops here: what follows exists only on the primary
	for i := 0; i < 20; i++ {
		b.exec(t, fmt.Sprintf(`UPDATE extensions SET timeout_ms = %d WHERE id = 'a'`, 100+i))
	}
	b.exec(t, `INSERT INTO extensions (id, type, subject) VALUES ('only_on_primary', 'pre', 'beamline.ext.pre.only_on_primary.v1')`)
	lost := waitRouter(t, router, b.schema.Pool, 10*time.Second)
	t.Logf("published up to revision %d on the primary; the standby stopped replicating before 21 of them", lost.Revision())

	primary.Shutdown(harness.StopKill)
	if err := standby.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	promoted := time.Now()
	pool, err := pgxpool.New(ctx, standby.URL("postgres", b.schema.Name))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	execOn(t, pool, `UPDATE extensions SET retry = 2 WHERE id = 'b'`)
	db := waitRouter(t, router, pool, 15*time.Second)
	t.Logf("promoted standby: the router serves its content (revision %d) %s after the promotion",
		db.Revision(), time.Since(promoted).Round(time.Millisecond))
	checkNewTimeline(t, r, router, lost.Revision(), "only_on_primary")
	// It keeps following the new timeline.
	execOn(t, pool, `UPDATE extensions SET retry = 3 WHERE id = 'b'`)
	waitRouter(t, router, pool, 10*time.Second)
	r.stop(t)
}

// TestRestoredDumpNewTimeline restores an older dump of the registry in place under a
// running syncer: the change log goes back, later revision numbers will be reused.
func TestRestoredDumpNewTimeline(t *testing.T) {
	t.Parallel()
	b := setup(t)
	r := b.start(t, nil)
	router := b.router(t)
	b.exec(t, `INSERT INTO extensions (id, type, subject) VALUES ('a', 'pre', 'beamline.ext.pre.a.v1')`)
	waitRouter(t, router, b.schema.Pool, 10*time.Second)
	dump := filepath.Join(t.TempDir(), "registry.sql")
	ctx := context.Background()
	if err := b.schema.PG.Dump(ctx, b.schema.Name, dump); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		b.exec(t, fmt.Sprintf(`UPDATE extensions SET timeout_ms = %d WHERE id = 'a'`, 100+i))
	}
	b.exec(t, `INSERT INTO extensions (id, type, subject) VALUES ('after_dump', 'pre', 'beamline.ext.pre.after_dump.v1')`)
	before := waitRouter(t, router, b.schema.Pool, 10*time.Second)

	// Restore in place, in one transaction: drop the schema, replay the dump.
	data, err := os.ReadFile(dump)
	if err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(t.TempDir(), "restore.sql")
	drop := "DROP SCHEMA " + pgx.Identifier{b.schema.Name}.Sanitize() + " CASCADE;\n"
	if err := os.WriteFile(script, append([]byte(drop), data...), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := b.schema.PG.Restore(ctx, script); err != nil {
		t.Fatal(err)
	}
	restored := time.Now()
	b.exec(t, `UPDATE extensions SET retry = 1 WHERE id = 'a'`)
	db := waitRouter(t, router, b.schema.Pool, 15*time.Second)
	t.Logf("restored dump: the router serves the restored content (revision %d, published before %d) %s after the restore",
		db.Revision(), before.Revision(), time.Since(restored).Round(time.Millisecond))
	checkNewTimeline(t, r, router, before.Revision(), "after_dump")
	r.stop(t)
}

// TestRecreatedDatabaseNewTimeline drops the registry and creates it again (migrations, a
// new registry id, revisions from 1) under a running syncer.
func TestRecreatedDatabaseNewTimeline(t *testing.T) {
	t.Parallel()
	b := setup(t)
	r := b.start(t, nil)
	router := b.router(t)
	for i := 0; i < 4; i++ {
		b.exec(t, fmt.Sprintf(`INSERT INTO extensions (id, type, subject) VALUES ('old_%d', 'pre', 'beamline.ext.pre.old_%d.v1')`, i, i))
	}
	before := waitRouter(t, router, b.schema.Pool, 10*time.Second)
	ctx := context.Background()
	name := pgx.Identifier{b.schema.Name}.Sanitize()
	if err := b.schema.PG.Exec(ctx, "DROP SCHEMA "+name+" CASCADE"); err != nil {
		t.Fatal(err)
	}
	if err := b.schema.PG.Exec(ctx, "CREATE SCHEMA "+name); err != nil {
		t.Fatal(err)
	}
	sqldb, err := migrations.Open(b.schema.URL)
	if err != nil {
		t.Fatal(err)
	}
	_, err = migrations.Up(ctx, sqldb)
	sqldb.Close()
	if err != nil {
		t.Fatal(err)
	}
	recreated := time.Now()
	b.exec(t, `INSERT INTO extensions (id, type, subject) VALUES ('fresh', 'pre', 'beamline.ext.pre.fresh.v1')`)
	db := waitRouter(t, router, b.schema.Pool, 15*time.Second)
	t.Logf("re-created database: the router serves it (revision %d, published before %d) %s after the re-creation",
		db.Revision(), before.Revision(), time.Since(recreated).Round(time.Millisecond))
	checkNewTimeline(t, r, router, before.Revision(), "old_0")
	if all := db.All(); len(all) != 1 || all[0].ID != "fresh" {
		t.Errorf("database content: %d extensions", len(all))
	}
	r.stop(t)
}
