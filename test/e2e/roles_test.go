package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/beamline/registry-syncer/client"
)

// TestDatabaseRoles: the least-privilege roles of deploy/postgres/roles.sql (OPERATIONS.md
// "Database roles") are enough for everything each one does, and no more: `syncer run` as
// registry_syncer publishes, writes extension health and auto-disables under the quorum;
// registry_operator writes through `syncer ext` and `fixtures import`; registry_reader
// reads history and exports, and can neither write the registry nor read the signing key.
func TestDatabaseRoles(t *testing.T) {
	t.Parallel()
	b := setup(t, "e2e.roles")
	ctx := context.Background()
	for _, role := range []string{"registry_syncer", "registry_operator", "registry_reader"} {
		// Roles are the cluster's: created once, granted per schema.
		if err := b.schema.PG.Exec(ctx, `DO $$ BEGIN CREATE ROLE `+role+` LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$`); err != nil {
			t.Fatal(err)
		}
	}
	grants, err := os.ReadFile(filepath.Join("..", "..", "deploy", "postgres", "roles.sql"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.schema.Pool.Exec(ctx, string(grants)); err != nil {
		t.Fatalf("deploy/postgres/roles.sql: %v", err)
	}
	as := func(role string) string {
		u := strings.Replace(b.schema.URL, "postgres://postgres@", "postgres://"+role+"@", 1)
		if u == b.schema.URL {
			t.Fatalf("cannot change the user of %s", b.schema.URL)
		}
		return u
	}
	operator := b.vars("DATABASE_URL", as("registry_operator"))
	reader := b.vars("DATABASE_URL", as("registry_reader"))

	if r := runCLI(t, operator, "fixtures", "import"); r.code != 0 {
		t.Fatalf("fixtures import as registry_operator: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	s := b.startSyncer(t, "DATABASE_URL", as("registry_syncer"), "AUTO_DISABLE", "true", "HEALTH_INTERVAL", "200ms",
		"AUTO_HOLD", "2", "AUTO_COOLDOWN", "500ms")
	s.waitReady(t, 30*time.Second)
	const subject = "beamline.ext.pre.geo.v1"
	if r := runCLI(t, operator, "ext", "create", "geo", "--type", "pre", "--subject", subject, "--by", "alice"); r.code != 0 {
		t.Fatalf("ext create as registry_operator: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r := runCLI(t, operator, "ext", "set", "geo", `metadata={"circuit_breaker": {"failure_threshold": 2, "open_timeout_ms": 300}}`, "timeout_ms=200", "--by", "alice"); r.code != 0 {
		t.Fatalf("ext set as registry_operator: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	svc := b.serve(t, subject)
	var clients []*client.Client
	for i := range 2 {
		c, err := client.New(b.connect(t), client.Config{Prefix: b.prefix, RouterID: fmt.Sprintf("roles-%d", i), ReportInterval: 200 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Start(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.Stop)
		clients = append(clients, c)
	}
	invoke := func() {
		for _, c := range clients {
			_, _ = c.Invoke(ctx, "geo", client.Request{}, nil)
		}
	}
	eventually(t, 20*time.Second, "the routers call geo and the syncer writes its health", func() error {
		invoke()
		var n int64
		if err := b.schema.Pool.QueryRow(ctx, `SELECT coalesce((SELECT success_count FROM extension_health WHERE extension_id = 'geo'), 0)`).Scan(&n); err != nil {
			return err
		}
		if n < 10 {
			return fmt.Errorf("extension_health success_count %d", n)
		}
		return nil
	})
	svc.fail.Store(true)
	eventually(t, 30*time.Second, "registry_syncer auto-disables geo", func() error {
		invoke()
		var by string
		if err := b.schema.Pool.QueryRow(ctx, `SELECT changed_by FROM extension_audit_log WHERE extension_id = 'geo'
			AND (new_values->>'auto_disabled')::boolean ORDER BY seq LIMIT 1`).Scan(&by); err != nil {
			return err
		}
		if !strings.HasPrefix(by, "syncer ") || !strings.Contains(by, "auto_disable") {
			return fmt.Errorf("changed_by %q", by)
		}
		return nil
	})
	if r := runCLI(t, reader, "history", "geo"); r.code != 0 || !strings.Contains(r.stdout, "alice") {
		t.Errorf("history as registry_reader: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r := runCLI(t, reader, "fixtures", "export", t.TempDir()); r.code != 0 {
		t.Errorf("fixtures export as registry_reader: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r := runCLI(t, reader, "ext", "set", "geo", "timeout_ms=300"); r.code == 0 || !strings.Contains(r.stderr, "permission denied") {
		t.Errorf("ext set as registry_reader: exit %d, want a permission error\n%s%s", r.code, r.stdout, r.stderr)
	}
	conn, err := pgx.Connect(ctx, as("registry_reader"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var seed string
	if err := conn.QueryRow(ctx, `SELECT seed FROM registry_signing_key`).Scan(&seed); err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Errorf("registry_reader read the signing key: %v", err)
	}
}
