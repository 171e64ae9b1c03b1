package triggers_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// TestCommitOrderNotStartOrder: the revision follows the order of COMMIT, not of BEGIN or
// of the first write.
func TestCommitOrderNotStartOrder(t *testing.T) {
	t.Parallel()
	s := newSchema(t)
	ctx := testCtx(t, 30*time.Second)

	first, err := s.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Rollback(context.Background())
	mustExec(t, ctx, first, `INSERT INTO extensions (id, type, subject) VALUES ('early', 'pre', 'beamline.ext.pre.early.v1')`)

	second, err := s.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Rollback(context.Background())
	mustExec(t, ctx, second, `INSERT INTO extensions (id, type, subject) VALUES ('late', 'post', 'beamline.ext.post.late.v1')`)
	if got := counter(t, ctx, s.Pool); got != 0 {
		t.Fatalf("a revision was taken before any commit: counter %d", got)
	}
	if err := second.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := first.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	got := map[string]int64{}
	for _, c := range changeLog(t, ctx, s.Pool, 0) {
		got[c.ExtensionID] = c.Revision
	}
	if got["late"] != 1 || got["early"] != 2 {
		t.Fatalf("revisions %v: want late=1 (committed first), early=2", got)
	}
	if n := queryInt(t, ctx, s.Pool, `SELECT count(*) FROM registry_pending`); n != 0 {
		t.Fatalf("registry_pending keeps %d rows after commit", n)
	}
}

// writerResult is what one writer knows about the transactions it ran.
type writerResult struct {
	changed    []string // xids of committed transactions that changed registry data
	unchanged  []string // xids of committed transactions that changed nothing
	rolledBack []string // xids of transactions that did not commit
	failed     int      // transactions that failed on their own (deadlocks, FK races)
}

// workload runs randomized registry transactions for one writer.
type workload struct {
	w   int
	rng *rand.Rand
}

func (wl *workload) id() string {
	if wl.rng.IntN(4) == 0 {
		return fmt.Sprintf("shared-%d", wl.rng.IntN(6))
	}
	return fmt.Sprintf("w%d-%d", wl.w, wl.rng.IntN(12))
}

func (wl *workload) version() string  { return "v" + strconv.Itoa(1+wl.rng.IntN(5)) }
func (wl *workload) instance() string { return "i" + strconv.Itoa(wl.rng.IntN(3)) }

var extTypes = []string{"pre", "validator", "post", "provider"}

