package syncer_test

import (
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/beamline/registry-syncer/cache"
)

// changeList renders a delta's changes as "op kind id[/key]" for comparisons.
func changeList(chs []cache.Change) []string {
	out := make([]string, 0, len(chs))
	for _, c := range chs {
		s := c.Op + " " + c.Kind + " " + c.ID
		if c.Key != "" {
			s += "/" + c.Key
		}
		out = append(out, s)
	}
	return out
}

// field reads one top-level field of a change's value.
func field(t *testing.T, c cache.Change, name string) any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(c.Value, &m); err != nil {
		t.Fatalf("value of %s %s %s: %v", c.Op, c.Kind, c.ID, err)
	}
	return m[name]
}

// TestPublishesEveryKindOfChange commits one transaction per kind of change (and one that
// changes nothing) and checks that each revision is published as exactly one delta, in
// order, with the changes of its transaction: op, kind, id and key, and the values.
func TestPublishesEveryKindOfChange(t *testing.T) {
	t.Parallel()
	b := setup(t)
	live := b.recordLive(t)
	r := b.start(t, nil)
	b.waitConverged(t, 10*time.Second)

	type step struct {
		stmts   []string
		changes []string // in order; nil: no revision expected
		sorted  bool     // compare ignoring order (cascades)
		check   func(t *testing.T, chs []cache.Change)
	}
	steps := []step{
		{stmts: []string{`INSERT INTO extensions (id, type, subject, timeout_ms) VALUES ('a', 'pre', 'beamline.ext.pre.a.v1', 100)`},
			changes: []string{"put extension a"},
			check: func(t *testing.T, chs []cache.Change) {
				if field(t, chs[0], "timeout_ms") != 100.0 || field(t, chs[0], "type") != "pre" || field(t, chs[0], "subject") != "beamline.ext.pre.a.v1" {
					t.Errorf("insert: value %s", chs[0].Value)
				}
				if field(t, chs[0], "created_at") != nil || field(t, chs[0], "versions") != nil {
					t.Errorf("insert: value carries non-snapshot fields: %s", chs[0].Value)
				}
			}},
		{stmts: []string{`UPDATE extensions SET timeout_ms = 200 WHERE id = 'a'`}, changes: []string{"put extension a"},
			check: func(t *testing.T, chs []cache.Change) {
				if field(t, chs[0], "timeout_ms") != 200.0 {
					t.Errorf("update: value %s", chs[0].Value)
				}
			}},
		{stmts: []string{`UPDATE extensions SET enabled = false WHERE id = 'a'`}, changes: []string{"put extension a"},
			check: func(t *testing.T, chs []cache.Change) {
				if field(t, chs[0], "enabled") != false {
					t.Errorf("disable: value %s", chs[0].Value)
				}
			}},
		{stmts: []string{`UPDATE extensions SET enabled = true WHERE id = 'a'`}, changes: []string{"put extension a"},
			check: func(t *testing.T, chs []cache.Change) {
				if field(t, chs[0], "enabled") != true {
					t.Errorf("enable: value %s", chs[0].Value)
				}
			}},
		// One transaction over three tables: one revision, applied all at once.
		{stmts: []string{`INSERT INTO extensions (id, type, subject) VALUES ('b', 'post', 'beamline.ext.post.b.v1'), ('c', 'provider', 'beamline.provider.c.v1')`,
			`INSERT INTO extension_instances (extension_id, instance_id, subject, weight, health_status) VALUES ('b', 'i1', 'beamline.ext.post.b.v1.i1', 30, 'healthy')`,
			`INSERT INTO extension_versions (id, version, subject, routing_rules) VALUES ('b', 'v2', 'beamline.ext.post.b.v2', '{"tenant_id": ["t1", "t2"]}')`},
			changes: []string{"put extension b", "put extension c", "put instance b/i1", "put version b/v2"},
			check: func(t *testing.T, chs []cache.Change) {
				if field(t, chs[2], "weight") != 30.0 || field(t, chs[2], "health_status") != "healthy" {
					t.Errorf("instance: value %s", chs[2].Value)
				}
				rr, _ := json.Marshal(field(t, chs[3], "routing_rules"))
				if string(rr) != `{"tenant_id":["t1","t2"]}` {
					t.Errorf("version: routing_rules %s", rr)
				}
			}},
		{stmts: []string{`UPDATE extension_instances SET weight = 70, health_status = 'degraded'`}, changes: []string{"put instance b/i1"},
			check: func(t *testing.T, chs []cache.Change) {
				if field(t, chs[0], "weight") != 70.0 || field(t, chs[0], "health_status") != "degraded" {
					t.Errorf("instance update: value %s", chs[0].Value)
				}
			}},
		// A health probe that only moves last_health_check is not a registry change.
		{stmts: []string{`UPDATE extension_instances SET last_health_check = now()`}},
		// An update that changes nothing makes no revision.
		{stmts: []string{`UPDATE extensions SET timeout_ms = timeout_ms WHERE id = 'b'`}},
		{stmts: []string{`UPDATE extension_versions SET routing_rules = '{"environment": "prod"}', enabled = false WHERE id = 'b'`},
			changes: []string{"put version b/v2"},
			check: func(t *testing.T, chs []cache.Change) {
				if field(t, chs[0], "enabled") != false {
					t.Errorf("version update: value %s", chs[0].Value)
				}
			}},
		{stmts: []string{`DELETE FROM extension_versions WHERE id = 'b' AND version = 'v2'`}, changes: []string{"delete version b/v2"}},
		{stmts: []string{`DELETE FROM extension_instances WHERE extension_id = 'b'`}, changes: []string{"delete instance b/i1"}},
		{stmts: []string{`DELETE FROM extensions WHERE id = 'c'`}, changes: []string{"delete extension c"}},
		// Changing an extension's version keeps the previous definition as a version row.
		{stmts: []string{`UPDATE extensions SET version = 'v2', subject = 'beamline.ext.pre.a.v2' WHERE id = 'a'`},
			changes: []string{"put extension a", "put version a/v1"},
			check: func(t *testing.T, chs []cache.Change) {
				if field(t, chs[0], "version") != "v2" || field(t, chs[1], "subject") != "beamline.ext.pre.a.v1" {
					t.Errorf("version change: values %s, %s", chs[0].Value, chs[1].Value)
				}
			}},
		// Deleting an extension cascades to its versions and instances, in the same revision.
		{stmts: []string{`INSERT INTO extension_instances (extension_id, instance_id, subject) VALUES ('a', 'x', 'beamline.ext.pre.a.v2.x')`},
			changes: []string{"put instance a/x"}},
		{stmts: []string{`DELETE FROM extensions WHERE id = 'a'`},
			changes: []string{"delete extension a", "delete instance a/x", "delete version a/v1"}, sorted: true},
		// TRUNCATE logs every removed row.
		{stmts: []string{`INSERT INTO extensions (id, type, subject) VALUES ('d', 'validator', 'beamline.ext.validate.d.v1')`},
			changes: []string{"put extension d"}},
		{stmts: []string{`TRUNCATE extensions CASCADE`},
			changes: []string{"delete extension b", "delete extension d"}, sorted: true},
	}
	revs := make([]int64, len(steps))
	for i, st := range steps {
		revs[i] = b.exec(t, st.stmts...)
		if (revs[i] == 0) != (st.changes == nil) {
			t.Fatalf("step %d (%s): revision %d, want a revision: %v", i, st.stmts[0], revs[i], st.changes != nil)
		}
	}
	got := b.waitConverged(t, 10*time.Second)
	deltas := b.checkExactlyOnce(t, 1, got.Revision(), 0)
	b.replayAll(t, deltas, got.Revision())
	for i, st := range steps {
		if st.changes == nil {
			continue
		}
		d := deltas[revs[i]]
		have := changeList(d.Changes)
		want := slices.Clone(st.changes)
		if st.sorted {
			slices.Sort(have)
			slices.Sort(want)
		}
		if !slices.Equal(have, want) {
			t.Errorf("step %d (%s), revision %d: changes %v, want %v", i, st.stmts[0], revs[i], have, want)
			continue
		}
		if d.Source != "database" || d.CommittedAt.IsZero() || d.Resync {
			t.Errorf("revision %d: source %q committed_at %v resync %v", revs[i], d.Source, d.CommittedAt, d.Resync)
		}
		if st.check != nil {
			st.check(t, d.Changes)
		}
	}
	// The live feed announced every revision once, in order.
	waitFor(t, 5*time.Second, "every revision announced", func() (bool, error) {
		_, ok := live.arrived(got.Revision())
		return ok, nil
	})
	live.checkOrder(t, true)
	for rev := int64(1); rev <= got.Revision(); rev++ {
		if _, ok := live.arrived(rev); !ok {
			t.Errorf("revision %d never announced on the live subject", rev)
		}
	}
	if got.Len() != 0 {
		t.Errorf("after TRUNCATE: %d extensions published", got.Len())
	}
	t.Logf("revisions %v published as one delta each, in order", revs)
	r.stop(t)
}
