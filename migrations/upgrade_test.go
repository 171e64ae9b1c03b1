package migrations_test

import (
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/beamline/registry-syncer/changelog"
	"github.com/beamline/registry-syncer/migrations"
	"github.com/beamline/registry-syncer/triggers"
	"github.com/jackc/pgx/v5/pgxpool"
)

// TestTriggerChangesShipAsMigrations: the trigger SQL a fresh database gets (migration 2
// runs the current file) is the SQL the newest reinstall migration installs in databases
// migrated earlier. Editing triggers.sql or channel.sql without adding a migration to
// migrations.TriggersReinstalled fails here.
func TestTriggerChangesShipAsMigrations(t *testing.T) {
	t.Parallel()
	sum := sha256.Sum256([]byte(triggers.SQL + triggers.ChannelSQL))
	if got := hex.EncodeToString(sum[:]); got != migrations.InstalledTriggersSHA256 {
		t.Fatalf("triggers.sql or channel.sql changed (SHA-256 %s, the newest reinstall migration %v installs %s): "+
			"append a new migration version to migrations.TriggersReinstalled and set InstalledTriggersSHA256 to %s",
			got, migrations.TriggersReinstalled, migrations.InstalledTriggersSHA256, got)
	}
}

// TestUpgradeFromTheFirstRelease starts from the schema the first release created —
// migration 1 and the triggers.sql it shipped (testdata/release1_triggers.sql, as
// migration 2 ran it then) — with data, and migrates to the current schema while writers
// keep committing. Nothing is lost: every committed transaction has exactly one revision,
// without holes; the change log replays to exactly what the tables hold; and the triggers
// are the current ones afterwards (a write after the upgrade logs and notifies as today's
// do).
func TestUpgradeFromTheFirstRelease(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	url := emptySchema(t, "m_upgrade")
	db := open(t, url)
	if err := migrations.UpTo(ctx, db, 1); err != nil {
		t.Fatal(err)
	}
	released, err := os.ReadFile("testdata/release1_triggers.sql")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, string(released)); err != nil {
		t.Fatalf("install the released triggers: %v", err)
	}
	// As goose recorded migration 2 at the time.
	if _, err := db.ExecContext(ctx, `INSERT INTO registry_schema_migrations (version_id, is_applied) VALUES ($1, true)`, migrations.TriggersVersion); err != nil {
		t.Fatalf("record migration 2: %v", err)
	}
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	for i := 0; i < 20; i++ {
		if _, err := pool.Exec(ctx, fmt.Sprintf(`INSERT INTO extensions (id, type, subject) VALUES ('e%d', 'pre', 'beamline.ext.pre.e%d.v1')`, i, i)); err != nil {
			t.Fatal(err)
		}
	}

	// Writers commit while the rest of the migrations run.
	var (
		wg      sync.WaitGroup
		commits atomic.Int64
		stop    atomic.Bool
		werr    atomic.Pointer[error]
	)
	for w := 0; w < 2; w++ {
		wg.Go(func() {
			for i := 0; !stop.Load(); i++ {
				_, err := pool.Exec(ctx, fmt.Sprintf(`UPDATE extensions SET timeout_ms = %d WHERE id = 'e%d'`, 100+i%900, (i*2+w)%20))
				if err != nil {
					werr.Store(&err)
					return
				}
				commits.Add(1)
			}
		})
	}
	for commits.Load() < 50 && werr.Load() == nil {
		runtime.Gosched()
	}
	applied, err := migrations.Up(ctx, db)
	before := commits.Load()
	for commits.Load() < before+50 && werr.Load() == nil {
		runtime.Gosched()
	}
	stop.Store(true)
	wg.Wait()
	if err != nil {
		t.Fatalf("upgrade: %v", err)
	}
	if p := werr.Load(); p != nil {
		t.Fatalf("a writer failed during the upgrade: %v", *p)
	}
	t.Logf("upgraded through %v while %d transactions committed", versionsOf(applied), commits.Load())

	// One revision per committed transaction: 20 inserts and every update, no holes.
	var counter, revs, lo, hi int64
	if err := pool.QueryRow(ctx, `SELECT (SELECT revision FROM registry_counter), count(*), min(revision), max(revision) FROM registry_revisions`).
		Scan(&counter, &revs, &lo, &hi); err != nil {
		t.Fatal(err)
	}
	if want := 20 + commits.Load(); counter != want || revs != want || lo != 1 || hi != want {
		t.Fatalf("counter %d, %d revisions %d..%d; want %d, contiguous from 1", counter, revs, lo, hi, want)
	}
	for i := 0; i < 20; i++ {
		id := fmt.Sprintf("e%d", i)
		replayed, err := changelog.AggregateAt(ctx, pool, id, counter)
		if err != nil {
			t.Fatal(err)
		}
		cur, err := changelog.Current(ctx, pool, id)
		if err != nil {
			t.Fatal(err)
		}
		a, _ := json.Marshal(replayed)
		b, _ := json.Marshal(cur)
		if string(a) != string(b) {
			t.Errorf("%s: the change log replays to\n%s\nthe table holds\n%s", id, a, b)
		}
	}
	// Today's triggers are installed: the same function text as a fresh schema gets.
	fresh := open(t, emptySchema(t, "m_upgrade_fresh"))
	if _, err := migrations.Up(ctx, fresh); err != nil {
		t.Fatal(err)
	}
	defs := func(d *sql.DB) string {
		var s string
		if err := d.QueryRowContext(ctx, `SELECT string_agg(p.proname || ':' || md5(p.prosrc), ',' ORDER BY p.proname)
			FROM pg_proc p WHERE p.pronamespace = current_schema()::regnamespace`).Scan(&s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	if a, b := defs(db), defs(fresh); a != b {
		t.Errorf("functions after the upgrade differ from a fresh schema's:\n%s\n%s", a, b)
	}
}

func versionsOf(st []migrations.State) []int64 {
	var out []int64
	for _, s := range st {
		out = append(out, s.Version)
	}
	return out
}
