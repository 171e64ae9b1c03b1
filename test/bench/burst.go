package main

import (
	"context"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/beamline/registry-syncer/cache"
	"github.com/beamline/registry-syncer/test/harness"
)

// CommitRate compares single-row UPDATE commits per second on the registry table
// (triggers, change log, commit-ordered revision, NOTIFY) and on a copy of it without
// triggers (CREATE TABLE bare (LIKE extensions INCLUDING ALL)), same cluster, same
// writers; and, to tell the NOTIFY's share, the bare table with one pg_notify per
// transaction (PostgreSQL serialises the commits of notifying transactions).
type CommitRate struct {
	Writers       int     `json:"writers"`
	Seconds       float64 `json:"seconds_each"`
	Registry      float64 `json:"registry_commits_per_s"`
	Bare          float64 `json:"bare_commits_per_s"`
	BareNotify    float64 `json:"bare_with_notify_commits_per_s"`
	PercentOfBare float64 `json:"registry_percent_of_bare"`
	Errors        int     `json:"errors"`
	// What the writers' backends were doing (pg_stat_activity sampled every 10 ms):
	// share of samples per wait event; "CPU" is active without a wait event, "client" is
	// idle (waiting for the benchmark to send the next statement).
	RegistryWaits   map[string]float64 `json:"registry_wait_events_pct"`
	BareWaits       map[string]float64 `json:"bare_wait_events_pct"`
	BareNotifyWaits map[string]float64 `json:"bare_with_notify_wait_events_pct"`
	// Time spent inside the registry's trigger functions per commit (track_functions).
	TriggerMSPerCommit map[string]float64 `json:"registry_trigger_ms_per_commit"`
}

// writeSQL is the single-row UPDATE of each variant.
func writeSQL(variant string) string {
	switch variant {
	case "bare":
		return `UPDATE bare SET metadata = jsonb_build_object('seq', $1::bigint) WHERE id = $2`
	case "bare+notify":
		return `WITH u AS (UPDATE bare SET metadata = jsonb_build_object('seq', $1::bigint) WHERE id = $2 RETURNING id)
			SELECT pg_notify('bench_bare', u.id) FROM u`
	}
	return updateSeq
}

// hammer runs writers as fast as they can for d; each writer updates its own 10 rows. It
// returns the commits, errors and the time the last COMMIT returned.
func hammer(ctx context.Context, conns []*pgx.Conn, variant string, ids []string, seq *atomic.Int64, d time.Duration) (commits int64, errs int, last int64) {
	sql := writeSQL(variant)
	var n, ne, lastAt atomic.Int64
	var wg sync.WaitGroup
	deadline := time.Now().Add(d)
	for w, conn := range conns {
		wg.Go(func() {
			var k int
			for time.Now().Before(deadline) && ctx.Err() == nil {
				id := ids[(w*10+k%10)%len(ids)]
				k++
				if _, err := conn.Exec(ctx, sql, seq.Add(1), id); err != nil {
					ne.Add(1)
					continue
				}
				t := now()
				n.Add(1)
				for {
					old := lastAt.Load()
					if t <= old || lastAt.CompareAndSwap(old, t) {
						break
					}
				}
			}
		})
	}
	wg.Wait()
	return n.Load(), int(ne.Load()), lastAt.Load()
}

// sampleWaits samples the wait events of the bench-writer backends every 10 ms until
// stop is closed, and returns the number of samples per event: "CPU" is active without
// a wait event, "client" is idle (waiting for the benchmark's next statement).
func sampleWaits(ctx context.Context, conn *pgx.Conn, stop <-chan struct{}) map[string]int {
	counts := map[string]int{}
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return counts
		case <-t.C:
		}
		rows, err := conn.Query(ctx, `SELECT CASE WHEN state = 'active' THEN coalesce(wait_event_type || ':' || wait_event, 'CPU')
			WHEN state = 'idle' THEN 'client' ELSE state END FROM pg_stat_activity WHERE application_name = 'bench-writer'`)
		if err != nil {
			continue
		}
		for rows.Next() {
			var w string
			if rows.Scan(&w) == nil {
				counts[w]++
			}
		}
		rows.Close()
	}
}

func createBare(ctx context.Context, conn *pgx.Conn) error {
	for _, q := range []string{
		`DROP TABLE IF EXISTS bare`,
		`CREATE TABLE bare (LIKE extensions INCLUDING ALL)`,
		`INSERT INTO bare SELECT * FROM extensions`,
		`VACUUM ANALYZE bare`,
		`VACUUM ANALYZE extensions`,
	} {
		if _, err := conn.Exec(ctx, q); err != nil {
			return fmt.Errorf("%s: %w", q, err)
		}
	}
	return nil
}

