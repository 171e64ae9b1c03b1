package main

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/beamline/registry-syncer/fixtures"
)

// importActor is recorded as the writer of what `fixtures import` changes.
const importActor = "syncer fixtures import"

func cmdFixtures(ctx context.Context, e *env, args []string) error {
	if len(args) == 0 {
		return usagef("missing subcommand: import, export or verify")
	}
	sub, args := args[0], args[1:]
	switch sub {
	case "-h", "-help", "--help":
		return flag.ErrHelp
	case "import", "verify":
		rest, err := parseFlags("fixtures "+sub, args, 0, 1)
		if err != nil {
			return err
		}
		cfg, err := e.config()
		if err != nil {
			return err
		}
		dir := cfg.FixturesDir
		if len(rest) == 1 {
			dir = rest[0]
		}
		recs, err := loadFixtures(ctx, dir)
		if err != nil {
			return err
		}
		conn, err := connect(ctx, cfg)
		if err != nil {
			return err
		}
		defer conn.Close(context.WithoutCancel(ctx))
		if sub == "import" {
			return fixturesImport(ctx, e, conn, recs)
		}
		return fixturesVerify(ctx, e, conn, recs)
	case "export":
		rest, err := parseFlags("fixtures export", args, 1, 1)
		if err != nil {
			return err
		}
		cfg, err := e.config()
		if err != nil {
			return err
		}
		conn, err := connect(ctx, cfg)
		if err != nil {
			return err
		}
		defer conn.Close(context.WithoutCancel(ctx))
		n, err := fixtures.Export(ctx, conn, rest[0])
		if err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "exported %d extensions to %s\n", n, rest[0])
		return nil
	default:
		return usagef("unknown subcommand %q: want import, export or verify", sub)
	}
}

// loadFixtures loads dir, or the built-in defaults when dir is empty; it stops when ctx
// ends (SIGTERM, SIGINT).
func loadFixtures(ctx context.Context, dir string) ([]fixtures.Record, error) {
	if dir == "" {
		return fixtures.LoadContext(ctx, fixtures.Defaults())
	}
	return fixtures.LoadDirContext(ctx, dir)
}

// connect opens one connection to the registry database.
func connect(ctx context.Context, cfg *config) (*pgx.Conn, error) {
	pc, err := pgx.ParseConfig(cfg.DatabaseURL)
	if err != nil {
		// Not pgx's message: it may quote the string, password and all.
		return nil, fmt.Errorf("%s_DATABASE_URL: %s", envPrefix, cmp.Or(checkPostgresURL(cfg.DatabaseURL), "cannot be parsed"))
	}
	pc.RuntimeParams["application_name"] = "registry-syncer-cli"
	conn, err := pgx.ConnectConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("connect to the database: %w", err)
	}
	return conn, nil
}

func fixturesImport(ctx context.Context, e *env, conn *pgx.Conn, recs []fixtures.Record) error {
	rep, err := fixtures.Import(ctx, conn, recs, importActor)
	if err != nil {
		return err
	}
	for _, l := range []struct {
		what string
		ids  []string
	}{{"created", rep.Created}, {"updated", rep.Updated}, {"unchanged", rep.Unchanged}} {
		if len(l.ids) > 0 {
			fmt.Fprintf(e.stdout, "%s: %s\n", l.what, strings.Join(l.ids, ", "))
		}
	}
	fmt.Fprintln(e.stdout, rep.String())
	return nil
}

func fixturesVerify(ctx context.Context, e *env, conn *pgx.Conn, recs []fixtures.Record) error {
	diffs, err := fixtures.Verify(ctx, conn, recs)
	if err != nil {
		return err
	}
	if len(diffs) == 0 {
		fmt.Fprintf(e.stdout, "fixtures match the database (%d extensions)\n", len(recs))
		return nil
	}
	for _, d := range diffs {
		fmt.Fprintln(e.stdout, d.String())
	}
	if len(diffs) == 1 {
		return fmt.Errorf("fixtures and database differ (1 difference)")
	}
	return fmt.Errorf("fixtures and database differ (%d differences)", len(diffs))
}
