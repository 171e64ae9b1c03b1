package triggers_test

import (
	"reflect"
	"testing"
	"time"
)

// TestAuditChangedBy: the actor is the session's registry.changed_by (or a transaction's
// SET LOCAL), else the database user, in the change log, the revision and the row.
func TestAuditChangedBy(t *testing.T) {
	t.Parallel()
	s := newSchema(t)
	ctx := testCtx(t, 30*time.Second)
	conn := connect(t, ctx, s.URL)
	user := queryString(t, ctx, conn, `SELECT current_user::text`)

	actors := func(rev int64) (log, revision string) {
		t.Helper()
		var maxLog string
		if err := conn.QueryRow(ctx, `SELECT min(a.changed_by), max(a.changed_by), r.changed_by
			FROM registry_revisions r JOIN extension_audit_log a ON a.xid = r.xid
			WHERE r.revision = $1 GROUP BY r.changed_by`, rev).Scan(&log, &maxLog, &revision); err != nil {
			t.Fatalf("revision %d: %v", rev, err)
		}
		if log != maxLog {
			t.Fatalf("revision %d: change log rows by %q and %q", rev, log, maxLog)
		}
		return log, revision
	}

	mustExec(t, ctx, conn, `INSERT INTO extensions (id, type, subject) VALUES ('x', 'pre', 'beamline.ext.pre.x.v1')`)
	if l, r := actors(1); l != user || r != user {
		t.Fatalf("without registry.changed_by: change log %q, revision %q, want the database user %q", l, r, user)
	}

	mustExec(t, ctx, conn, `SET registry.changed_by = 'alice'`)
	mustExec(t, ctx, conn, `UPDATE extensions SET timeout_ms = 250 WHERE id = 'x'`)
	if l, r := actors(2); l != "alice" || r != "alice" {
		t.Fatalf("with SET registry.changed_by: change log %q, revision %q, want alice", l, r)
	}
	if by := queryString(t, ctx, conn, `SELECT created_by || '/' || updated_by FROM extensions WHERE id = 'x'`); by != user+"/alice" {
		t.Fatalf("created_by/updated_by %q, want %s/alice", by, user)
	}

	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	mustExec(t, ctx, tx, `SET LOCAL registry.changed_by = 'bob'`)
	mustExec(t, ctx, tx, `INSERT INTO extension_instances (extension_id, instance_id, subject) VALUES ('x', 'i1', 'beamline.ext.pre.x.v1')`)
	mustExec(t, ctx, tx, `UPDATE extensions SET retry = 2 WHERE id = 'x'`)
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if l, r := actors(3); l != "bob" || r != "bob" {
		t.Fatalf("with SET LOCAL in the transaction: change log %q, revision %q, want bob", l, r)
	}
	if by := queryString(t, ctx, conn, `SELECT updated_by FROM extensions WHERE id = 'x'`); by != "bob" {
		t.Fatalf("updated_by %q, want bob", by)
	}

	// SET LOCAL ends with the transaction; the session setting is back.
	mustExec(t, ctx, conn, `DELETE FROM extensions WHERE id = 'x'`)
	if l, r := actors(4); l != "alice" || r != "alice" {
		t.Fatalf("after the SET LOCAL transaction: change log %q, revision %q, want alice", l, r)
	}
	// An empty setting falls back to the database user.
	mustExec(t, ctx, conn, `SET registry.changed_by = ''`)
	mustExec(t, ctx, conn, `INSERT INTO extensions (id, type, subject) VALUES ('y', 'pre', 'beamline.ext.pre.y.v1')`)
	if l, r := actors(5); l != user || r != user {
		t.Fatalf("with an empty registry.changed_by: change log %q, revision %q, want %q", l, r, user)
	}
}

