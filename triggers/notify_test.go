package triggers_test

import (
	"strings"
	"testing"
	"time"
)

const (
	notifyWithin = 10 * time.Second       // a notification that must arrive
	strayWithin  = 200 * time.Millisecond // looking for one that must not
)

// TestNotifications: exactly one notification per committed registry transaction, carrying
// its revision, in order; none for transactions that roll back or change nothing.
func TestNotifications(t *testing.T) {
	t.Parallel()
	s := newSchema(t)
	ctx := testCtx(t, 60*time.Second)
	ln, ch := listen(t, ctx, s.URL)
	if !strings.HasPrefix(ch, s.Name+".") {
		t.Fatalf("channel %q does not name schema %s", ch, s.Name)
	}
	db := s.Pool

	// Commits: one notification each, payload = revision.
	mustExec(t, ctx, db, `INSERT INTO extensions (id, type, subject) VALUES ('a', 'pre', 'beamline.ext.pre.a.v1')`)
	if rev := nextNotification(t, ctx, ln, ch, notifyWithin); rev != 1 {
		t.Fatalf("first commit notified revision %d, want 1", rev)
	}
	mustExec(t, ctx, db, `INSERT INTO extension_instances (extension_id, instance_id, subject) VALUES ('a', 'i1', 'beamline.ext.pre.a.v1')`)
	if rev := nextNotification(t, ctx, ln, ch, notifyWithin); rev != 2 {
		t.Fatalf("second commit notified revision %d, want 2", rev)
	}

	// Things that must not notify, followed by a sentinel commit: notifications arrive in
	// commit order, so if the next one is the sentinel's, none of these notified.
	tx, err := db.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	mustExec(t, ctx, tx, `INSERT INTO extensions (id, type, subject) VALUES ('rolled_back', 'post', 'beamline.ext.post.rb.v1')`)
	mustExec(t, ctx, tx, `UPDATE extensions SET timeout_ms = 100 WHERE id = 'a'`)
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if tag := mustExec(t, ctx, db, `UPDATE extensions SET timeout_ms = timeout_ms, subject = subject, config = '{}' WHERE id = 'a'`); tag.RowsAffected() != 1 {
		t.Fatalf("no-op update touched %d rows", tag.RowsAffected())
	}
	mustExec(t, ctx, db, `UPDATE extension_instances SET last_health_check = now() WHERE extension_id = 'a'`)
	mustExec(t, ctx, db, `UPDATE extension_instances SET last_health_check = now() + interval '1 s' WHERE extension_id = 'a'`)
	mustExec(t, ctx, db, `UPDATE extensions SET enabled = true WHERE id = 'a'`) // already enabled
	mustExec(t, ctx, db, `DELETE FROM extensions WHERE id = 'missing'`)
	mustExec(t, ctx, db, `UPDATE extension_versions SET retry = 1 WHERE id = 'missing'`)
	mustExec(t, ctx, db, `INSERT INTO extension_health (extension_id, success_count) VALUES ('a', 5)`)
	mustExec(t, ctx, db, `UPDATE extension_health SET success_count = success_count + 1, circuit_breaker_state = 'open'`)
	if got := counter(t, ctx, db); got != 2 {
		t.Fatalf("counter %d after transactions that changed nothing, want 2", got)
	}

	mustExec(t, ctx, db, `UPDATE extensions SET timeout_ms = 150 WHERE id = 'a'`) // sentinel
	if rev := nextNotification(t, ctx, ln, ch, notifyWithin); rev != 3 {
		t.Fatalf("after rollback and no-op updates the next notification is %d, want the sentinel's 3", rev)
	}

	// A multi-table, multi-row transaction: one revision, one notification.
	tx, err = db.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	mustExec(t, ctx, tx, `INSERT INTO extensions (id, type, subject) VALUES
		('b', 'validator', 'beamline.ext.validate.b.v1'), ('c', 'provider', 'beamline.provider.c.v1')`)
	mustExec(t, ctx, tx, `INSERT INTO extension_versions (id, version, subject, routing_rules) VALUES
		('b', 'v1', 'beamline.ext.validate.b.v1', '{}'), ('b', 'v2', 'beamline.ext.validate.b.v2', '{"tenant_id": ["t1"]}')`)
	mustExec(t, ctx, tx, `INSERT INTO extension_instances (extension_id, instance_id, subject, weight) VALUES
		('c', 'i1', 'beamline.provider.c.v1', 30), ('c', 'i2', 'beamline.provider.c.v1', 70)`)
	mustExec(t, ctx, tx, `UPDATE extensions SET enabled = false WHERE id = 'a'`)
	mustExec(t, ctx, tx, `UPDATE extension_instances SET health_status = 'healthy' WHERE extension_id = 'a'`)
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if rev := nextNotification(t, ctx, ln, ch, notifyWithin); rev != 4 {
		t.Fatalf("multi-table transaction notified %d, want 4", rev)
	}
	if n := queryInt(t, ctx, db, `SELECT changes FROM registry_revisions WHERE revision = 4`); n != 8 {
		t.Fatalf("revision 4 records %d changes, want 8", n)
	}
	if n := queryInt(t, ctx, db, `SELECT count(DISTINCT revision) FROM registry_change_log WHERE extension_id IN ('b', 'c')`); n != 1 {
		t.Fatalf("the multi-table transaction is spread over %d revisions", n)
	}

	// A second schema in the same database: its own channel, not heard here.
	other := newSchema(t)
	otherLn, otherCh := listen(t, ctx, other.URL)
	if otherCh == ch {
		t.Fatalf("two schemas share channel %q", ch)
	}
	mustExec(t, ctx, other.Pool, `INSERT INTO extensions (id, type, subject) VALUES ('a', 'pre', 'beamline.ext.pre.a.v1')`)
	if rev := nextNotification(t, ctx, otherLn, otherCh, notifyWithin); rev != 1 {
		t.Fatalf("other schema notified %d, want its own revision 1", rev)
	}
	mustExec(t, ctx, db, `DELETE FROM extensions WHERE id = 'b'`) // sentinel
	if rev := nextNotification(t, ctx, ln, ch, notifyWithin); rev != 5 {
		t.Fatalf("next notification %d, want the sentinel's 5 (the other schema's commit must not be heard)", rev)
	}
	expectNoNotification(t, ctx, ln, strayWithin)
	expectNoNotification(t, ctx, otherLn, strayWithin)
}

