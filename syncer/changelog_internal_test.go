package syncer

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/beamline/registry-syncer/test/harness"
)

// TestChangeLogReadUsesTheIndex: the change-log read (once per wake-up of the leader)
// reaches a revision's changes through the audit log's xid index, whatever the size of
// the log; and the syncer's connections do not JIT-compile it. Both were measured: the
// read hashed the whole log (20 ms at 100,000 audit rows, growing) and JIT added 130 ms,
// so a one-row change at 100,000 extensions took ~100 ms to reach a router.
func TestChangeLogReadUsesTheIndex(t *testing.T) {
	t.Parallel()
	schema := harness.PG(t).NewSchema(t)
	ctx := context.Background()
	if _, err := schema.Pool.Exec(ctx, `INSERT INTO extensions (id, type, subject)
		SELECT 'e' || g, 'pre', 'beamline.ext.pre.e' || g || '.v1' FROM generate_series(1, 20000) g`); err != nil {
		t.Fatal(err)
	}
	// A second large transaction after the first: the log holds more than one huge
	// revision, and a page of the first must not walk through the second's rows.
	if _, err := schema.Pool.Exec(ctx, `UPDATE extensions SET retry = 1 - retry`); err != nil {
		t.Fatal(err)
	}
	for range 10 {
		if _, err := schema.Pool.Exec(ctx, `UPDATE extensions SET retry = 1 - retry WHERE id = 'e5'`); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := schema.Pool.Exec(ctx, `ANALYZE extension_audit_log`); err != nil {
		t.Fatal(err)
	}
	var xid string
	var seq int64
	if err := schema.Pool.QueryRow(ctx, `SELECT xid::text, min(seq) FROM extension_audit_log WHERE extension_id = 'e5' GROUP BY xid ORDER BY xid LIMIT 1`).Scan(&xid, &seq); err != nil {
		t.Fatal(err)
	}
	// The batch read, and the read of a huge revision's next page (keyset on seq within
	// its transaction).
	checkPlan(t, ctx, schema.Pool, changeLogSQL, int64(2), int64(8), 500, pageRows(8<<20))
	checkPlan(t, ctx, schema.Pool, changePageSQL, xid, seq-1, pageRows(8<<20))

	s := &Syncer{cfg: Config{DatabaseURL: schema.URL}}
	pool, err := s.Pool()
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	var jit string
	if err := pool.QueryRow(ctx, `SHOW jit`).Scan(&jit); err != nil || strings.TrimSpace(jit) != "off" {
		t.Errorf("the syncer's connections have jit = %q (%v), want off", jit, err)
	}
}

// checkPlan fails unless the plan of sql reaches the audit log only through its xid index.
func checkPlan(t *testing.T, ctx context.Context, pool *pgxpool.Pool, sql string, args ...any) {
	t.Helper()
	var plan []byte
	if err := pool.QueryRow(ctx, `EXPLAIN (FORMAT JSON) `+sql, args...).Scan(&plan); err != nil {
		t.Fatal(err)
	}
	var doc []struct {
		Plan json.RawMessage `json:"Plan"`
	}
	if err := json.Unmarshal(plan, &doc); err != nil || len(doc) == 0 {
		t.Fatalf("plan: %v %s", err, plan)
	}
	audit := 0
	var walk func(raw json.RawMessage)
	walk = func(raw json.RawMessage) {
		var n struct {
			Type     string            `json:"Node Type"`
			Relation string            `json:"Relation Name"`
			Index    string            `json:"Index Name"`
			Plans    []json.RawMessage `json:"Plans"`
		}
		if err := json.Unmarshal(raw, &n); err != nil {
			t.Fatal(err)
		}
		if n.Relation == "extension_audit_log" || strings.HasPrefix(n.Index, "extension_audit_log") {
			audit++
			if n.Type == "Seq Scan" || (n.Index != "" && n.Index != "extension_audit_log_xid_seq_idx") {
				t.Errorf("the change-log read reaches the audit log by %s %s, not its xid index:\n%s", n.Type, n.Index, plan)
			}
		}
		for _, c := range n.Plans {
			walk(c)
		}
	}
	walk(doc[0].Plan)
	if audit == 0 {
		t.Errorf("no read of the audit log in the plan:\n%s", plan)
	}
}