// TestAuditDeleteKeepsTrail: deleting an extension keeps its history and records the
// deletion of the versions and instances that cascade with it, in the same revision.
func TestAuditDeleteKeepsTrail(t *testing.T) {
	t.Parallel()
	s := newSchema(t)
	ctx := testCtx(t, 30*time.Second)
	db := s.Pool
	mustExec(t, ctx, db, `INSERT INTO extensions (id, type, subject) VALUES ('x', 'pre', 'beamline.ext.pre.x.v1'), ('keep', 'post', 'beamline.ext.post.keep.v1')`)
	mustExec(t, ctx, db, `INSERT INTO extension_versions (id, version, subject) VALUES ('x', 'v1', 'beamline.ext.pre.x.v1'), ('x', 'v2', 'beamline.ext.pre.x.v2')`)
	mustExec(t, ctx, db, `INSERT INTO extension_instances (extension_id, instance_id, subject) VALUES ('x', 'a', 'beamline.ext.pre.x.v1'), ('x', 'b', 'beamline.ext.pre.x.v1')`)
	mustExec(t, ctx, db, `UPDATE extensions SET enabled = false WHERE id = 'x'`)
	mustExec(t, ctx, db, `INSERT INTO extension_health (extension_id) VALUES ('x')`)
	before := changeLog(t, ctx, db, 0)

	mustExec(t, ctx, db, `DELETE FROM extensions WHERE id = 'x'`)
	rev := counter(t, ctx, db)
	after := changeLog(t, ctx, db, 0)
	if !reflect.DeepEqual(after[:len(before)], before) {
		t.Fatalf("deleting the extension changed its earlier history")
	}
	deleted := map[string]bool{}
	for _, c := range after[len(before):] {
		if c.Revision != rev || c.Action != "delete" || c.ExtensionID != "x" || c.Old == nil || c.New != nil {
			t.Fatalf("unexpected entry for the delete: %s old %v new %v", c, c.Old, c.New)
		}
		k := c.Entity
		if c.EntityKey != nil {
			k += "/" + *c.EntityKey
		}
		deleted[k] = true
	}
	want := map[string]bool{"extension": true, "version/v1": true, "version/v2": true, "instance/a": true, "instance/b": true}
	if !reflect.DeepEqual(deleted, want) {
		t.Fatalf("delete entries %v, want %v", deleted, want)
	}
	if n := queryInt(t, ctx, db, `SELECT count(*) FROM extension_audit_log WHERE extension_id = 'x'`); n != int64(len(after)-1) {
		t.Fatalf("%d audit rows for x, want %d", n, len(after)-1)
	}
	// The replayed log agrees with the tables.
	r := newRegistry()
	r.replay(t, after)
	if d := r.diff(readRegistry(t, ctx, db)); d != "" {
		t.Fatalf("replay differs:\n%s", d)
	}
}

// TestAuditVersionChangeKeepsPrevious: moving an extension to a new version keeps the
// previous definition in extension_versions, in the same revision.
func TestAuditVersionChangeKeepsPrevious(t *testing.T) {
	t.Parallel()
	s := newSchema(t)
	ctx := testCtx(t, 30*time.Second)
	db := s.Pool
	mustExec(t, ctx, db, `INSERT INTO extensions (id, type, subject, timeout_ms, retry, config, metadata)
		VALUES ('x', 'pre', 'beamline.ext.pre.x.v1', 100, 1, '{"a": 1}', '{"owner": "team"}')`)
	mustExec(t, ctx, db, `UPDATE extensions SET version = 'v2', subject = 'beamline.ext.pre.x.v2', timeout_ms = 200, config = '{"a": 2}' WHERE id = 'x'`)

	var subject, config, metadata string
	var timeout, retry int
	var enabled bool
	if err := db.QueryRow(ctx, `SELECT subject, timeout_ms, retry, config::text, metadata::text, enabled
		FROM extension_versions WHERE id = 'x' AND version = 'v1'`).Scan(&subject, &timeout, &retry, &config, &metadata, &enabled); err != nil {
		t.Fatalf("previous version v1 not kept: %v", err)
	}
	if subject != "beamline.ext.pre.x.v1" || timeout != 100 || retry != 1 || !enabled ||
		!reflect.DeepEqual(jsonOf(t, config), jsonOf(t, `{"a": 1}`)) || !reflect.DeepEqual(jsonOf(t, metadata), jsonOf(t, `{"owner": "team"}`)) {
		t.Fatalf("kept v1 = %s %d %d %s %s %v, want the previous definition", subject, timeout, retry, config, metadata, enabled)
	}
	log := changeLog(t, ctx, db, 1)
	if len(log) != 2 || log[0].Entity != "extension" || log[0].Action != "update" ||
		log[1].Entity != "version" || log[1].Action != "create" || *log[1].EntityKey != "v1" || log[1].Revision != log[0].Revision {
		t.Fatalf("version change logged as %v, want one revision with the update and the kept version", log)
	}

	// Going back keeps v2 and leaves the recorded v1 alone.
	mustExec(t, ctx, db, `UPDATE extension_versions SET routing_rules = '{"tenant_id": ["t1"]}' WHERE id = 'x' AND version = 'v1'`)
	mustExec(t, ctx, db, `UPDATE extensions SET version = 'v1', subject = 'beamline.ext.pre.x.v1' WHERE id = 'x'`)
	if n := queryInt(t, ctx, db, `SELECT count(*) FROM extension_versions WHERE id = 'x'`); n != 2 {
		t.Fatalf("%d versions kept, want v1 and v2", n)
	}
	if r := queryString(t, ctx, db, `SELECT routing_rules::text FROM extension_versions WHERE id = 'x' AND version = 'v1'`); !reflect.DeepEqual(jsonOf(t, r), jsonOf(t, `{"tenant_id": ["t1"]}`)) {
		t.Fatalf("switching back overwrote the recorded v1: routing_rules %s", r)
	}
	if st := queryString(t, ctx, db, `SELECT subject || ' ' || timeout_ms FROM extension_versions WHERE id = 'x' AND version = 'v2'`); st != "beamline.ext.pre.x.v2 200" {
		t.Fatalf("kept v2 = %q", st)
	}
	r := newRegistry()
	r.replay(t, changeLog(t, ctx, db, 0))
	if d := r.diff(readRegistry(t, ctx, db)); d != "" {
		t.Fatalf("replay differs:\n%s", d)
	}
}