// commitRate measures the variants for d each on url's schema (no syncer running).
func commitRate(ctx context.Context, e *env, url string, ids []string, writers int, d time.Duration) (*CommitRate, error) {
	conns, err := e.connectPGs(ctx, url, writers)
	if err != nil {
		return nil, err
	}
	admin, err := e.connectPG(ctx, url)
	if err != nil {
		return nil, err
	}
	for _, c := range conns {
		if _, err := c.Exec(ctx, `SET track_functions = 'all'`); err != nil {
			return nil, err
		}
	}
	if _, err := admin.Exec(ctx, `SELECT pg_stat_reset()`); err != nil {
		return nil, err
	}
	var seq atomic.Int64
	seq.Store(1_000_000_000)
	cr := &CommitRate{Writers: writers, Seconds: d.Seconds()}
	// The variants alternate in one-second slices, so that all see the same machine.
	rounds := max(1, int(d/time.Second))
	slice := d / time.Duration(rounds)
	variants := []string{"registry", "bare", "bare+notify"}
	commits := map[string]int64{}
	waits := map[string]map[string]int{}
	for range rounds {
		for _, v := range variants {
			stop := make(chan struct{})
			done := make(chan map[string]int, 1)
			go func() { done <- sampleWaits(ctx, admin, stop) }()
			n, ne, _ := hammer(ctx, conns, v, ids, &seq, slice)
			close(stop)
			if waits[v] == nil {
				waits[v] = map[string]int{}
			}
			for k, c := range <-done {
				waits[v][k] += c
			}
			commits[v] += n
			cr.Errors += ne
		}
	}
	rate := func(v string) float64 { return round1(float64(commits[v]) / d.Seconds()) }
	cr.Registry, cr.Bare, cr.BareNotify = rate("registry"), rate("bare"), rate("bare+notify")
	cr.RegistryWaits, cr.BareWaits, cr.BareNotifyWaits = shares(waits["registry"]), shares(waits["bare"]), shares(waits["bare+notify"])
	cr.PercentOfBare = round1(100 * cr.Registry / cr.Bare)
	if cr.TriggerMSPerCommit, err = triggerTimes(ctx, conns, admin, commits["registry"]); err != nil {
		return nil, err
	}
	return cr, ctx.Err()
}

// shares turns sample counts into percentages.
func shares(counts map[string]int) map[string]float64 {
	total := 0
	for _, c := range counts {
		total += c
	}
	out := map[string]float64{}
	for k, c := range counts {
		out[k] = round1(100 * float64(c) / float64(max(total, 1)))
	}
	return out
}

// triggerTimes returns the time spent in each registry function per commit (self time,
// so nested calls are not counted twice), from pg_stat_user_functions.
func triggerTimes(ctx context.Context, writers []*pgx.Conn, admin *pgx.Conn, commits int64) (map[string]float64, error) {
	for _, c := range writers {
		if _, err := c.Exec(ctx, `SELECT pg_stat_force_next_flush()`); err != nil {
			return nil, err
		}
		if _, err := c.Exec(ctx, `SET track_functions = 'none'`); err != nil {
			return nil, err
		}
	}
	time.Sleep(100 * time.Millisecond)
	if _, err := admin.Exec(ctx, `SELECT pg_stat_clear_snapshot()`); err != nil {
		return nil, err
	}
	rows, err := admin.Query(ctx, `SELECT funcname, self_time FROM pg_stat_user_functions WHERE schemaname = current_schema()`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]float64{}
	var total float64
	for rows.Next() {
		var name string
		var self float64
		if err := rows.Scan(&name, &self); err != nil {
			return nil, err
		}
		per := self / float64(max(commits, 1))
		out[name] = math.Round(per*1000) / 1000
		total += per
	}
	out["total"] = math.Round(total*1000) / 1000
	return out, rows.Err()
}

// BurstClient is what one router client saw during the burst.
type BurstClient struct {
	Installs      int64 `json:"installs"` // OnChange calls
	DeltasApplied int64 `json:"deltas_applied"`
	Resyncs       int64 `json:"resyncs"`
	Rejections    int64 `json:"rejections"`
	FinalRevision int64 `json:"final_revision"`
}