// op runs one random statement (or a few, for the multi-table ones) and reports whether
// it changed registry data. Every UPDATE it issues really changes the row, except the two
// kinds that must not count (same values, health check only).
func (wl *workload) op(ctx context.Context, tx pgx.Tx) (changed bool, err error) {
	exec := func(sql string, args ...any) error {
		tag, err := tx.Exec(ctx, sql, args...)
		if err == nil && tag.RowsAffected() > 0 {
			changed = true
		}
		return err
	}
	id := wl.id()
	switch p := wl.rng.IntN(100); {
	case p < 18: // create an extension, half the time with a version and an instance
		typ := extTypes[wl.rng.IntN(len(extTypes))]
		err = exec(`INSERT INTO extensions (id, type, subject, timeout_ms, retry, config, metadata)
			VALUES ($1, $2, 'beamline.ext.' || $2 || '.' || $1 || '.v1', $3, $4, jsonb_build_object('n', 0), '{"owner":"test"}')
			ON CONFLICT (id) DO NOTHING`, id, typ, 10+wl.rng.IntN(4991), wl.rng.IntN(4))
		if err == nil && wl.rng.IntN(2) == 0 {
			err = exec(`INSERT INTO extension_versions (id, version, subject, routing_rules)
				VALUES ($1, 'v1', 'beamline.ext.pre.' || $1 || '.v1', '{"tenant_id": ["t1", "t2"]}')
				ON CONFLICT DO NOTHING`, id)
			if err == nil {
				err = exec(`INSERT INTO extension_instances (extension_id, instance_id, subject, weight, health_status)
					VALUES ($1, 'i0', 'beamline.ext.pre.' || $1 || '.v1.i0', $2, 'healthy')
					ON CONFLICT DO NOTHING`, id, wl.rng.IntN(101))
			}
		}
	case p < 30: // update content
		err = exec(`UPDATE extensions SET
			timeout_ms = CASE WHEN timeout_ms >= 5000 THEN 10 ELSE timeout_ms + 1 END,
			config = jsonb_set(config, '{n}', to_jsonb(coalesce((config->>'n')::int, 0) + 1))
			WHERE id = $1`, id)
	case p < 38: // enable/disable
		err = exec(`UPDATE extensions SET enabled = NOT enabled WHERE id = $1`, id)
	case p < 42: // change the current version (keeps the previous one in extension_versions)
		err = exec(`UPDATE extensions SET
			version = 'v' || (substr(version, 2)::int % 5 + 1),
			subject = regexp_replace(subject, '\.v[0-9]+$', '.v' || (substr(version, 2)::int % 5 + 1))
			WHERE id = $1`, id)
	case p < 46:
		err = exec(`DELETE FROM extensions WHERE id = $1`, id)
	case p < 53:
		err = exec(`INSERT INTO extension_versions (id, version, subject, timeout_ms)
			SELECT $1, $2, 'beamline.ext.pre.' || $1 || '.' || $2, $3
			WHERE EXISTS (SELECT 1 FROM extensions WHERE id = $1)
			ON CONFLICT DO NOTHING`, id, wl.version(), 10+wl.rng.IntN(4991))
	case p < 58:
		err = exec(`UPDATE extension_versions SET
			routing_rules = CASE WHEN routing_rules = '{}' THEN '{"environment": "prod"}'::jsonb ELSE '{}' END,
			enabled = CASE WHEN $2 THEN NOT enabled ELSE enabled END
			WHERE id = $1`, id, wl.rng.IntN(2) == 0)
	case p < 61:
		err = exec(`DELETE FROM extension_versions WHERE id = $1 AND version = $2`, id, wl.version())
	case p < 69:
		err = exec(`INSERT INTO extension_instances (extension_id, instance_id, subject, weight)
			SELECT $1, $2, 'beamline.ext.pre.' || $1 || '.v1.' || $2, $3
			WHERE EXISTS (SELECT 1 FROM extensions WHERE id = $1)
			ON CONFLICT DO NOTHING`, id, wl.instance(), wl.rng.IntN(101))
	case p < 78:
		err = exec(`UPDATE extension_instances SET
			weight = (weight + 1) % 101,
			health_status = CASE health_status WHEN 'healthy' THEN 'degraded' WHEN 'degraded' THEN 'unhealthy'
				WHEN 'unhealthy' THEN 'unknown' ELSE 'healthy' END
			WHERE extension_id = $1 AND instance_id = $2`, id, wl.instance())
	case p < 82:
		err = exec(`UPDATE extension_instances SET enabled = NOT enabled WHERE extension_id = $1`, id)
	case p < 85:
		err = exec(`DELETE FROM extension_instances WHERE extension_id = $1 AND instance_id = $2`, id, wl.instance())
	case p < 89: // multi-row update over this writer's own extensions
		err = exec(`UPDATE extensions SET retry = (retry + 1) % 4 WHERE id LIKE $1`, fmt.Sprintf("w%d-%%", wl.w))
	case p < 94: // a health probe: not a registry change
		_, err = tx.Exec(ctx, `UPDATE extension_instances SET last_health_check = clock_timestamp() WHERE extension_id = $1`, id)
	case p < 98: // same values: not a change
		_, err = tx.Exec(ctx, `UPDATE extensions SET timeout_ms = timeout_ms, config = config WHERE id = $1`, id)
	default: // an invalid row: the statement fails and takes the transaction with it
		_, err = tx.Exec(ctx, `INSERT INTO extensions (id, type, subject) VALUES ($1, 'pre', 'beamline.ext.pre.*.v1')`, id+"-bad")
		if err == nil {
			err = errors.New("invalid subject was accepted")
		}
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.ConstraintName == "extensions_subject_nats_subject_ending_vn" {
			err = errExpected
		}
	}
	return changed, err
}

var errExpected = errors.New("expected failure")

