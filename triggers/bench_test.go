package triggers_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/beamline/registry-syncer/test/harness"
)

// benchCluster starts a private cluster with fsync on for one benchmark and stops it at
// the end: commit rates measured without fsync say nothing about production.
func benchCluster(b *testing.B) *harness.Postgres {
	b.Helper()
	pg, err := harness.StartPostgres(harness.PGOptions{Durable: true})
	if err != nil {
		b.Fatalf("start durable postgres: %v", err)
	}
	b.Cleanup(pg.Stop)
	return pg
}

// BenchmarkImport100k: one transaction inserting 100,000 extensions with COPY, through
// the statement-level triggers (one change-log INSERT ... SELECT per statement) and the
// commit-time revision.
func BenchmarkImport100k(b *testing.B) {
	const n = 100_000
	pg := benchCluster(b)
	ctx := context.Background()
	types := []string{"pre", "validator", "post", "provider"}
	rows := make([][]any, n)
	for i := range rows {
		typ := types[i%len(types)]
		id := fmt.Sprintf("ext_%06d", i)
		rows[i] = []any{id, typ, "beamline.ext." + typ + "." + id + ".v1", int32(10 + i%4991), int32(i % 4),
			fmt.Sprintf(`{"n": %d, "lang": "en"}`, i), `{"source": "bench"}`}
	}
	cols := []string{"id", "type", "subject", "timeout_ms", "retry", "config", "metadata"}

	var total time.Duration
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		s := pg.NewSchema(b)
		conn, err := s.Pool.Acquire(ctx)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()

		start := time.Now()
		tx, err := conn.Begin(ctx)
		if err != nil {
			b.Fatal(err)
		}
		copied, err := tx.CopyFrom(ctx, pgx.Identifier{"extensions"}, cols, pgx.CopyFromRows(rows))
		if err != nil {
			b.Fatalf("copy: %v", err)
		}
		if err := tx.Commit(ctx); err != nil {
			b.Fatalf("commit: %v", err)
		}
		total += time.Since(start)

		b.StopTimer()
		var rev, changes, logged int64
		if err := conn.QueryRow(ctx, `SELECT r.revision, r.changes, (SELECT count(*) FROM extension_audit_log)
			FROM registry_revisions r`).Scan(&rev, &changes, &logged); err != nil {
			b.Fatal(err)
		}
		if copied != n || rev != 1 || changes != n || logged != n {
			b.Fatalf("copied %d rows; revision %d with %d changes, %d logged; want %d rows in revision 1", copied, rev, changes, logged, n)
		}
		conn.Release()
		b.StartTimer()
	}
	b.StopTimer()
	perImport := total / time.Duration(b.N)
	b.ReportMetric(float64(perImport.Microseconds())/1000, "ms/import")
	b.ReportMetric(float64(n)/perImport.Seconds(), "rows/s")

	// For scale: the same COPY into a copy of the table without triggers.
	s := pg.NewSchema(b)
	if _, err := s.Pool.Exec(ctx, `CREATE TABLE bare (LIKE extensions INCLUDING ALL)`); err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	tx, err := s.Pool.Begin(ctx)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := tx.CopyFrom(ctx, pgx.Identifier{"bare"}, cols, pgx.CopyFromRows(rows)); err != nil {
		b.Fatalf("copy: %v", err)
	}
	if err := tx.Commit(ctx); err != nil {
		b.Fatal(err)
	}
	bare := time.Since(start)
	b.Logf("import of %d rows: %s with triggers, %s into a table without triggers (%.1fx)",
		n, perImport.Round(time.Millisecond), bare.Round(time.Millisecond), perImport.Seconds()/bare.Seconds())
}

// BenchmarkCommitRate: four writers committing single-row UPDATE transactions, against
// the registry table (triggers, change log, commit-ordered revision) and against a copy of
// it without triggers, in the same cluster and run.
func BenchmarkCommitRate(b *testing.B) {
	const (
		writers      = 4
		rowsPerWrite = 10
	)
	pg := benchCluster(b)
	s := pg.NewSchema(b)
	ctx := context.Background()
	cfg, err := pgxpool.ParseConfig(s.URL)
	if err != nil {
		b.Fatal(err)
	}
	cfg.MaxConns = writers + 1
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(pool.Close)
	if _, err := pool.Exec(ctx, `CREATE TABLE bare (LIKE extensions INCLUDING ALL)`); err != nil {
		b.Fatal(err)
	}
	for _, table := range []string{"extensions", "bare"} {
		if _, err := pool.Exec(ctx, fmt.Sprintf(`INSERT INTO %s (id, type, subject, timeout_ms)
			SELECT 'w' || w || '-' || k, 'pre', 'beamline.ext.pre.w' || w || '-' || k || '.v1', 100
			FROM generate_series(0, %d) w, generate_series(0, %d) k`, table, writers-1, rowsPerWrite-1)); err != nil {
			b.Fatal(err)
		}
	}
	for _, table := range []string{"extensions", "bare"} {
		if _, err := pool.Exec(ctx, `VACUUM ANALYZE `+table); err != nil {
			b.Fatal(err)
		}
	}

	rates := map[string]float64{}
	for _, table := range []struct{ name, table string }{{"triggers", "extensions"}, {"bare", "bare"}} {
		b.Run(table.name, func(b *testing.B) {
			// Each writer updates its own rows, so the only contention is the one the
			// registry adds (the revision counter).
			sql := `UPDATE ` + table.table + ` SET timeout_ms = CASE WHEN timeout_ms >= 5000 THEN 10 ELSE timeout_ms + 1 END WHERE id = $1`
			var next atomic.Int64
			var wg sync.WaitGroup
			b.ResetTimer()
			start := time.Now()
			for w := range writers {
				wg.Go(func() {
					conn, err := pool.Acquire(ctx)
					if err != nil {
						b.Error(err)
						return
					}
					defer conn.Release()
					for k := 0; ; k++ {
						if next.Add(1) > int64(b.N) {
							return
						}
						tag, err := conn.Exec(ctx, sql, fmt.Sprintf("w%d-%d", w, k%rowsPerWrite))
						if err != nil || tag.RowsAffected() != 1 {
							b.Errorf("update: %v (%d rows)", err, tag.RowsAffected())
							return
						}
					}
				})
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			rate := float64(b.N) / elapsed.Seconds()
			b.ReportMetric(rate, "commits/s")
			rates[table.name] = rate
			if t := rates["triggers"]; table.name == "bare" && t > 0 {
				b.ReportMetric(t/rate, "triggers/bare")
			}
		})
	}
	var rev int64
	if err := pool.QueryRow(ctx, `SELECT revision FROM registry_counter`).Scan(&rev); err != nil {
		b.Fatal(err)
	}
	if rates["bare"] > 0 {
		b.Logf("commits/s with triggers %.0f, bare %.0f: triggers reach %.0f%% of bare (%d revisions taken)",
			rates["triggers"], rates["bare"], 100*rates["triggers"]/rates["bare"], rev)
	}
}
