package main

import (
	"context"
	"strconv"
	"strings"
	"testing"

	"github.com/beamline/registry-syncer/test/harness"
)

// TestNotMigratedSaysRunMigrate: commands that need the registry's tables, run against a
// schema that was never migrated, say to run `syncer migrate` (not "relation does not
// exist").
func TestNotMigratedSaysRunMigrate(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	env := schemaEnv(t, newSchema(t))
	for _, args := range [][]string{
		{"fixtures", "import"},
		{"fixtures", "verify"},
		{"fixtures", "export", t.TempDir() + "/out"},
		{"history"},
		{"diff", "1", "2"},
	} {
		r := runCLI(t, ctx, env, args...)
		if r.code != exitError {
			t.Errorf("%v: exit %d, want 1", args, r.code)
		}
		if !strings.Contains(r.stderr, "run `syncer migrate`") {
			t.Errorf("%v: stderr %q does not say to run syncer migrate", args, r.stderr)
		}
	}
}

// TestMigrateStatusMissingSchema: migrate status on a search_path naming a schema that
// does not exist says so and what to do (it printed a scan error).
func TestMigrateStatusMissingSchema(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pg := harness.PG(t)
	for _, tt := range []struct {
		name string
		env  envMap
		want string
	}{
		{"DatabaseURL", envMap{"EXTENSION_REGISTRY_DATABASE_URL": pg.URL("postgres", "no_such_schema_here")},
			"names no existing schema"},
		{"DBParts", envMap{"EXTENSION_REGISTRY_DB_HOST": "127.0.0.1", "EXTENSION_REGISTRY_DB_PORT": strconv.Itoa(pg.Port),
			"EXTENSION_REGISTRY_DB_SCHEMA": "no_such_schema_either"}, `schema "no_such_schema_either" does not exist`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := runCLI(t, ctx, tt.env, "migrate", "status")
			if r.code != exitError {
				t.Errorf("exit %d, want 1", r.code)
			}
			for _, want := range []string{tt.want, "run `syncer migrate`"} {
				if !strings.Contains(r.stderr, want) {
					t.Errorf("stderr lacks %q", want)
				}
			}
			if strings.Contains(r.stderr, "scan") {
				t.Errorf("stderr still shows the scan error")
			}
		})
	}
}
