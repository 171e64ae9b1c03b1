package changelog_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/beamline/registry-syncer/cache"
	"github.com/beamline/registry-syncer/changelog"
	"github.com/beamline/registry-syncer/test/harness"
)

// commit runs stmts in one transaction as author and returns the revision it committed.
func commit(t *testing.T, pool *pgxpool.Pool, author string, stmts ...string) int64 {
	t.Helper()
	ctx := context.Background()
	var xid string
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT set_config('registry.changed_by', $1, true)`, author); err != nil {
			return err
		}
		for _, s := range stmts {
			if _, err := tx.Exec(ctx, s); err != nil {
				return fmt.Errorf("%s: %w", s, err)
			}
		}
		return tx.QueryRow(ctx, `SELECT pg_current_xact_id()::text`).Scan(&xid)
	})
	if err != nil {
		t.Fatal(err)
	}
	var rev int64
	if err := pool.QueryRow(ctx, `SELECT revision FROM registry_revisions WHERE xid = $1::xid8`, xid).Scan(&rev); err != nil {
		t.Fatal(err)
	}
	return rev
}

func encode(t *testing.T, e *cache.Extension) string {
	t.Helper()
	if e == nil {
		return "null"
	}
	data, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// TestAggregateAtReplaysTheTables: at every revision of a history that touches every kind
// of row, the aggregate replayed from the change log equals what the tables held then.
func TestAggregateAtReplaysTheTables(t *testing.T) {
	t.Parallel()
	s := harness.PG(t).NewSchema(t)
	ctx := context.Background()
	steps := [][]string{
		{`INSERT INTO extensions (id, type, subject, timeout_ms, config) VALUES ('a', 'pre', 'beamline.ext.pre.a.v1', 100, '{"k": 1}')`},
		{`INSERT INTO extension_versions (id, version, subject, routing_rules) VALUES ('a', 'v2', 'beamline.ext.pre.a.v2', '{"tenant_id": ["t1"]}')`,
			`INSERT INTO extension_instances (extension_id, instance_id, subject, weight) VALUES ('a', 'i1', 'beamline.ext.pre.a.v1', 30), ('a', 'i2', 'beamline.ext.pre.a.v1', 70)`},
		{`UPDATE extensions SET timeout_ms = 200, enabled = false WHERE id = 'a'`},
		{`DELETE FROM extension_instances WHERE instance_id = 'i1'`, `UPDATE extension_versions SET routing_rules = '{}' WHERE version = 'v2'`},
		{`DELETE FROM extensions WHERE id = 'a'`},
		{`INSERT INTO extensions (id, type, subject) VALUES ('a', 'post', 'beamline.ext.post.a.v1')`},
	}
	want := map[int64]string{}
	var revs []int64
	for _, st := range steps {
		rev := commit(t, s.Pool, "alice", st...)
		cur, err := changelog.Current(ctx, s.Pool, "a")
		if err != nil {
			t.Fatal(err)
		}
		want[rev] = encode(t, cur)
		revs = append(revs, rev)
	}
	for _, rev := range revs {
		got, err := changelog.AggregateAt(ctx, s.Pool, "a", rev)
		if err != nil {
			t.Fatal(err)
		}
		if g := encode(t, got); g != want[rev] {
			t.Errorf("revision %d: replayed\n%s\nthe tables held\n%s", rev, g, want[rev])
		}
	}
	if got, _ := changelog.AggregateAt(ctx, s.Pool, "a", 0); got != nil {
		t.Errorf("revision 0: %s", encode(t, got))
	}

	hist, err := changelog.History(ctx, s.Pool, changelog.HistoryFilter{ID: "a"})
	if err != nil {
		t.Fatal(err)
	}
	if len(hist) == 0 || hist[0].Revision != revs[0] || hist[0].ChangedBy != "alice" || hist[0].Action != "create" {
		t.Fatalf("history %+v", hist)
	}
	found := false
	for _, e := range hist {
		if e.Revision == revs[2] && e.Entity == "extension" {
			found = strings.Join(e.Fields, ",") == "enabled,timeout_ms"
		}
	}
	if !found {
		t.Errorf("the update of revision %d does not list enabled,timeout_ms: %+v", revs[2], hist)
	}
	if last, err := changelog.History(ctx, s.Pool, changelog.HistoryFilter{Limit: 1}); err != nil || len(last) != 1 || last[0].Revision != revs[len(revs)-1] {
		t.Errorf("newest entry: %+v %v", last, err)
	}
	if future, err := changelog.History(ctx, s.Pool, changelog.HistoryFilter{Since: time.Now().Add(time.Hour)}); err != nil || len(future) != 0 {
		t.Errorf("since the future: %+v %v", future, err)
	}

	diff, err := changelog.Diff(ctx, s.Pool, revs[1], revs[3])
	if err != nil {
		t.Fatal(err)
	}
	if len(diff) != 1 || diff[0].ID != "a" {
		t.Fatalf("diff %+v", diff)
	}
	joined := strings.Join(diff[0].Lines, "\n")
	for _, w := range []string{"timeout_ms: 100 -> 200", "enabled: true -> false", "instance i1 removed", "versions[v2]"} {
		if !strings.Contains(joined, w) {
			t.Errorf("diff lacks %q:\n%s", w, joined)
		}
	}
}

// TestRestoreRollsBack: restoring an older aggregate writes it as a new, audited revision
// whose content equals the one at the old revision; restoring what is there changes nothing.
func TestRestoreRollsBack(t *testing.T) {
	t.Parallel()
	s := harness.PG(t).NewSchema(t)
	ctx := context.Background()
	good := commit(t, s.Pool, "alice",
		`INSERT INTO extensions (id, type, subject, timeout_ms) VALUES ('a', 'pre', 'beamline.ext.pre.a.v1', 100)`,
		`INSERT INTO extension_versions (id, version, subject, routing_rules) VALUES ('a', 'v2', 'beamline.ext.pre.a.v2', '{"tenant_id": "t1"}')`,
		`INSERT INTO extension_instances (extension_id, instance_id, subject) VALUES ('a', 'i1', 'beamline.ext.pre.a.v1')`)
	commit(t, s.Pool, "bob", `UPDATE extensions SET timeout_ms = 4000 WHERE id = 'a'`,
		`DELETE FROM extension_versions WHERE id = 'a'`,
		`INSERT INTO extension_instances (extension_id, instance_id, subject) VALUES ('a', 'i2', 'beamline.ext.pre.a.v1')`)
	target, err := changelog.AggregateAt(ctx, s.Pool, "a", good)
	if err != nil {
		t.Fatal(err)
	}
	restore := func() int64 {
		var rev int64
		err := pgx.BeginFunc(ctx, s.Pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `SELECT set_config('registry.changed_by', 'carol (rollback)', true)`); err != nil {
				return err
			}
			return changelog.Restore(ctx, tx, "a", target)
		})
		if err != nil {
			t.Fatal(err)
		}
		rev, err = changelog.Counter(ctx, s.Pool)
		if err != nil {
			t.Fatal(err)
		}
		return rev
	}
	rolled := restore()
	cur, err := changelog.Current(ctx, s.Pool, "a")
	if err != nil {
		t.Fatal(err)
	}
	if encode(t, cur) != encode(t, target) {
		t.Fatalf("after the rollback:\n%s\nwant\n%s", encode(t, cur), encode(t, target))
	}
	hist, err := changelog.History(ctx, s.Pool, changelog.HistoryFilter{ID: "a", Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	audited := false
	for _, e := range hist {
		if e.Revision == rolled && e.ChangedBy == "carol (rollback)" {
			audited = true
		}
	}
	if !audited {
		t.Errorf("no change-log entry by the rollback's author at revision %d: %+v", rolled, hist)
	}
	if again := restore(); again != rolled {
		t.Errorf("restoring the same content again made revision %d (want none after %d)", again, rolled)
	}
}