// raceFailure tells the failures that random concurrent writers cause legitimately (a
// deadlock between two of them, a row inserted for an extension another writer has just
// deleted) from anything else, which fails the test.
func raceFailure(err error) bool {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return false
	}
	switch pe.Code {
	case "40P01": // deadlock_detected
		return true
	case "23503": // foreign_key_violation
		return pe.ConstraintName == "extension_versions_id_fkey" || pe.ConstraintName == "extension_instances_extension_id_fkey"
	}
	return false
}

// txn runs one transaction: 1-4 operations (some inside a savepoint that is rolled
// back), a small random delay before COMMIT, and a deliberate rollback now and then.
func (wl *workload) txn(ctx context.Context, conn *pgx.Conn, res *writerResult) error {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.Background())
	var xid string
	if err := tx.QueryRow(ctx, `SELECT pg_current_xact_id()::text`).Scan(&xid); err != nil {
		return err
	}
	changed := false
	for n := 1 + wl.rng.IntN(4); n > 0; n-- {
		if wl.rng.IntN(20) == 0 {
			// A change inside a savepoint that is rolled back does not count.
			sp, err := tx.Begin(ctx)
			if err != nil {
				return err
			}
			if _, err := wl.op(ctx, sp); err != nil {
				if !errors.Is(err, errExpected) && !raceFailure(err) {
					return err
				}
				res.rolledBack = append(res.rolledBack, xid)
				res.failed++
				return nil
			}
			if err := sp.Rollback(ctx); err != nil {
				return err
			}
			continue
		}
		c, err := wl.op(ctx, tx)
		if err != nil {
			if !errors.Is(err, errExpected) {
				if !raceFailure(err) {
					return err
				}
				res.failed++
			}
			res.rolledBack = append(res.rolledBack, xid)
			return nil
		}
		changed = changed || c
	}
	if wl.rng.IntN(10) == 0 {
		res.rolledBack = append(res.rolledBack, xid)
		return tx.Rollback(ctx)
	}
	// The workload's think time before COMMIT (not synchronisation).
	time.Sleep(time.Duration(wl.rng.IntN(2001)) * time.Microsecond)
	// READ COMMITTED writers never fail at COMMIT: the revision trigger waits, it does not
	// refuse.
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	if changed {
		res.changed = append(res.changed, xid)
	} else {
		res.unchanged = append(res.unchanged, xid)
	}
	return nil
}

// followerResult is what a change-log follower saw.
type followerResult struct {
	polls    map[int64]int   // revision -> the poll that delivered it
	rows     map[int64]int64 // revision -> change-log rows delivered
	last     int64
	err      error
	pollsRun int
}

// follow reads the change log the way the syncer does, waking up on notifications (or
// after a short poll interval) until stop is closed and it has caught up with target.
func follow(ctx context.Context, url string, stop <-chan struct{}, target *atomic.Int64) *followerResult {
	res := &followerResult{polls: map[int64]int{}, rows: map[int64]int64{}}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		res.err = err
		return res
	}
	defer conn.Close(context.Background())
	var ch string
	if err := conn.QueryRow(ctx, `SELECT registry_channel()`).Scan(&ch); err != nil {
		res.err = err
		return res
	}
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{ch}.Sanitize()); err != nil {
		res.err = err
		return res
	}
	for {
		stopped := false
		select {
		case <-stop:
			stopped = true
		default:
		}
		res.pollsRun++
		rows, err := conn.Query(ctx, `SELECT revision, seq FROM registry_change_log
			WHERE revision > $1 ORDER BY revision, seq`, res.last)
		if err != nil {
			res.err = err
			return res
		}
		prevRev, prevSeq := res.last, int64(0)
		for rows.Next() {
			var rev, seq int64
			if err := rows.Scan(&rev, &seq); err != nil {
				res.err = err
				return res
			}
			switch {
			case rev < prevRev || rev <= res.last:
				res.err = fmt.Errorf("poll %d: revision %d after revision %d (already seen up to %d)", res.pollsRun, rev, prevRev, res.last)
			case rev == prevRev && seq <= prevSeq:
				res.err = fmt.Errorf("poll %d: revision %d: seq %d after %d", res.pollsRun, rev, seq, prevSeq)
			}
			if res.err != nil {
				rows.Close()
				return res
			}
			if rev != prevRev {
				if p, seen := res.polls[rev]; seen {
					res.err = fmt.Errorf("revision %d delivered by poll %d and again by poll %d", rev, p, res.pollsRun)
					rows.Close()
					return res
				}
				res.polls[rev] = res.pollsRun
			}
			res.rows[rev]++
			prevRev, prevSeq = rev, seq
		}
		if err := rows.Err(); err != nil {
			res.err = err
			return res
		}
		res.last = prevRev
		if stopped && res.last >= target.Load() {
			return res
		}
		// Sleep until the next commit is announced; the timeout is only the poll interval
		// of a syncer that does not trust notifications.
		wctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
		_, err = conn.WaitForNotification(wctx)
		cancel()
		if err != nil && ctx.Err() != nil {
			res.err = fmt.Errorf("follower stopped at revision %d (target %d): %w", res.last, target.Load(), ctx.Err())
			return res
		}
	}
}

