package main

import (
	"context"
	"encoding/json"
	"os/user"
	"strings"
	"testing"

	"github.com/beamline/registry-syncer/test/harness"
)

// extSetup is a migrated schema and the environment that points the CLI at it.
func extSetup(t *testing.T) (*harness.Schema, envMap) {
	t.Helper()
	s := harness.PG(t).NewSchema(t)
	return s, envMap{"EXTENSION_REGISTRY_DATABASE_URL": s.URL}
}

func revisionCount(t *testing.T, s *harness.Schema) int64 {
	t.Helper()
	var n int64
	if err := s.Pool.QueryRow(context.Background(), `SELECT coalesce(max(revision), 0) FROM registry_revisions`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func lastAuthor(t *testing.T, s *harness.Schema, id string) string {
	t.Helper()
	var by string
	if err := s.Pool.QueryRow(context.Background(),
		`SELECT changed_by FROM extension_audit_log WHERE extension_id = $1 ORDER BY seq DESC LIMIT 1`, id).Scan(&by); err != nil {
		t.Fatal(err)
	}
	return by
}

func routingRules(t *testing.T, s *harness.Schema, id, version string) map[string]any {
	t.Helper()
	var raw []byte
	if err := s.Pool.QueryRow(context.Background(),
		`SELECT routing_rules FROM extension_versions WHERE id = $1 AND version = $2`, id, version).Scan(&raw); err != nil {
		t.Fatalf("version %s/%s: %v", id, version, err)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func mustCLI(t *testing.T, env envMap, args ...string) string {
	t.Helper()
	r := runCLI(t, context.Background(), env, args...)
	if r.code != exitOK {
		t.Fatalf("syncer %s: exit %d: %s", strings.Join(args, " "), r.code, r.stderr)
	}
	return r.stdout
}

func wantIn(t *testing.T, out string, subs ...string) {
	t.Helper()
	for _, s := range subs {
		if !strings.Contains(out, s) {
			t.Errorf("output lacks %q:\n%s", s, out)
		}
	}
}

func TestExtRolloutSteps(t *testing.T) {
	t.Parallel()
	s, env := extSetup(t)

	out := mustCLI(t, env, "ext", "create", "canary", "--type", "pre", "--subject", "beamline.ext.pre.canary.v1",
		"--timeout-ms", "100", "--disabled", "--by", "alice")
	wantIn(t, out, "created (pre, beamline.ext.pre.canary.v1)", "off for everyone", "committed as revision")
	if by := lastAuthor(t, s, "canary"); by != "alice" {
		t.Errorf("changed_by %q, want alice", by)
	}

	// A dry run prints the difference and writes nothing.
	before := revisionCount(t, s)
	out = mustCLI(t, env, "ext", "rollout", "canary", "--tenant", "staging", "--dry-run")
	wantIn(t, out, "would change (dry run, nothing written)", "version v1 added", "off except its rollout: v1: tenant_id in [staging]")
	if got := revisionCount(t, s); got != before {
		t.Fatalf("a dry run committed revision %d", got)
	}

	// Each step is one transaction, one revision, by the OS user without --by.
	mustCLI(t, env, "ext", "rollout", "canary", "--tenant", "staging")
	if got := revisionCount(t, s); got != before+1 {
		t.Errorf("rollout: revision %d, want %d", got, before+1)
	}
	if u, err := user.Current(); err == nil {
		if by := lastAuthor(t, s, "canary"); by != u.Username {
			t.Errorf("changed_by %q, want the OS user %q", by, u.Username)
		}
	}
	mustCLI(t, env, "ext", "rollout", "canary", "--tenant", "staging,t1,t2", "--by", "bob")
	out = mustCLI(t, env, "ext", "rollout", "canary", "--percent", "25", "--key", "tenant_id", "--by", "bob")
	wantIn(t, out, `"$percent":"25"`, "tenant_id in [staging, t1, t2], or 25% of tenant_id")
	rr := routingRules(t, s, "canary", "v1")
	if rr["$percent"] != "25" || rr["$percent_key"] != "tenant_id" || len(rr["tenant_id"].([]any)) != 3 {
		t.Errorf("routing_rules %v", rr)
	}
	// Raising the percentage keeps the key.
	mustCLI(t, env, "ext", "rollout", "canary", "--percent", "50")
	if rr := routingRules(t, s, "canary", "v1"); rr["$percent"] != "50" || rr["$percent_key"] != "tenant_id" {
		t.Errorf("after --percent 50: %v", rr)
	}

	// Bad input: refused before anything is sent, naming the thing and the reason.
	before = revisionCount(t, s)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"ext", "rollout", "canary", "--percent", "101"}, `--percent 101: $percent must be a decimal string from "0" to "100"`},
		{[]string{"ext", "rollout", "nope", "--tenant", "t1"}, "no such extension"},
		{[]string{"ext", "set", "canary", "timeout_ms=9000"}, "timeout_ms must be between 10 and 5000 (got 9000)"},
		{[]string{"ext", "set", "canary", "subject=beamline.ext.pre.canary"}, `subject must end with ".v<digits>"`},
		{[]string{"ext", "create", "canary", "--type", "pre", "--subject", "beamline.ext.pre.canary.v1"}, "already exists"},
		{[]string{"ext", "version", "rm", "canary", "v9"}, `version "v9": no such version (has v1)`},
		{[]string{"ext", "rollout", "canary", "--match", "$x=1"}, "reserved"},
		{[]string{"ext", "instance", "add", "canary", "i1", "--subject", "beamline.ext.pre.canary.v1.i1", "--weight", "300"}, "weight must be between 0 and 100 (got 300)"},
	} {
		r := runCLI(t, context.Background(), env, tc.args...)
		if r.code != exitError || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("syncer %s: exit %d, stderr %q; want exit 1 naming %q", strings.Join(tc.args, " "), r.code, r.stderr, tc.want)
		}
	}
	if got := revisionCount(t, s); got != before {
		t.Errorf("refused writes committed revision %d", got)
	}

	// Instances and versions.
	mustCLI(t, env, "ext", "instance", "add", "canary", "i1", "--subject", "beamline.ext.pre.canary.v1.i1", "--weight", "50", "--health", "healthy")
	mustCLI(t, env, "ext", "version", "add", "canary", "v2", "--subject", "beamline.ext.pre.canary.v2", "--rules", `{"tenant_id":"t9"}`)
	out = mustCLI(t, env, "ext", "version", "disable", "canary", "v2")
	wantIn(t, out, `versions[v2]`)
	mustCLI(t, env, "ext", "version", "rm", "canary", "v2")
	mustCLI(t, env, "ext", "instance", "disable", "canary", "i1")
	mustCLI(t, env, "ext", "instance", "rm", "canary", "i1")

	// Global, then disable: the rollout stays, and the CLI says so; kill wins.
	out = mustCLI(t, env, "ext", "enable", "canary")
	wantIn(t, out, "enabled: false -> true", "on for everyone (v1)")
	out = mustCLI(t, env, "ext", "disable", "canary")
	wantIn(t, out, "note: disabled, but still served to its rollout", "ext kill canary")
	out = mustCLI(t, env, "ext", "kill", "canary", "--by", "oncall")
	wantIn(t, out, `"kill_switch":true`, "killed (metadata.kill_switch): off for everyone")
	if by := lastAuthor(t, s, "canary"); by != "oncall" {
		t.Errorf("changed_by %q, want oncall", by)
	}
	out = mustCLI(t, env, "ext", "kill", "canary")
	wantIn(t, out, "already so, nothing to do")

	out = mustCLI(t, env, "ext", "show", "canary")
	wantIn(t, out, "who gets it", "killed", "version v1", "tenant_id in [staging, t1, t2], or 50% of tenant_id", "health")
	out = mustCLI(t, env, "ext", "list")
	wantIn(t, out, "canary", "killed")
	var shown struct {
		State  string `json:"state"`
		Killed bool   `json:"killed"`
	}
	if err := json.Unmarshal([]byte(mustCLI(t, env, "ext", "show", "canary", "--json")), &shown); err != nil || !shown.Killed {
		t.Errorf("show --json: %+v, %v", shown, err)
	}
	mustCLI(t, env, "ext", "unkill", "canary")
	out = mustCLI(t, env, "ext", "show", "canary")
	wantIn(t, out, "off except its rollout")

	// The audit trail names every author, and history shows the writes.
	out = mustCLI(t, env, "history", "canary")
	wantIn(t, out, "alice", "bob", "oncall")

	out = mustCLI(t, env, "ext", "delete", "canary", "--dry-run")
	wantIn(t, out, "deleted")
	mustCLI(t, env, "ext", "delete", "canary")
	if r := runCLI(t, context.Background(), env, "ext", "show", "canary"); r.code != exitError {
		t.Errorf("show after delete: exit %d", r.code)
	}
}

func TestExtUsage(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"ext"},
		{"ext", "frobnicate"},
		{"ext", "rollout", "x"},
		{"ext", "rollout", "x", "--percent", "5", "--no-percent"},
		{"ext", "create", "x"},
		{"ext", "version"},
		{"ext", "version", "add", "x"},
		{"ext", "set", "x"},
	} {
		r := runCLI(t, context.Background(), envMap{}, args...)
		if r.code != exitUsage {
			t.Errorf("syncer %s: exit %d, want %d (usage)", strings.Join(args, " "), r.code, exitUsage)
		}
	}
}
