package migrations_test

import (
	"context"
	"database/sql"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/beamline/registry-syncer/migrations"
	"github.com/beamline/registry-syncer/rules"
	"github.com/beamline/registry-syncer/test/harness"
)

func open(t *testing.T, url string) *sql.DB {
	t.Helper()
	db, err := migrations.Open(url)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// emptySchema creates a schema without migrating it and drops it when the test ends.
func emptySchema(t *testing.T, name string) string {
	t.Helper()
	pg := harness.PG(t)
	q := pgx.Identifier{name}.Sanitize()
	if err := pg.Exec(testCtx(t), "CREATE SCHEMA "+q); err != nil {
		t.Fatalf("create schema: %v", err)
	}
	t.Cleanup(func() { _ = pg.Exec(context.Background(), "DROP SCHEMA "+q+" CASCADE") })
	return pg.URL("postgres", name)
}

// allVersions are the migrations a new schema gets, in order.
var allVersions = append(append([]int64{1, migrations.TriggersVersion, 3, migrations.ChannelVersion, 5, 6}, migrations.TriggersReinstalled...), 8, 10, 11, 12)

func versions(states []migrations.State) []int64 {
	var v []int64
	for _, s := range states {
		v = append(v, s.Version)
	}
	return v
}

// TestUpIsIdempotent: a migrated schema migrates to nothing, and Status reports both
// migrations applied.
func TestUpIsIdempotent(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	url := emptySchema(t, "m_idempotent")
	db := open(t, url)

	st, err := migrations.Status(ctx, db)
	if err != nil {
		t.Fatalf("status of an empty schema: %v", err)
	}
	for _, s := range st {
		if s.Applied {
			t.Fatalf("empty schema reports %d (%s) applied", s.Version, s.Name)
		}
	}

	applied, err := migrations.Up(ctx, db)
	if err != nil {
		t.Fatalf("first Up: %v", err)
	}
	if got := versions(applied); !slices.Equal(got, allVersions) {
		t.Fatalf("first Up applied %v, want %v", got, allVersions)
	}
	again, err := migrations.Up(ctx, db)
	if err != nil {
		t.Fatalf("second Up: %v", err)
	}
	if len(again) != 0 {
		t.Fatalf("second Up applied %v, want nothing", versions(again))
	}

	st, err = migrations.Status(ctx, db)
	if err != nil {
		t.Fatalf("status: %v", err)
	}
	if got := versions(st); !slices.Equal(got, allVersions) {
		t.Fatalf("status lists %v, want %v", got, allVersions)
	}
	for _, s := range st {
		if !s.Applied || s.AppliedAt.IsZero() || s.Name == "" {
			t.Fatalf("status %+v: want applied, with a time and a name", s)
		}
	}
	if st[0].Name != "00001_registry.sql" || st[1].Name != "triggers/triggers.sql" || st[3].Name != "triggers/channel.sql" {
		t.Fatalf("status names %q, %q, %q", st[0].Name, st[1].Name, st[3].Name)
	}

	// The schema works: a write gets revision 1.
	var rev int64
	if _, err := db.ExecContext(ctx, `INSERT INTO extensions (id, type, subject) VALUES ('x', 'pre', 'beamline.ext.pre.x.v1')`); err != nil {
		t.Fatal(err)
	}
	if err := db.QueryRowContext(ctx, `SELECT revision FROM registry_counter`).Scan(&rev); err != nil || rev != 1 {
		t.Fatalf("revision after a write: %d %v", rev, err)
	}
}

// TestConcurrentUp: two migrators racing on one schema both succeed; exactly one applies
// the migrations (the per-schema lock), and a parallel schema is not blocked or touched.
func TestConcurrentUp(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	url := emptySchema(t, "m_race")
	otherURL := emptySchema(t, "m_race_other")

	var wg sync.WaitGroup
	results := make([][]migrations.State, 3)
	errs := make([]error, 3)
	for i, u := range []string{url, url, otherURL} {
		db := open(t, u)
		wg.Go(func() { results[i], errs[i] = migrations.Up(ctx, db) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("Up #%d: %v", i, err)
		}
	}
	counts := []int{len(results[0]), len(results[1])}
	sort.Ints(counts)
	if counts[0] != 0 || counts[1] != len(allVersions) {
		t.Fatalf("racing Ups applied %v and %v, want one to apply all and the other nothing",
			versions(results[0]), versions(results[1]))
	}
	if len(results[2]) != len(allVersions) {
		t.Fatalf("the other schema applied %v", versions(results[2]))
	}
}

// TestConstraintNamesSurvive: every constraint named in the migration exists under exactly
// that name (PostgreSQL silently truncates names longer than 63 bytes, and an error would
// then name a constraint that is nowhere in the source), and every CHECK constraint of the
// registry tables carries its table's name.
func TestConstraintNamesSurvive(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	url := emptySchema(t, "m_names")
	db := open(t, url)
	if _, err := migrations.Up(ctx, db); err != nil {
		t.Fatal(err)
	}
	// The names the SQL migrations leave: added by CONSTRAINT, removed by DROP CONSTRAINT,
	// in migration order.
	files, err := filepath.Glob("*.sql")
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(files)
	var named []string
	for _, f := range files {
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		up, _, _ := strings.Cut(string(src), "-- +goose Down")
		for _, m := range regexp.MustCompile(`(DROP\s+)?CONSTRAINT\s+([a-z0-9_]+)`).FindAllStringSubmatch(up, -1) {
			if m[1] != "" {
				named = slices.DeleteFunc(named, func(n string) bool { return n == m[2] })
			} else {
				named = append(named, m[2])
			}
		}
	}
	// Every rule of package rules is a constraint of that name.
	for _, n := range rules.Constraints() {
		if !slices.Contains(named, n) {
			t.Errorf("rule constraint %s is in no migration", n)
		}
		if len(n) > 63 {
			t.Errorf("constraint %s is %d bytes, over PostgreSQL's 63", n, len(n))
		}
	}
	rows, err := db.QueryContext(ctx, `SELECT c.conname, t.relname, c.contype::text FROM pg_constraint c
		JOIN pg_class t ON t.oid = c.conrelid WHERE t.relnamespace = current_schema()::regnamespace`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	have := map[string]bool{}
	for rows.Next() {
		var name, table, typ string
		if err := rows.Scan(&name, &table, &typ); err != nil {
			t.Fatal(err)
		}
		have[name] = true
		if typ == "c" && !regexp.MustCompile("^"+table+"_").MatchString(name) {
			t.Errorf("CHECK constraint %s on %s does not start with the table name", name, table)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(named) < 20 {
		t.Fatalf("found only %d named constraints in the migration", len(named))
	}
	for _, n := range named {
		if !have[n] {
			t.Errorf("constraint %s (%d bytes) is not in the database under that name", n, len(n))
		}
	}
}
