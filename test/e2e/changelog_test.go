package e2e

import (
	"strings"
	"testing"
	"time"
)

// TestHistoryDiffRollback: the operator's view of the past through the real binary —
// history names who changed what under which revision, diff shows the content difference
// between two revisions, rollback --dry-run changes nothing, rollback restores an
// extension as it was, as a new audited revision that every router applies.
func TestHistoryDiffRollback(t *testing.T) {
	t.Parallel()
	b := setup(t, "e2e.history")
	b.seedDefaults(t)
	s := b.startSyncer(t)
	s.waitReady(t, 30*time.Second)
	f := b.startFleet(t, 2, false)
	good, _ := b.commit(t, `SET LOCAL registry.changed_by = 'alice'`,
		`INSERT INTO extension_versions (id, version, subject, routing_rules) VALUES ('normalize_text', 'v2', 'beamline.ext.pre.normalize_text.v2', '{"tenant_id": ["t1"]}')`)
	bad, at := b.commit(t, `SET LOCAL registry.changed_by = 'bob'`,
		`UPDATE extensions SET timeout_ms = 4000 WHERE id = 'normalize_text'`,
		`DELETE FROM extension_versions WHERE id = 'normalize_text'`)
	f.converge(t, b.db(t), at, convergeWithin)
	vars := b.vars()

	res := runCLI(t, vars, "history", "normalize_text")
	if res.code != 0 || !strings.Contains(res.stdout, "bob") || !strings.Contains(res.stdout, "update extension (timeout_ms)") ||
		!strings.Contains(res.stdout, "delete version v2") || !strings.Contains(res.stdout, itoa(bad)) {
		t.Errorf("history: exit %d\n%s%s", res.code, res.stdout, res.stderr)
	}
	res = runCLI(t, vars, "diff", itoa(good), itoa(bad))
	if res.code != 0 || !strings.Contains(res.stdout, "timeout_ms: 100 -> 4000") || !strings.Contains(res.stdout, "version v2 removed") {
		t.Errorf("diff: exit %d\n%s%s", res.code, res.stdout, res.stderr)
	}
	if res := runCLI(t, vars, "diff", "1", "99999"); res.code != 1 || !strings.Contains(res.stderr, "no such revision") {
		t.Errorf("diff to a future revision: exit %d %s", res.code, res.stderr)
	}

	res = runCLI(t, vars, "rollback", "normalize_text", "--to-revision", itoa(good), "--dry-run")
	if res.code != 0 || !strings.Contains(res.stdout, "would change") || !strings.Contains(res.stdout, "version v2 added") {
		t.Errorf("rollback --dry-run: exit %d\n%s%s", res.code, res.stdout, res.stderr)
	}
	if after := b.db(t); after.Revision() != bad {
		t.Fatalf("--dry-run wrote revision %d", after.Revision())
	}
	res = runCLI(t, vars, "rollback", "normalize_text", "--to-revision", itoa(good), "--by", "carol")
	if res.code != 0 || !strings.Contains(res.stdout, "committed as revision") {
		t.Fatalf("rollback: exit %d\n%s%s", res.code, res.stdout, res.stderr)
	}
	want := b.db(t)
	f.converge(t, want, time.Now(), convergeWithin)
	e, ok := want.Get("normalize_text")
	if !ok || e.TimeoutMS != 100 || len(e.Versions) != 1 {
		t.Errorf("after the rollback: %+v", e)
	}
	res = runCLI(t, vars, "history", "normalize_text", "--limit", "3")
	if res.code != 0 || !strings.Contains(res.stdout, "carol") {
		t.Errorf("history after the rollback: exit %d\n%s", res.code, res.stdout)
	}
	res = runCLI(t, vars, "rollback", "normalize_text", "--to-revision", itoa(good))
	if res.code != 0 || !strings.Contains(res.stdout, "nothing to do") {
		t.Errorf("second rollback: exit %d\n%s", res.code, res.stdout)
	}
}