// TestRegistrySync: registry_sync records the current aggregate of each id (NULL for a
// missing one) as 'aggregate'/'sync' entries under one new revision; floor_revision lifts
// the counter.
func TestRegistrySync(t *testing.T) {
	t.Parallel()
	s := newSchema(t)
	ctx := testCtx(t, 30*time.Second)
	db := s.Pool
	ln, ch := listen(t, ctx, s.URL)
	mustExec(t, ctx, db, `INSERT INTO extensions (id, type, subject, config) VALUES ('x', 'pre', 'beamline.ext.pre.x.v1', '{"k": "v"}')`)
	mustExec(t, ctx, db, `INSERT INTO extension_versions (id, version, subject, routing_rules) VALUES
		('x', 'v2', 'beamline.ext.pre.x.v2', '{"tenant_id": ["t1"]}'), ('x', 'v1', 'beamline.ext.pre.x.v1', '{}')`)
	mustExec(t, ctx, db, `INSERT INTO extension_instances (extension_id, instance_id, subject, weight, last_health_check)
		VALUES ('x', 'i1', 'beamline.ext.pre.x.v1', 40, now())`)
	for range 3 {
		nextNotification(t, ctx, ln, ch, notifyWithin)
	}
	before := counter(t, ctx, db)
	want := queryString(t, ctx, db, `SELECT jsonb_build_object('x', registry_aggregate('x'), 'gone', registry_aggregate('gone'))::text`)

	mustExec(t, ctx, db, `SELECT registry_sync(ARRAY['x', 'gone', 'x'], 0)`)
	rev := counter(t, ctx, db)
	if rev != before+1 {
		t.Fatalf("registry_sync took revision %d, want %d", rev, before+1)
	}
	if got := nextNotification(t, ctx, ln, ch, notifyWithin); got != rev {
		t.Fatalf("registry_sync notified %d, want %d", got, rev)
	}
	log := changeLog(t, ctx, db, before)
	got := map[string]any{}
	for _, c := range log {
		if c.Revision != rev || c.Entity != "aggregate" || c.Action != "sync" || c.Old != nil || c.EntityKey != nil {
			t.Fatalf("unexpected sync entry %s (old %v)", c, c.Old)
		}
		if c.New == nil {
			got[c.ExtensionID] = nil
		} else {
			got[c.ExtensionID] = c.New
		}
	}
	if len(log) != 2 || !reflect.DeepEqual(got, jsonOf(t, want)) {
		t.Fatalf("sync entries %v\nwant %s", got, want)
	}
	x := got["x"].(map[string]any)
	if len(x["versions"].([]any)) != 2 || len(x["instances"].([]any)) != 1 || x["subject"] != "beamline.ext.pre.x.v1" {
		t.Fatalf("aggregate of x is incomplete: %v", x)
	}
	if n := queryInt(t, ctx, db, `SELECT changes FROM registry_revisions WHERE revision = $1`, rev); n != 2 {
		t.Fatalf("sync revision records %d changes, want 2", n)
	}

	// A floor above the counter: the new revision is floor+1, and later commits follow it.
	mustExec(t, ctx, db, `SELECT registry_sync(ARRAY['x'], 1000)`)
	if got := counter(t, ctx, db); got != 1001 {
		t.Fatalf("registry_sync with floor 1000 took revision %d, want 1001", got)
	}
	if got := nextNotification(t, ctx, ln, ch, notifyWithin); got != 1001 {
		t.Fatalf("notified %d, want 1001", got)
	}
	mustExec(t, ctx, db, `UPDATE extensions SET retry = 3 WHERE id = 'x'`)
	if got := nextNotification(t, ctx, ln, ch, notifyWithin); got != 1002 {
		t.Fatalf("the commit after the floor notified %d, want 1002", got)
	}
	// A floor below the counter changes nothing but takes the next revision.
	mustExec(t, ctx, db, `SELECT registry_sync(ARRAY['x'], 5)`)
	if got := nextNotification(t, ctx, ln, ch, notifyWithin); got != 1003 {
		t.Fatalf("registry_sync with a low floor notified %d, want 1003", got)
	}
	r := newRegistry()
	r.replay(t, changeLog(t, ctx, db, 0))
	if d := r.diff(readRegistry(t, ctx, db)); d != "" {
		t.Fatalf("replay differs:\n%s", d)
	}
	expectNoNotification(t, ctx, ln, strayWithin)
}

