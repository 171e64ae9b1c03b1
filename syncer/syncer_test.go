package syncer_test

import (
	"testing"
	"time"
)

func TestPublishesEveryKindOfChange(t *testing.T) {
	t.Parallel()
	b := setup(t)
	r := b.start(t, nil)
	b.waitConverged(t, 10*time.Second)

	revs := []int64{
		b.exec(t, `INSERT INTO extensions (id, type, subject, timeout_ms) VALUES ('a', 'pre', 'beamline.ext.pre.a.v1', 100)`),
		b.exec(t, `UPDATE extensions SET timeout_ms = 200 WHERE id = 'a'`),
		b.exec(t, `UPDATE extensions SET enabled = false WHERE id = 'a'`),
		b.exec(t, `UPDATE extensions SET enabled = true WHERE id = 'a'`),
		b.exec(t, `INSERT INTO extensions (id, type, subject) VALUES ('b', 'post', 'beamline.ext.post.b.v1'), ('c', 'provider', 'beamline.provider.c.v1')`,
			`INSERT INTO extension_instances (extension_id, instance_id, subject, weight, health_status) VALUES ('b', 'i1', 'beamline.ext.post.b.v1.i1', 30, 'healthy')`,
			`INSERT INTO extension_versions (id, version, subject, routing_rules) VALUES ('b', 'v2', 'beamline.ext.post.b.v2', '{"tenant_id": ["t1", "t2"]}')`),
		b.exec(t, `UPDATE extension_instances SET weight = 70, health_status = 'degraded'`),
		b.exec(t, `DELETE FROM extensions WHERE id = 'c'`),
	}
	for i, rev := range revs {
		if rev == 0 {
			t.Fatalf("statement %d made no revision", i)
		}
	}
	got := b.waitConverged(t, 10*time.Second)
	deltas := b.storedDeltas(t, got.Revision())
	for _, rev := range revs {
		d, ok := deltas[rev]
		if !ok {
			t.Fatalf("revision %d: no delta stored", rev)
		}
		if d.PrevRevision != rev-1 {
			t.Errorf("revision %d: prev %d", rev, d.PrevRevision)
		}
	}
	if n := len(deltas[revs[4]].Changes); n != 4 {
		t.Errorf("multi-table revision %d: %d changes, want 4", revs[4], n)
	}
	r.stop(t)
}
