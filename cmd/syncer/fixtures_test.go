package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/beamline/registry-syncer/fixtures"
	"github.com/beamline/registry-syncer/test/harness"
)

// TestFixturesExportCLI: export refuses a directory holding fixture files, naming it and
// --clean; with --clean (before or after DIR) it removes the stale files, so verify
// finds no false difference after a delete; verify prints a changed routing rule.
func TestFixturesExportCLI(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	schema := newSchema(t)
	env := schemaEnv(t, schema)
	if r := runCLI(t, ctx, env, "migrate"); r.code != exitOK {
		t.Fatalf("migrate: exit %d", r.code)
	}
	if r := runCLI(t, ctx, env, "fixtures", "import"); r.code != exitOK {
		t.Fatalf("import: exit %d: %s", r.code, r.stderr)
	}
	q := func(sql string) {
		t.Helper()
		if err := harness.PG(t).Exec(ctx, "SET search_path TO "+pgx.Identifier{schema}.Sanitize()+"; "+sql); err != nil {
			t.Fatal(err)
		}
	}
	q(`INSERT INTO extension_versions (id, version, subject, routing_rules) VALUES ('pii_guard', 'v2', 'beamline.ext.validate.pii_guard.v2', '{"tenant_id": ["t1"]}')`)
	dir := filepath.Join(t.TempDir(), "backup")
	if r := runCLI(t, ctx, env, "fixtures", "export", dir); r.code != exitOK || strings.TrimSpace(r.stdout) != "exported 4 extensions to "+dir {
		t.Fatalf("export: exit %d %q %q", r.code, r.stdout, r.stderr)
	}
	q(`DELETE FROM extensions WHERE id = 'mask_pii'`)

	r := runCLI(t, ctx, env, "fixtures", "export", dir)
	if r.code != exitError || !strings.Contains(r.stderr, dir+" already holds 4 fixture files") || !strings.Contains(r.stderr, "--clean") {
		t.Fatalf("export into a directory with fixture files: exit %d, stderr %q; want 1 naming the directory and --clean", r.code, r.stderr)
	}
	r = runCLI(t, ctx, env, "fixtures", "export", dir, "--clean")
	if r.code != exitOK || !strings.Contains(r.stdout, "removed 1 fixture files this export did not write: "+filepath.FromSlash(fixtures.Path("mask_pii"))) ||
		!strings.Contains(r.stdout, "exported 3 extensions to "+dir) {
		t.Fatalf("export --clean: exit %d %q %q", r.code, r.stdout, r.stderr)
	}
	if r := runCLI(t, ctx, env, "fixtures", "verify", dir); r.code != exitOK || strings.TrimSpace(r.stdout) != "fixtures match the database (3 extensions)" {
		t.Fatalf("verify after a clean export: exit %d %q", r.code, r.stdout)
	}

	q(`UPDATE extension_versions SET routing_rules = '{"tenant_id": ["t1", "t9"]}' WHERE id = 'pii_guard' AND version = 'v2'`)
	r = runCLI(t, ctx, env, "fixtures", "verify", dir)
	want := `pii_guard: versions["v2"].routing_rules: fixtures {"tenant_id":["t1"]}, database {"tenant_id":["t1","t9"]}`
	if r.code != exitError || strings.TrimSpace(r.stdout) != want || !strings.Contains(r.stderr, "differ (1 difference)") {
		t.Fatalf("verify of a changed routing rule: exit %d, stdout %q; want 1 and %q", r.code, r.stdout, want)
	}
}

// TestFixturesOutputIsShort: many records and many differences print a bounded summary
// (at most --limit ids per line, then "and N more"), and --limit 0 lists all.
func TestFixturesOutputIsShort(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	env := schemaEnv(t, newSchema(t))
	if r := runCLI(t, ctx, env, "migrate"); r.code != exitOK {
		t.Fatalf("migrate: exit %d", r.code)
	}
	dir := t.TempDir()
	if r := runCLI(t, ctx, env, "fixtures", "import", dir); r.code != exitOK || !strings.Contains(r.stderr, "no fixture files (*.json) in "+dir) {
		t.Fatalf("import of an empty directory: exit %d, stderr %q", r.code, r.stderr)
	}
	for i := range 100 {
		data := fmt.Sprintf(`{"id": "ext_%03d", "type": "pre", "subject": "x.ext_%03d.v1"}`, i, i)
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("ext_%03d.json", i)), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	r := runCLI(t, ctx, env, "fixtures", "import", dir)
	if r.code != exitOK || !strings.Contains(r.stdout, "created: ext_000, ext_001") || !strings.Contains(r.stdout, "ext_019 and 80 more\n") ||
		!strings.HasSuffix(r.stdout, "100 created, 0 updated, 0 unchanged\n") || len(r.stdout) > 400 {
		t.Fatalf("import of 100: exit %d, %d bytes: %q", r.code, len(r.stdout), r.stdout)
	}
	r = runCLI(t, ctx, env, "fixtures", "import", "--limit", "3", dir)
	if r.code != exitOK || r.stdout != "unchanged: ext_000, ext_001, ext_002 and 97 more\n0 created, 0 updated, 100 unchanged\n" {
		t.Fatalf("import --limit 3: exit %d %q", r.code, r.stdout)
	}
	// The defaults against these 100: 100 extra, 4 missing.
	r = runCLI(t, ctx, env, "fixtures", "verify")
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if r.code != exitError || len(lines) != 22 || lines[20] != "... and 84 more differences (--limit 0 lists all)" ||
		lines[21] != "104 extensions differ: 4 missing in the database, 100 extra in the database, 0 changed fields" {
		t.Fatalf("verify: exit %d, %d lines:\n%s", r.code, len(lines), r.stdout)
	}
	if r = runCLI(t, ctx, env, "fixtures", "verify", "--limit", "0"); len(strings.Split(strings.TrimSpace(r.stdout), "\n")) != 104 {
		t.Fatalf("verify --limit 0 printed:\n%s", r.stdout)
	}
	if r = runCLI(t, ctx, env, "fixtures", "verify", "--limit", "-1"); r.code != exitUsage {
		t.Fatalf("verify --limit -1: exit %d", r.code)
	}
}

// TestProgressPrinter: progress lines are rewritten in place at most every 200 ms and
// finished with a newline; a writer that is not a terminal gets none.
func TestProgressPrinter(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	now := time.Unix(0, 0)
	p := progressPrinter(&buf, func() time.Time { return now })
	p("load", 0, 1000)
	now = now.Add(100 * time.Millisecond)
	p("load", 500, 1000) // too soon: not printed
	now = now.Add(150 * time.Millisecond)
	p("load", 600, 1000)
	now = now.Add(10 * time.Millisecond)
	p("load", 1000, 1000)
	p("import", 0, 2)
	now = now.Add(time.Second)
	p("import", 2, 2)
	want := "\rload 0/1000 (0%) 0s\rload 600/1000 (60%) 300ms\rload 1000/1000 (100%) 300ms\n\rimport 0/2 (0%) 0s\rimport 2/2 (100%) 1s\n"
	if buf.String() != want {
		t.Errorf("progress output %q, want %q", buf.String(), want)
	}
	if newProgress(&buf) != nil {
		t.Error("progress on a buffer")
	}
	f, err := os.Create(filepath.Join(t.TempDir(), "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if newProgress(f) != nil {
		t.Error("progress on a regular file")
	}
}