// TestReplicaRoleWritesBypassRevisions documents the known hole: with
// session_replication_role = replica (pg_restore, logical replication apply) the triggers do
// not fire, so a write gets no revision and no change-log entry. The periodic reconcile
// finds the drift and repairs it with registry_sync under a new revision.
func TestReplicaRoleWritesBypassRevisions(t *testing.T) {
	t.Parallel()
	s := newSchema(t)
	ctx := testCtx(t, 30*time.Second)
	db := s.Pool
	ln, ch := listen(t, ctx, s.URL)
	mustExec(t, ctx, db, `INSERT INTO extensions (id, type, subject) VALUES ('x', 'pre', 'beamline.ext.pre.x.v1')`)
	if got := nextNotification(t, ctx, ln, ch, notifyWithin); got != 1 {
		t.Fatalf("notified %d, want 1", got)
	}

	replica := connect(t, ctx, s.URL)
	mustExec(t, ctx, replica, `SET session_replication_role = replica`)
	mustExec(t, ctx, replica, `UPDATE extensions SET timeout_ms = 321 WHERE id = 'x'`)
	mustExec(t, ctx, replica, `INSERT INTO extension_instances (extension_id, instance_id, subject) VALUES ('x', 'r1', 'beamline.ext.pre.x.v1')`)
	if got := counter(t, ctx, db); got != 1 {
		t.Fatalf("replica-role writes took a revision: counter %d", got)
	}
	if n := queryInt(t, ctx, db, `SELECT count(*) FROM extension_audit_log`); n != 1 {
		t.Fatalf("replica-role writes were logged: %d audit rows", n)
	}
	replayed := newRegistry()
	replayed.replay(t, changeLog(t, ctx, db, 0))
	if replayed.diff(readRegistry(t, ctx, db)) == "" {
		t.Fatal("the replica-role write is visible in the change log; the documented hole is gone (update this test and the docs)")
	}

	// The reconcile's repair: a sync entry under a new revision.
	mustExec(t, ctx, db, `SELECT registry_sync(ARRAY['x'], 0)`)
	if got := nextNotification(t, ctx, ln, ch, notifyWithin); got != 2 {
		t.Fatalf("the repair notified %d, want 2", got)
	}
	replayed = newRegistry()
	replayed.replay(t, changeLog(t, ctx, db, 0))
	if d := replayed.diff(readRegistry(t, ctx, db)); d != "" {
		t.Fatalf("after registry_sync the replay still differs:\n%s", d)
	}
}

