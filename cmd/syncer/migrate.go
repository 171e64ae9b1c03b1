package main

import (
	"context"
	"database/sql"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/beamline/registry-syncer/migrations"
)

func cmdMigrate(ctx context.Context, e *env, args []string) error {
	status := len(args) > 0 && args[0] == "status"
	name := "migrate"
	if status {
		name, args = "migrate status", args[1:]
	}
	rest, err := parseFlags(name, args, 0, 1)
	if err != nil {
		return err
	}
	if len(rest) == 1 {
		if status {
			return usagef("unexpected argument %q", rest[0])
		}
		return usagef("unknown argument %q (want: status)", rest[0])
	}
	cfg, err := e.config()
	if err != nil {
		return err
	}
	db, err := migrations.Open(cfg.DatabaseURL)
	if err != nil {
		return err
	}
	defer db.Close()
	if status {
		if err := schemaExists(ctx, db, cfg.Schema); err != nil {
			return err
		}
		return migrateStatus(ctx, e, db)
	}
	if err := ensureSchema(ctx, db, cfg.Schema); err != nil {
		return err
	}
	applied, err := migrations.Up(ctx, db)
	if err != nil {
		return err
	}
	if len(applied) == 0 {
		fmt.Fprintln(e.stdout, "schema is up to date")
		return nil
	}
	for _, m := range applied {
		fmt.Fprintf(e.stdout, "applied %05d %s\n", m.Version, m.Name)
	}
	return nil
}

// ensureSchema creates the registry schema named by EXTENSION_REGISTRY_DB_SCHEMA when it
// is missing (schema is "" when the URL came whole from DATABASE_URL), and checks that the
// connection's search_path names an existing schema.
func ensureSchema(ctx context.Context, db *sql.DB, schema string) error {
	if schema != "" {
		var exists bool
		if err := db.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)`, schema).Scan(&exists); err != nil {
			return fmt.Errorf("connect to the database: %w", err)
		}
		if !exists {
			// Checked first: CREATE SCHEMA IF NOT EXISTS needs the CREATE privilege even
			// when the schema is there.
			if _, err := db.ExecContext(ctx, "CREATE SCHEMA IF NOT EXISTS "+pgx.Identifier{schema}.Sanitize()); err != nil {
				return fmt.Errorf("create schema %q: %w", schema, err)
			}
		}
	}
	var current sql.NullString
	if err := db.QueryRowContext(ctx, `SELECT current_schema()`).Scan(&current); err != nil {
		return fmt.Errorf("connect to the database: %w", err)
	}
	if !current.Valid {
		return fmt.Errorf("the search_path of the database URL names no existing schema: create it (CREATE SCHEMA ...) or fix search_path")
	}
	return nil
}

// schemaExists checks, for migrate status, that the registry schema is there: it is what
// syncer migrate creates (schema from EXTENSION_REGISTRY_DB_SCHEMA) or what the
// search_path of DATABASE_URL names (schema "").
func schemaExists(ctx context.Context, db *sql.DB, schema string) error {
	var current sql.NullString
	if err := db.QueryRowContext(ctx, `SELECT current_schema()`).Scan(&current); err != nil {
		return fmt.Errorf("connect to the database: %w", err)
	}
	switch {
	case current.Valid:
		return nil
	case schema != "":
		return fmt.Errorf("schema %q does not exist: nothing is migrated yet; run `syncer migrate` (it creates the schema)", schema)
	}
	return fmt.Errorf("the search_path of %s_DATABASE_URL names no existing schema: create it (CREATE SCHEMA ...) or fix search_path, then run `syncer migrate`", envPrefix)
}

func migrateStatus(ctx context.Context, e *env, db *sql.DB) error {
	states, err := migrations.Status(ctx, db)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "VERSION\tNAME\tSTATE\tAPPLIED AT")
	pending := 0
	for _, s := range states {
		state, at := "pending", "-"
		if s.Applied {
			state = "applied"
			if !s.AppliedAt.IsZero() {
				at = s.AppliedAt.UTC().Format(time.RFC3339)
			}
		} else {
			pending++
		}
		fmt.Fprintf(tw, "%05d\t%s\t%s\t%s\n", s.Version, s.Name, state, at)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if pending == 0 {
		fmt.Fprintln(e.stdout, "schema is up to date")
	} else {
		fmt.Fprintf(e.stdout, "%d pending: run `syncer migrate`\n", pending)
	}
	return nil
}
