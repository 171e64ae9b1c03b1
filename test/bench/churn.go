package main

import (
	"context"
	"fmt"
	"time"
)

// ChurnResult: the memory of a long-running syncer. A registry of ChurnExtensions takes
// Churn one-row revisions while the syncer runs and publishes them (the delta history, the
// snapshots written on the way, the heap's headroom all have had time to reach their
// bounds); then the `syncer run` process's memory is read.
type ChurnResult struct {
	Extensions int     `json:"extensions"`
	Revisions  int64   `json:"revisions"`
	CommitPerS float64 `json:"commits_per_s"`
	// Of the syncer process after the last revision is published: VmHWM (its peak) and
	// VmRSS (now), bytes.
	SyncerPeakRSS int64 `json:"syncer_peak_rss_bytes"`
	SyncerRSS     int64 `json:"syncer_rss_bytes"`
	// Its gauges then: the delta history's bytes and deltas.
	HistoryBytes  float64 `json:"history_bytes"`
	HistoryDeltas float64 `json:"history_deltas"`
	// The syncer's own Go runtime figures (/metrics): heap in use and what the process
	// has from the OS.
	HeapInuse float64 `json:"go_heap_inuse_bytes"`
	GoSys     float64 `json:"go_sys_bytes"`
	// A late client gets the database's content.
	ChecksumsEqual bool `json:"late_client_checksum_equal"`
}

func runChurn(ctx context.Context, e *env, r *Results) error {
	p := e.opts.plan
	reg, err := e.newRegistry(ctx, "churn", p.ChurnExtensions)
	if err != nil {
		return err
	}
	admin, err := revisionBuilder(ctx, e, reg, "bench_churn", `jsonb_build_object('churn', k, 'note', 'revision ' || k)`)
	if err != nil {
		return err
	}
	res := &ChurnResult{Extensions: p.ChurnExtensions}
	r.Churn = res
	from, err := counter(ctx, admin)
	if err != nil {
		return err
	}
	// Committed in slices so that the syncer publishes while the churn goes on.
	start := time.Now()
	const slice = 5000
	for done := int64(0); done < p.Churn; {
		n := min(slice, p.Churn-done)
		if _, err := admin.Exec(ctx, `CALL bench_churn($1, $2, $3)`, n, reg.ids, done); err != nil {
			return fmt.Errorf("churn: %w", err)
		}
		done += n
	}
	to, err := counter(ctx, admin)
	if err != nil {
		return err
	}
	res.Revisions = to - from
	res.CommitPerS = round1(float64(res.Revisions) / time.Since(start).Seconds())
	if err := waitPublished(ctx, reg.syncer, to, 5*time.Minute); err != nil {
		return err
	}
	if res.SyncerPeakRSS, err = reg.syncer.procStatus("VmHWM"); err != nil {
		return err
	}
	if res.SyncerRSS, err = reg.syncer.procStatus("VmRSS"); err != nil {
		return err
	}
	m, err := reg.syncer.metrics(ctx)
	if err != nil {
		return err
	}
	res.HistoryBytes, res.HistoryDeltas = m["registry_syncer_history_bytes"], m["registry_syncer_history_deltas"]
	res.HeapInuse, res.GoSys = m["go_memstats_heap_inuse_bytes"], m["go_memstats_sys_bytes"]
	e.logf("churn: %d revisions at %.0f/s on %d extensions; syncer peak RSS %.1f MB, RSS %.1f MB (heap in use %.1f MB, Go sys %.1f MB, history %.1f MB in %.0f deltas)",
		res.Revisions, res.CommitPerS, res.Extensions, mb(res.SyncerPeakRSS), mb(res.SyncerRSS), res.HeapInuse/(1<<20), res.GoSys/(1<<20),
		res.HistoryBytes/(1<<20), res.HistoryDeltas)

	res.ChecksumsEqual, err = lateClientAgrees(ctx, e, reg, admin, "bench-churn-client")
	return err
}