// BurstResult: writers as fast as they can, with the syncer and clients following.
type BurstResult struct {
	Writers            int           `json:"writers"`
	Clients            int           `json:"clients"`
	Seconds            float64       `json:"seconds"`
	Commits            int64         `json:"commits"`
	CommitsPerS        float64       `json:"commits_per_s"`
	WriteErrors        int           `json:"write_errors"`
	BareCommitsPerS    float64       `json:"bare_commits_per_s"`
	BareSeconds        float64       `json:"bare_seconds"`
	BareBeforePerS     float64       `json:"bare_before_burst_commits_per_s"`
	BareAfterPerS      float64       `json:"bare_after_burst_commits_per_s"`
	PercentOfBare      float64       `json:"percent_of_bare"`
	RevisionsCommitted int64         `json:"revisions_committed"`
	RevisionsPublished int64         `json:"revisions_published"`
	SnapshotWrites     int64         `json:"snapshot_writes"`
	CatchUpMS          float64       `json:"last_commit_to_all_clients_ms"`
	AllCaughtUp        bool          `json:"all_clients_caught_up"`
	FinalRevision      int64         `json:"final_revision"`
	ChecksumsEqual     bool          `json:"checksums_equal"`
	PerClient          []BurstClient `json:"per_client"`
	// Without the syncer and clients (stopped), durable cluster: the triggers' own cost.
	DurableIsolated *CommitRate `json:"durable_isolated"`
	// A second cluster with fsync off: no flush to wait for, so the commit-order lock no
	// longer serialises flushes.
	NonDurable *CommitRate `json:"non_durable"`
}

func clientCounters(c *clientT) (applied, resyncs, rejections int64) {
	reg := prometheus.NewRegistry()
	if err := reg.Register(c.Collector()); err != nil {
		return
	}
	mfs, err := reg.Gather()
	if err != nil {
		return
	}
	for _, mf := range mfs {
		if len(mf.GetMetric()) == 0 || mf.GetMetric()[0].GetCounter() == nil {
			continue
		}
		v := int64(mf.GetMetric()[0].GetCounter().GetValue())
		switch mf.GetName() {
		case "registry_client_deltas_applied_total":
			applied = v
		case "registry_client_resyncs_total":
			resyncs = v
		case "registry_client_rejections_total":
			rejections = v
		}
	}
	return
}