// TestTruncateIsLogged: TRUNCATE has no row events; the registry logs the removed rows as
// deletes in one revision instead of losing them.
func TestTruncateIsLogged(t *testing.T) {
	t.Parallel()
	s := newSchema(t)
	ctx := testCtx(t, 30*time.Second)
	db := s.Pool
	ln, ch := listen(t, ctx, s.URL)
	mustExec(t, ctx, db, `INSERT INTO extensions (id, type, subject) VALUES ('x', 'pre', 'beamline.ext.pre.x.v1'), ('y', 'post', 'beamline.ext.post.y.v1')`)
	mustExec(t, ctx, db, `INSERT INTO extension_versions (id, version, subject) VALUES ('x', 'v1', 'beamline.ext.pre.x.v1')`)
	mustExec(t, ctx, db, `INSERT INTO extension_instances (extension_id, instance_id, subject) VALUES ('y', 'i1', 'beamline.ext.post.y.v1')`)
	mustExec(t, ctx, db, `TRUNCATE extension_instances`)
	mustExec(t, ctx, db, `TRUNCATE extension_instances`) // empty: no change, no revision
	mustExec(t, ctx, db, `TRUNCATE extensions CASCADE`)
	for want := int64(1); want <= 5; want++ {
		if got := nextNotification(t, ctx, ln, ch, notifyWithin); got != want {
			t.Fatalf("notification %d, want %d", got, want)
		}
	}
	expectNoNotification(t, ctx, ln, strayWithin)
	log := changeLog(t, ctx, db, 3)
	if len(log) != 4 || log[0].Revision != 4 || log[0].Entity != "instance" || log[3].Revision != 5 {
		t.Fatalf("truncates logged as %v", log)
	}
	r := newRegistry()
	r.replay(t, changeLog(t, ctx, db, 0))
	if len(r.Extensions)+len(r.Versions)+len(r.Instances) != 0 {
		t.Fatalf("replay after TRUNCATE is not empty: %+v", r)
	}
}

// TestWritesWithAnotherSearchPath: a client that qualifies the table instead of setting
// search_path to the registry schema can still write (the trigger functions pin theirs).
func TestWritesWithAnotherSearchPath(t *testing.T) {
	t.Parallel()
	s := newSchema(t)
	ctx := testCtx(t, 30*time.Second)
	conn := connect(t, ctx, s.PG.URL("postgres", "public"))
	q := pgxIdent(s.Name)
	mustExec(t, ctx, conn, `INSERT INTO `+q+`.extensions (id, type, subject) VALUES ('x', 'pre', 'beamline.ext.pre.x.v1')`)
	mustExec(t, ctx, conn, `INSERT INTO `+q+`.extension_versions (id, version, subject) VALUES ('x', 'v1', 'beamline.ext.pre.x.v1')`)
	mustExec(t, ctx, conn, `INSERT INTO `+q+`.extension_instances (extension_id, instance_id, subject) VALUES ('x', 'i', 'beamline.ext.pre.x.v1')`)
	mustExec(t, ctx, conn, `UPDATE `+q+`.extensions SET timeout_ms = 100, version = 'v2', subject = 'beamline.ext.pre.x.v2'`)
	mustExec(t, ctx, conn, `UPDATE `+q+`.extension_versions SET retry = 2`)
	mustExec(t, ctx, conn, `UPDATE `+q+`.extension_instances SET weight = 5`)
	mustExec(t, ctx, conn, `SELECT `+q+`.registry_sync(ARRAY['x'])`)
	mustExec(t, ctx, conn, `DELETE FROM `+q+`.extensions`)
	if got := counter(t, ctx, s.Pool); got != 8 {
		t.Fatalf("counter %d, want 8", got)
	}
	r := newRegistry()
	r.replay(t, changeLog(t, ctx, s.Pool, 0))
	if d := r.diff(readRegistry(t, ctx, s.Pool)); d != "" {
		t.Fatalf("replay differs:\n%s", d)
	}
}
