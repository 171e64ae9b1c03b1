// Package migrations owns the registry schema: numbered SQL migrations embedded in the
// binary (plus the trigger installation from triggers/), applied idempotently with goose.
package migrations

import (
	"context"
	"database/sql"
	"embed"
	"fmt"
	"hash/fnv"
	"io/fs"
	"regexp"
	"slices"
	"time"

	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"

	"github.com/beamline/registry-syncer/triggers"
)

//go:embed *.sql
var files embed.FS

// The loader refuses files that do not follow NNNNN_name.sql, so a misnamed file fails
// loudly instead of being skipped.
var namePattern = regexp.MustCompile(`^[0-9]{5}_[a-z0-9_]+\.sql$`)

// TriggersVersion is the migration that installs triggers/triggers.sql.
const TriggersVersion = 2

// ChannelVersion is the migration that replaces registry_channel() with
// triggers/channel.sql (channel names cut to 63 bytes, not characters).
const ChannelVersion = 4

// TriggersReinstalled lists the migrations after TriggersVersion that run triggers.sql and
// channel.sql again (both are written to run again over an earlier version). triggers.sql
// is an editable file, and a migration that already ran never runs again: every change to
// it ships as a new entry here, so databases migrated before the change get it too.
// TestTriggerChangesShipAsMigrations fails when the SQL changed without one
// (InstalledTriggersSHA256 is the SHA-256 of what the newest entry installs).
var TriggersReinstalled = []int64{7}

// InstalledTriggersSHA256 is the hex SHA-256 of triggers.SQL followed by triggers.ChannelSQL
// as the newest TriggersReinstalled migration installs them.
const InstalledTriggersSHA256 = "6056ed542d661af36102905e8a2bb3599e91e8508af699555d9102133ee74aae"

// Open returns a database/sql handle over pgx for url (search_path in the URL selects the
// schema the registry lives in).
func Open(url string) (*sql.DB, error) {
	cfg, err := pgxConfig(url)
	if err != nil {
		return nil, err
	}
	return stdlib.OpenDB(*cfg), nil
}

// State is one migration's status.
type State struct {
	Version   int64
	Name      string
	Applied   bool
	AppliedAt time.Time
}

func provider(ctx context.Context, db *sql.DB) (*goose.Provider, error) {
	sub, err := fs.Sub(files, ".")
	if err != nil {
		return nil, err
	}
	entries, err := fs.ReadDir(sub, ".")
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		if !namePattern.MatchString(e.Name()) {
			return nil, fmt.Errorf("migration file %q: name must match NNNNN_name.sql", e.Name())
		}
	}
	// One advisory lock per schema: two processes migrating the same schema wait for each
	// other, parallel test schemas do not.
	var schema string
	if err := db.QueryRowContext(ctx, `SELECT current_schema()`).Scan(&schema); err != nil {
		return nil, fmt.Errorf("read current schema: %w", err)
	}
	h := fnv.New64a()
	h.Write([]byte("registry-migrate:" + schema))
	locker, err := lock.NewPostgresSessionLocker(lock.WithLockID(int64(h.Sum64()>>1)), lock.WithLockTimeout(1, 600))
	if err != nil {
		return nil, err
	}
	gos := []*goose.Migration{
		goose.NewGoMigration(TriggersVersion, &goose.GoFunc{RunTx: triggers.Install}, nil),
		goose.NewGoMigration(ChannelVersion, &goose.GoFunc{RunTx: triggers.InstallChannel}, nil),
	}
	for _, v := range TriggersReinstalled {
		gos = append(gos, goose.NewGoMigration(v, &goose.GoFunc{RunTx: triggers.Install}, nil))
	}
	return goose.NewProvider(goose.DialectPostgres, db, sub,
		goose.WithGoMigrations(gos...),
		goose.WithDisableGlobalRegistry(true),
		goose.WithSessionLocker(locker),
		goose.WithTableName("registry_schema_migrations"),
	)
}

// Up applies every pending migration and returns the versions it applied (none when the
// schema is current).
func Up(ctx context.Context, db *sql.DB) ([]State, error) {
	p, err := provider(ctx, db)
	if err != nil {
		return nil, err
	}
	res, err := p.Up(ctx)
	if err != nil {
		return nil, fmt.Errorf("migrate: %w", err)
	}
	out := make([]State, 0, len(res))
	for _, r := range res {
		out = append(out, State{Version: r.Source.Version, Name: name(r.Source), Applied: true})
	}
	return out, nil
}

// UpTo applies the pending migrations up to and including version (an upgrade test
// starts from an older schema with it).
func UpTo(ctx context.Context, db *sql.DB, version int64) error {
	p, err := provider(ctx, db)
	if err != nil {
		return err
	}
	if _, err := p.UpTo(ctx, version); err != nil {
		return fmt.Errorf("migrate to %d: %w", version, err)
	}
	return nil
}

// Status lists every known migration and whether it is applied.
func Status(ctx context.Context, db *sql.DB) ([]State, error) {
	p, err := provider(ctx, db)
	if err != nil {
		return nil, err
	}
	st, err := p.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("migration status: %w", err)
	}
	out := make([]State, 0, len(st))
	for _, s := range st {
		out = append(out, State{Version: s.Source.Version, Name: name(s.Source),
			Applied: s.State == goose.StateApplied, AppliedAt: s.AppliedAt})
	}
	return out, nil
}

func name(s *goose.Source) string {
	if s.Path != "" {
		return s.Path
	}
	switch s.Version {
	case TriggersVersion:
		return "triggers/triggers.sql"
	case ChannelVersion:
		return "triggers/channel.sql"
	}
	if slices.Contains(TriggersReinstalled, s.Version) {
		return "triggers/triggers.sql+channel.sql"
	}
	return fmt.Sprintf("go migration %d", s.Version)
}