func runBurst(ctx context.Context, e *env, r *Results) error {
	p := e.opts.plan
	reg, err := e.newRegistry(ctx, "burst", p.Registry)
	if err != nil {
		return err
	}
	admin, err := e.connectPG(ctx, reg.url)
	if err != nil {
		return err
	}
	if err := createBare(ctx, admin); err != nil {
		return err
	}
	type watch struct {
		installs, lastAt, rev atomic.Int64
	}
	clients := make([]*clientT, p.BurstClients)
	watches := make([]*watch, p.BurstClients)
	for i := range clients {
		w := &watch{}
		watches[i] = w
		nc, err := e.connectNATS(fmt.Sprintf("bench-burst-client-%d", i))
		if err != nil {
			return err
		}
		c, err := startClient(ctx, nc, reg.prefix, func(_, next *cache.Snapshot, _ []string) {
			w.lastAt.Store(now())
			w.rev.Store(next.Revision())
			w.installs.Add(1)
		})
		if err != nil {
			return err
		}
		e.onClose(c.Stop)
		clients[i] = c
	}
	for _, w := range watches {
		w.installs.Store(0)
	}
	conns, err := e.connectPGs(ctx, reg.url, p.BurstWriters)
	if err != nil {
		return err
	}
	before, err := reg.syncer.metrics(ctx)
	if err != nil {
		return err
	}
	revBefore, err := counter(ctx, admin)
	if err != nil {
		return err
	}
	var seq atomic.Int64
	res := &BurstResult{Writers: p.BurstWriters, Clients: p.BurstClients, Seconds: p.Burst.Seconds()}
	r.Burst = res
	// The bare table's rate is measured half before and half after the burst (same
	// writers, same cluster, syncer idle), so that it brackets the machine's load.
	bareBefore, _, _ := hammer(ctx, conns, "bare", reg.ids, &seq, p.Bare/2)
	commits, errs, lastCommit := hammer(ctx, conns, "registry", reg.ids, &seq, p.Burst)
	res.Commits, res.WriteErrors = commits, errs
	res.CommitsPerS = round1(float64(commits) / p.Burst.Seconds())
	final, err := counter(ctx, admin)
	if err != nil {
		return err
	}
	res.FinalRevision, res.RevisionsCommitted = final, final-revBefore
	res.AllCaughtUp = waitUntil(ctx, 2*time.Minute, func() bool {
		for _, w := range watches {
			if w.rev.Load() < final {
				return false
			}
		}
		return true
	})
	var lastClient int64
	for _, w := range watches {
		lastClient = max(lastClient, w.lastAt.Load())
	}
	if res.AllCaughtUp {
		res.CatchUpMS = ms(lastClient - lastCommit)
	}
	e.logf("burst: %d commits in %s (%.0f/s) by %d writers; last client caught up %.1f ms after the last commit",
		commits, p.Burst, res.CommitsPerS, p.BurstWriters, res.CatchUpMS)
	// Read the counters once the syncer has published the final revision and its
	// coalesced snapshot writer has written it (so the last write is counted).
	var after map[string]float64
	var merr error
	waitUntil(ctx, time.Minute, func() bool {
		after, merr = reg.syncer.metrics(ctx)
		return merr == nil && int64(after["registry_syncer_last_published_revision"]) >= final &&
			int64(after["registry_syncer_snapshot_revision"]) >= final
	})
	if merr != nil {
		return merr
	}
	res.RevisionsPublished = int64(after["registry_syncer_revisions_published_total"] - before["registry_syncer_revisions_published_total"])
	res.SnapshotWrites = int64(after["registry_syncer_snapshot_writes_total"] - before["registry_syncer_snapshot_writes_total"])
	_, _, ok, err := verifyClients(ctx, admin, clients, 30*time.Second)
	if err != nil {
		return err
	}
	res.ChecksumsEqual = ok
	for i, c := range clients {
		bc := BurstClient{Installs: watches[i].installs.Load(), FinalRevision: c.Revision()}
		bc.DeltasApplied, bc.Resyncs, bc.Rejections = clientCounters(c)
		res.PerClient = append(res.PerClient, bc)
	}

	// The same writers on the same table without triggers, same cluster, syncer idle.
	bareAfter, _, _ := hammer(ctx, conns, "bare", reg.ids, &seq, p.Bare/2)
	res.BareSeconds = p.Bare.Seconds()
	res.BareCommitsPerS = round1(float64(bareBefore+bareAfter) / p.Bare.Seconds())
	res.BareBeforePerS = round1(float64(bareBefore) / (p.Bare / 2).Seconds())
	res.BareAfterPerS = round1(float64(bareAfter) / (p.Bare / 2).Seconds())
	res.PercentOfBare = round1(100 * res.CommitsPerS / res.BareCommitsPerS)
	e.logf("burst: bare table %.0f commits/s: registry reaches %.1f%% of bare", res.BareCommitsPerS, res.PercentOfBare)

	// The triggers alone: syncer and clients stopped.
	for _, c := range clients {
		c.Stop()
	}
	reg.syncer.stop()
	res.DurableIsolated, err = commitRate(ctx, e, reg.url, reg.ids, p.BurstWriters, p.Isolated)
	if err != nil {
		return err
	}
	e.logf("burst: isolated, fsync on: registry %.0f/s, bare %.0f/s (%.1f%%)", res.DurableIsolated.Registry, res.DurableIsolated.Bare, res.DurableIsolated.PercentOfBare)

	// fsync off: a second, non-durable cluster.
	pg2, err := harness.StartPostgres(harness.PGOptions{Durable: false})
	if err != nil {
		return fmt.Errorf("start non-durable postgres: %w", err)
	}
	e.onClose(pg2.Stop)
	url2, err := createSchema(ctx, pg2, "bench_burst", true)
	if err != nil {
		return err
	}
	conn2, err := e.connectPG(ctx, url2)
	if err != nil {
		return err
	}
	if _, err := importSynthetic(ctx, conn2, "extensions", cache.Synthetic(p.Registry)); err != nil {
		return err
	}
	if err := createBare(ctx, conn2); err != nil {
		return err
	}
	res.NonDurable, err = commitRate(ctx, e, url2, reg.ids, p.BurstWriters, p.Isolated)
	if err != nil {
		return err
	}
	e.logf("burst: isolated, fsync off: registry %.0f/s, bare %.0f/s (%.1f%%)", res.NonDurable.Registry, res.NonDurable.Bare, res.NonDurable.PercentOfBare)
	if !ok {
		return fmt.Errorf("clients do not hold the database's content after the burst")
	}
	if res.RevisionsPublished != res.RevisionsCommitted {
		return fmt.Errorf("%d revisions committed, %d published", res.RevisionsCommitted, res.RevisionsPublished)
	}
	return nil
}
