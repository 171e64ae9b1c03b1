package harness

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/beamline/registry-syncer/migrations"
	"github.com/beamline/registry-syncer/rules"
)

// Schema is a migrated registry in a schema of its own, for one test.
type Schema struct {
	Name string
	URL  string // search_path points at the schema
	Pool *pgxpool.Pool
	PG   *Postgres
}

var schemaSeq atomic.Int64

// NewSchema creates a fresh schema in pg, applies the migrations (tables and triggers) and
// drops it when the test ends. Notifications carry the schema in their channel name, so
// parallel tests in one cluster do not hear each other.
func (p *Postgres) NewSchema(tb testing.TB) *Schema {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	name := fmt.Sprintf("t%d_%d", os.Getpid()%100000, schemaSeq.Add(1))
	if err := p.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{name}.Sanitize()); err != nil {
		tb.Fatalf("create schema: %v", err)
	}
	s := &Schema{Name: name, URL: p.URL("postgres", name), PG: p}
	db, err := migrations.Open(s.URL)
	if err != nil {
		tb.Fatalf("open: %v", err)
	}
	_, err = migrations.Up(ctx, db)
	db.Close()
	if err != nil {
		tb.Fatalf("migrate schema %s: %v", name, err)
	}
	s.Pool, err = pgxpool.New(ctx, s.URL)
	if err != nil {
		tb.Fatalf("pool: %v", err)
	}
	tb.Cleanup(func() {
		s.Pool.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		// The server may be stopped by a fault test that failed half-way; then the whole
		// cluster goes away with Stop and there is nothing to drop.
		_ = p.Exec(ctx, "DROP SCHEMA "+pgx.Identifier{name}.Sanitize()+" CASCADE")
	})
	return s
}

// MainPostgres starts one cluster for a test package's TestMain and stops it after the
// tests; a start failure fails the run (never a skip).
func MainPostgres(m *testing.M, opts PGOptions) int {
	start := time.Now()
	pg, err := StartPostgres(opts)
	if err != nil {
		fmt.Fprintf(os.Stderr, "harness: %v\n", err)
		return 1
	}
	if os.Getenv("HARNESS_VERBOSE") != "" {
		fmt.Fprintf(os.Stderr, "harness: postgres ready on port %d in %s\n", pg.Port, time.Since(start).Round(time.Millisecond))
	}
	shared.Store(pg)
	defer pg.Stop()
	stop := stopOnSignal(pg.Stop)
	defer stop()
	return m.Run()
}

var shared atomic.Pointer[Postgres]

// PG is the cluster started by MainPostgres.
func PG(tb testing.TB) *Postgres {
	tb.Helper()
	p := shared.Load()
	if p == nil {
		tb.Fatal("harness.PG: call harness.MainPostgres from TestMain")
	}
	return p
}

// UndoRules runs the Down section of migration 00005 (rules.Down) in the schema: the
// registry as it was before 00005, which accepts rows the router side refuses (a 612-byte
// subject of multibyte characters, U+00A0 in a subject, 1e400 in a config, …). For tests
// of what the syncer does with such rows in a database not migrated yet.
func (s *Schema) UndoRules(tb testing.TB) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := s.Pool.Exec(ctx, rules.Down()); err != nil {
		tb.Fatalf("undo migration 00005 in %s: %v", s.Name, err)
	}
}
