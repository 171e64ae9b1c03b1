package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/beamline/registry-syncer/test/harness"
)

var schemaSeq atomic.Int64

// newSchema creates an empty schema (no migrations) and drops it after the test.
func newSchema(t *testing.T) string {
	t.Helper()
	pg := harness.PG(t)
	name := fmt.Sprintf("cli_%d_%d", os.Getpid()%100000, schemaSeq.Add(1))
	ctx := context.Background()
	if err := pg.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = pg.Exec(context.Background(), "DROP SCHEMA IF EXISTS "+pgx.Identifier{name}.Sanitize()+" CASCADE")
	})
	return name
}

// schemaEnv points the CLI at schema through EXTENSION_REGISTRY_DATABASE_URL.
func schemaEnv(t *testing.T, schema string) envMap {
	t.Helper()
	return envMap{"EXTENSION_REGISTRY_DATABASE_URL": harness.PG(t).URL("postgres", schema)}
}

func TestMigrate(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	env := schemaEnv(t, newSchema(t))

	r := runCLI(t, ctx, env, "migrate", "status")
	if r.code != exitOK || !strings.Contains(r.stdout, "pending") || strings.Contains(r.stdout, "applied ") {
		t.Fatalf("status before: exit %d, want every migration pending", r.code)
	}

	r = runCLI(t, ctx, env, "migrate")
	if r.code != exitOK {
		t.Fatalf("migrate: exit %d: %s", r.code, r.stderr)
	}
	applied := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(applied) < 2 || !strings.HasPrefix(applied[0], "applied 00001 ") {
		t.Fatalf("migrate printed %q, want one 'applied' line per migration", r.stdout)
	}

	r = runCLI(t, ctx, env, "migrate")
	if r.code != exitOK || strings.TrimSpace(r.stdout) != "schema is up to date" {
		t.Fatalf("second migrate: exit %d %q, want 'schema is up to date'", r.code, r.stdout)
	}

	r = runCLI(t, ctx, env, "migrate", "status")
	if r.code != exitOK {
		t.Fatalf("status: exit %d", r.code)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if want := len(applied) + 2; len(lines) != want { // header, one per migration, summary
		t.Fatalf("status has %d lines, want %d", len(lines), want)
	}
	for _, l := range lines[1 : len(lines)-1] {
		f := strings.Fields(l)
		if len(f) != 4 || f[2] != "applied" || !strings.Contains(f[3], "T") {
			t.Errorf("status line %q, want VERSION NAME applied TIME", l)
		}
	}
	if lines[len(lines)-1] != "schema is up to date" {
		t.Errorf("status summary %q", lines[len(lines)-1])
	}
}

// TestMigrateFromParts builds the URL from the DB_* variables and lets migrate create
// the schema it names.
func TestMigrateFromParts(t *testing.T) {
	t.Parallel()
	pg := harness.PG(t)
	schema := fmt.Sprintf("cli_parts_%d_%d", os.Getpid()%100000, schemaSeq.Add(1))
	t.Cleanup(func() { _ = pg.Exec(context.Background(), "DROP SCHEMA IF EXISTS "+schema+" CASCADE") })
	env := envMap{
		"EXTENSION_REGISTRY_DB_HOST":     "127.0.0.1",
		"EXTENSION_REGISTRY_DB_PORT":     strconv.Itoa(pg.Port),
		"EXTENSION_REGISTRY_DB_PASSWORD": "ignored-by-trust-auth",
		"EXTENSION_REGISTRY_DB_SCHEMA":   schema,
	}
	r := runCLI(t, context.Background(), env, "migrate")
	if r.code != exitOK || !strings.Contains(r.stdout, "applied 00001") {
		t.Fatalf("migrate: exit %d", r.code)
	}
	var n int
	conn, err := pgx.Connect(context.Background(), pg.URL("postgres", ""))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if err := conn.QueryRow(context.Background(), `SELECT count(*) FROM pg_tables WHERE schemaname = $1 AND tablename = 'extensions'`, schema).Scan(&n); err != nil || n != 1 {
		t.Fatalf("extensions table in %s: %d, %v", schema, n, err)
	}
}

func TestMigrateMissingSchema(t *testing.T) {
	t.Parallel()
	r := runCLI(t, context.Background(), schemaEnv(t, "no_such_schema"), "migrate")
	if r.code != exitError || !strings.Contains(r.stderr, "names no existing schema") {
		t.Fatalf("exit %d %q, want an error about the schema", r.code, r.stderr)
	}
}

func TestFixtures(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	schema := newSchema(t)
	env := schemaEnv(t, schema)
	if r := runCLI(t, ctx, env, "migrate"); r.code != exitOK {
		t.Fatalf("migrate: exit %d", r.code)
	}

	r := runCLI(t, ctx, env, "fixtures", "import")
	if r.code != exitOK || !strings.Contains(r.stdout, "created: mask_pii, normalize_text, pii_guard, test_provider") ||
		!strings.Contains(r.stdout, "4 created, 0 updated, 0 unchanged") {
		t.Fatalf("import: exit %d", r.code)
	}
	r = runCLI(t, ctx, env, "fixtures", "import")
	if r.code != exitOK || !strings.Contains(r.stdout, "0 created, 0 updated, 4 unchanged") {
		t.Fatalf("second import: exit %d", r.code)
	}
	r = runCLI(t, ctx, env, "fixtures", "verify")
	if r.code != exitOK || strings.TrimSpace(r.stdout) != "fixtures match the database (4 extensions)" {
		t.Fatalf("verify: exit %d", r.code)
	}

	// Export, and the exported directory verifies too (also as FIXTURES_DIR).
	dir := filepath.Join(t.TempDir(), "export")
	r = runCLI(t, ctx, env, "fixtures", "export", dir)
	if r.code != exitOK || strings.TrimSpace(r.stdout) != "exported 4 extensions to "+dir {
		t.Fatalf("export: exit %d", r.code)
	}
	if r = runCLI(t, ctx, env, "fixtures", "verify", dir); r.code != exitOK {
		t.Fatalf("verify %s: exit %d", dir, r.code)
	}
	withDir := envMap{"EXTENSION_REGISTRY_FIXTURES_DIR": dir}
	for k, v := range env {
		withDir[k] = v
	}
	if r = runCLI(t, ctx, withDir, "fixtures", "verify"); r.code != exitOK {
		t.Fatalf("verify with FIXTURES_DIR: exit %d", r.code)
	}

	// A change in the database is a difference, named by id and field.
	if err := harness.PG(t).Exec(ctx, "UPDATE "+pgx.Identifier{schema, "extensions"}.Sanitize()+" SET timeout_ms = 250 WHERE id = 'pii_guard'"); err != nil {
		t.Fatal(err)
	}
	r = runCLI(t, ctx, env, "fixtures", "verify")
	if r.code != exitError {
		t.Fatalf("verify after a change: exit %d, want 1", r.code)
	}
	if strings.TrimSpace(r.stdout) != "pii_guard: timeout_ms: fixtures 200, database 250" {
		t.Errorf("differences %q", r.stdout)
	}
	if !strings.Contains(r.stderr, "syncer: fixtures and database differ (1 difference)") {
		t.Errorf("stderr %q", r.stderr)
	}

	// Importing again repairs it.
	r = runCLI(t, ctx, env, "fixtures", "import")
	if r.code != exitOK || !strings.Contains(r.stdout, "updated: pii_guard") {
		t.Fatalf("repair import: exit %d", r.code)
	}
	if r = runCLI(t, ctx, env, "fixtures", "verify"); r.code != exitOK {
		t.Fatalf("verify after repair: exit %d", r.code)
	}
}

func TestFixturesBadDir(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "bad.json"), []byte(`{"id": "x", "type": "pre"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	r := runCLI(t, context.Background(), schemaEnv(t, newSchema(t)), "fixtures", "import", dir)
	if r.code != exitError || !strings.Contains(r.stderr, "bad.json") {
		t.Fatalf("exit %d, want 1 naming the file", r.code)
	}
}