// collectNotifications records every notification payload until it has seen target.
func collectNotifications(ctx context.Context, url string, ready chan<- error, stop <-chan struct{}, target *atomic.Int64) ([]int64, error) {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		ready <- err
		return nil, err
	}
	defer conn.Close(context.Background())
	var ch string
	if err := conn.QueryRow(ctx, `SELECT registry_channel()`).Scan(&ch); err != nil {
		ready <- err
		return nil, err
	}
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{ch}.Sanitize()); err != nil {
		ready <- err
		return nil, err
	}
	ready <- nil
	var got []int64
	for {
		select {
		case <-stop:
			if len(got) > 0 && got[len(got)-1] >= target.Load() {
				return got, nil
			}
		default:
		}
		wctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		n, err := conn.WaitForNotification(wctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return got, fmt.Errorf("listener: %d notifications, target %d: %w", len(got), target.Load(), ctx.Err())
			}
			continue
		}
		if n.Channel != ch {
			return got, fmt.Errorf("notification on %q, listening on %q", n.Channel, ch)
		}
		rev, err := strconv.ParseInt(n.Payload, 10, 64)
		if err != nil {
			return got, fmt.Errorf("payload %q: %w", n.Payload, err)
		}
		got = append(got, rev)
	}
}

// TestConcurrentWriters: many writers committing randomized multi-table transactions get
// gap-free revisions in commit order, one per committed change, one notification each,
// and a change log that a follower can read incrementally and replay to the exact content.
func TestConcurrentWriters(t *testing.T) {
	t.Parallel()
	const (
		writers      = 8
		txnPerWriter = 260
	)
	s := newSchema(t)
	ctx := testCtx(t, 120*time.Second)
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)

	stop := make(chan struct{})
	var target atomic.Int64
	target.Store(1 << 62)

	type notifResult struct {
		revs []int64
		err  error
	}
	ready := make(chan error, 1)
	notifDone := make(chan notifResult, 1)
	go func() {
		revs, err := collectNotifications(ctx, s.URL, ready, stop, &target)
		notifDone <- notifResult{revs, err}
	}()
	if err := <-ready; err != nil {
		t.Fatalf("listener: %v", err)
	}
	followDone := make(chan *followerResult, 1)
	go func() { followDone <- follow(ctx, s.URL, stop, &target) }()

	results := make([]writerResult, writers)
	errs := make([]error, writers)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			cfg, err := pgx.ParseConfig(s.URL)
			if err != nil {
				errs[w] = err
				return
			}
			// Random operations on shared rows deadlock now and then: detect it quickly.
			cfg.RuntimeParams["deadlock_timeout"] = "20ms"
			conn, err := pgx.ConnectConfig(ctx, cfg)
			if err != nil {
				errs[w] = err
				return
			}
			defer conn.Close(context.Background())
			wl := &workload{w: w, rng: rand.New(rand.NewPCG(uint64(seed), uint64(w)))}
			for range txnPerWriter {
				if err := wl.txn(ctx, conn, &results[w]); err != nil {
					errs[w] = err
					return
				}
			}
		})
	}
	wg.Wait()
	for w, err := range errs {
		if err != nil {
			close(stop)
			t.Fatalf("writer %d: %v", w, err)
		}
	}

	var changed, unchanged, rolledBack []string
	failed := 0
	for _, r := range results {
		changed = append(changed, r.changed...)
		unchanged = append(unchanged, r.unchanged...)
		rolledBack = append(rolledBack, r.rolledBack...)
		failed += r.failed
	}
	n := int64(len(changed))
	total := len(changed) + len(unchanged) + len(rolledBack)
	t.Logf("%d transactions: %d committed changes, %d committed no-ops, %d rolled back (%d of them failed on their own)",
		total, len(changed), len(unchanged), len(rolledBack), failed)
	if total < 2000 || len(rolledBack) == 0 || len(unchanged) == 0 || n < 1000 {
		t.Fatalf("workload too small to mean anything: %d transactions, %d changes, %d no-ops, %d rollbacks",
			total, n, len(unchanged), len(rolledBack))
	}
	target.Store(n)
	close(stop)

	// Revisions are exactly 1..N, one per committed transaction that changed something.
	rows, err := s.Pool.Query(ctx, `SELECT revision, xid::text, changes FROM registry_revisions ORDER BY revision`)
	if err != nil {
		t.Fatal(err)
	}
	type revRow struct {
		Revision int64
		Xid      string
		Changes  int64
	}
	revs, err := pgx.CollectRows(rows, pgx.RowToStructByPos[revRow])
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(revs)) != n {
		t.Errorf("%d revisions for %d committed changing transactions", len(revs), n)
	}
	byXid := map[string]int64{}
	for i, r := range revs {
		if r.Revision != int64(i+1) {
			t.Fatalf("revision #%d is %d: revisions are not 1..N", i+1, r.Revision)
		}
		byXid[r.Xid] = r.Revision
	}
	for _, x := range changed {
		if _, ok := byXid[x]; !ok {
			t.Errorf("committed change in transaction %s has no revision", x)
		}
	}
	for _, x := range append(slices.Clone(unchanged), rolledBack...) {
		if r, ok := byXid[x]; ok {
			t.Errorf("transaction %s changed nothing or rolled back but has revision %d", x, r)
		}
	}
	if got := counter(t, ctx, s.Pool); got != n {
		t.Errorf("registry_counter %d, want %d", got, n)
	}
	if left := queryInt(t, ctx, s.Pool, `SELECT count(*) FROM registry_pending`); left != 0 {
		t.Errorf("registry_pending keeps %d rows", left)
	}

	// The follower saw every revision once, never going backwards, each one whole.
	fr := <-followDone
	if fr.err != nil {
		t.Fatalf("follower: %v", fr.err)
	}
	t.Logf("follower: %d polls", fr.pollsRun)
	if int64(len(fr.polls)) != n {
		t.Errorf("follower saw %d revisions, want %d", len(fr.polls), n)
	}
	for _, r := range revs {
		if _, ok := fr.polls[r.Revision]; !ok {
			t.Errorf("follower never saw revision %d", r.Revision)
		} else if fr.rows[r.Revision] != r.Changes {
			t.Errorf("revision %d: follower got %d rows, the revision has %d", r.Revision, fr.rows[r.Revision], r.Changes)
		}
	}

	// One notification per revision, in order.
	nr := <-notifDone
	if nr.err != nil {
		t.Fatalf("%v", nr.err)
	}
	if int64(len(nr.revs)) != n {
		t.Errorf("%d notifications for %d revisions", len(nr.revs), n)
	}
	for i, r := range nr.revs {
		if r != int64(i+1) {
			t.Fatalf("notification #%d carries revision %d, want %d", i+1, r, i+1)
		}
	}

	// Replaying the change log from empty gives exactly the final content.
	want := newRegistry()
	want.replay(t, changeLog(t, ctx, s.Pool, 0))
	got := readRegistry(t, ctx, s.Pool)
	if d := want.diff(got); d != "" {
		t.Fatalf("replayed change log differs from the tables:\n%s", d)
	}
	t.Logf("final content: %d extensions, %d versions, %d instances",
		len(got.Extensions), len(got.Versions), len(got.Instances))
	if len(got.Extensions) == 0 || len(got.Versions) == 0 || len(got.Instances) == 0 {
		t.Fatalf("workload left an empty table; the replay comparison is too weak")
	}
}