// TestNotificationAfterRollbackReusesRevision: a transaction that took a revision at
// COMMIT and then failed (a deferred constraint checked after the registry trigger) rolls
// the counter back: the next commit gets the same number, with no gap and no
// notification for the failed one.
func TestNotificationAfterRollbackReusesRevision(t *testing.T) {
	t.Parallel()
	s := newSchema(t)
	ctx := testCtx(t, 30*time.Second)
	ln, ch := listen(t, ctx, s.URL)
	db := s.Pool
	// A deferred check that fails at COMMIT after registry_commit has taken a revision:
	// deferred triggers on the same row event fire in name order, and "zz" sorts after
	// "registry_commit".
	mustExec(t, ctx, db, `CREATE FUNCTION fail_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			IF NOT EXISTS (SELECT 1 FROM registry_revisions WHERE xid = NEW.xid) THEN
				RAISE EXCEPTION 'registry_commit did not run first';
			END IF;
			IF EXISTS (SELECT 1 FROM extension_audit_log WHERE xid = NEW.xid AND extension_id LIKE 'fail%') THEN
				RAISE EXCEPTION 'deferred check failed after the revision was taken' USING ERRCODE = 'check_violation';
			END IF;
			RETURN NULL;
		END $$`)
	mustExec(t, ctx, db, `CREATE CONSTRAINT TRIGGER zz_fail_at_commit AFTER INSERT ON registry_pending
		DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION fail_at_commit()`)

	_, err := db.Exec(ctx, `INSERT INTO extensions (id, type, subject) VALUES ('fail1', 'pre', 'beamline.ext.pre.f.v1')`)
	if pe := pgError(t, err); !strings.Contains(pe.Message, "after the revision was taken") {
		t.Fatalf("want the deferred failure after the revision was taken, got %v", err)
	}
	if got := counter(t, ctx, db); got != 0 {
		t.Fatalf("counter %d after the failed commit, want 0", got)
	}
	mustExec(t, ctx, db, `INSERT INTO extensions (id, type, subject) VALUES ('ok', 'pre', 'beamline.ext.pre.ok.v1')`)
	if rev := nextNotification(t, ctx, ln, ch, notifyWithin); rev != 1 {
		t.Fatalf("first notification %d, want 1 (the failed commit's number is reused)", rev)
	}
	expectNoNotification(t, ctx, ln, strayWithin)
	log := changeLog(t, ctx, db, 0)
	if len(log) != 1 || log[0].ExtensionID != "ok" || log[0].Revision != 1 {
		t.Fatalf("change log %v, want only ok at revision 1", log)
	}
}
