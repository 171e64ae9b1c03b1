package syncer

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

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
	for range 10 {
		if _, err := schema.Pool.Exec(ctx, `UPDATE extensions SET retry = 1 - retry WHERE id = 'e5'`); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := schema.Pool.Exec(ctx, `ANALYZE extension_audit_log`); err != nil {
		t.Fatal(err)
	}
	var plan []byte
	if err := schema.Pool.QueryRow(ctx, `EXPLAIN (FORMAT JSON) `+changeLogSQL, int64(2), int64(8), 500).Scan(&plan); err != nil {
		t.Fatal(err)
	}
	var doc []struct {
		Plan json.RawMessage `json:"Plan"`
	}
	if err := json.Unmarshal(plan, &doc); err != nil || len(doc) == 0 {
		t.Fatalf("plan: %v %s", err, plan)
	}
	var walk func(raw json.RawMessage)
	walk = func(raw json.RawMessage) {
		var n struct {
			Type     string            `json:"Node Type"`
			Relation string            `json:"Relation Name"`
			Plans    []json.RawMessage `json:"Plans"`
		}
		if err := json.Unmarshal(raw, &n); err != nil {
			t.Fatal(err)
		}
		if n.Relation == "extension_audit_log" && n.Type == "Seq Scan" {
			t.Errorf("the change-log read scans the whole audit log:\n%s", plan)
		}
		for _, c := range n.Plans {
			walk(c)
		}
	}
	walk(doc[0].Plan)

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
