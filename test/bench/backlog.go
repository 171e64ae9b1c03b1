package main

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/beamline/registry-syncer/protocol"
)

// BacklogRun is one restart of the syncer after a backlog built up while it was stopped.
type BacklogRun struct {
	Window    int     `json:"publish_window"`
	Revisions int64   `json:"revisions"`
	FromRev   int64   `json:"from_revision"`
	ToRev     int64   `json:"to_revision"`
	BuildPerS float64 `json:"backlog_commits_per_s"` // how fast the backlog was committed
	// PublishPerS: revisions per second between the stream timestamps of the first and
	// the last stored delta of the backlog (the publishing itself).
	PublishPerS float64 `json:"publish_revisions_per_s"`
	// RestartS: from starting the process to its last published revision reaching the
	// backlog's end (start-up, restore from the streams, catch-up).
	RestartS  float64 `json:"restart_to_caught_up_s"`
	PeakRSSMB float64 `json:"syncer_peak_rss_mb"`
}

// BacklogResult: a syncer restarted after an outage publishes the revisions committed
// meanwhile; once as before pipelining (EXTENSION_REGISTRY_PUBLISH_WINDOW=1: store one
// delta, wait for its acknowledgement, announce, next) and once with the default window,
// in the same run, on the same registry.
type BacklogResult struct {
	Extensions     int         `json:"extensions"`
	Sequential     *BacklogRun `json:"sequential"`
	Pipelined      *BacklogRun `json:"pipelined"`
	Ratio          float64     `json:"pipelined_vs_sequential"`
	ChecksumsEqual bool        `json:"late_client_checksum_equal"`
}

func runBacklog(ctx context.Context, e *env, r *Results) error {
	p := e.opts.plan
	reg, err := e.newRegistry(ctx, "backlog", p.Registry)
	if err != nil {
		return err
	}
	admin, err := revisionBuilder(ctx, e, reg, "bench_backlog", `jsonb_build_object('seq', k)`)
	if err != nil {
		return err
	}
	nc, err := e.connectNATS("bench-backlog")
	if err != nil {
		return err
	}
	read := &protocol.Reader{NC: nc, Names: reg.names}
	res := &BacklogResult{Extensions: p.Registry}
	r.Backlog = res
	syncer := reg.syncer
	var seq int64
	for i, run := range []struct {
		window int
		n      int64
	}{{1, p.BacklogSequential}, {0, p.Backlog}} {
		// The syncer has published everything; stop it, commit the backlog, restart it.
		from, err := counter(ctx, admin)
		if err != nil {
			return err
		}
		if err := waitPublished(ctx, syncer, from, time.Minute); err != nil {
			return err
		}
		syncer.stop()
		t := time.Now()
		if _, err := admin.Exec(ctx, `CALL bench_backlog($1, $2, $3)`, run.n, reg.ids, seq); err != nil {
			return fmt.Errorf("build the backlog: %w", err)
		}
		seq += run.n
		build := time.Since(t)
		to, err := counter(ctx, admin)
		if err != nil {
			return err
		}
		br := &BacklogRun{Window: run.window, Revisions: to - from, FromRev: from, ToRev: to,
			BuildPerS: round1(float64(to-from) / build.Seconds())}
		var env []string
		if run.window > 0 {
			env = append(env, "EXTENSION_REGISTRY_PUBLISH_WINDOW="+strconv.Itoa(run.window))
		} else {
			br.Window = 256 // the default
		}
		e.logf("backlog: %d revisions committed in %s (%.0f/s) with the syncer stopped; restarting it (publish window %d)",
			br.Revisions, build.Round(time.Millisecond), br.BuildPerS, br.Window)
		start := time.Now()
		if syncer, err = e.startSyncerWith(ctx, fmt.Sprintf("backlog-%d", i), reg.url, reg.prefix, 10*time.Minute, env); err != nil {
			return err
		}
		if err := waitPublished(ctx, syncer, to, 10*time.Minute); err != nil {
			return err
		}
		br.RestartS = round1(time.Since(start).Seconds())
		first, err := storedAt(ctx, read, from+1)
		if err != nil {
			return err
		}
		last, err := storedAt(ctx, read, to)
		if err != nil {
			return err
		}
		if span := last.Sub(first); span > 0 {
			br.PublishPerS = round1(float64(to-from-1) / span.Seconds())
		}
		if hwm, err := syncer.procStatus("VmHWM"); err == nil {
			br.PeakRSSMB = round1(mb(hwm))
		}
		e.logf("backlog: %d revisions published at %.0f/s (stream timestamps), caught up %.1f s after the restart, peak RSS %.0f MB",
			br.Revisions, br.PublishPerS, br.RestartS, br.PeakRSSMB)
		if run.window == 1 {
			res.Sequential = br
		} else {
			res.Pipelined = br
		}
	}
	if res.Sequential != nil && res.Pipelined != nil && res.Sequential.PublishPerS > 0 {
		res.Ratio = round1(res.Pipelined.PublishPerS / res.Sequential.PublishPerS)
	}
	res.ChecksumsEqual, err = lateClientAgrees(ctx, e, reg, admin, "bench-backlog-client")
	return err
}

// waitPublished waits until the syncer's last published revision is at least rev.
func waitPublished(ctx context.Context, p *syncerProc, rev int64, within time.Duration) error {
	var last float64
	var merr error
	if waitUntil(ctx, within, func() bool {
		m, err := p.metrics(ctx)
		if err != nil {
			merr = err
			return false
		}
		last = m["registry_syncer_last_published_revision"]
		return int64(last) >= rev
	}) {
		return nil
	}
	return fmt.Errorf("syncer %s: published revision %.0f, not %d, within %s (%v)", p.name, last, rev, within, cmpErr(ctx.Err(), merr))
}

// storedAt returns when the stream stored the delta of rev (its Nats-Time-Stamp).
func storedAt(ctx context.Context, read *protocol.Reader, rev int64) (time.Time, error) {
	st, err := read.Last(ctx, read.Names.DeltaStream, read.Names.DeltaSubject(rev))
	if err != nil {
		return time.Time{}, fmt.Errorf("stored delta %d: %w", rev, err)
	}
	ts, err := time.Parse(time.RFC3339Nano, st.Header.Get(nats.JSTimeStamp))
	if err != nil {
		return time.Time{}, fmt.Errorf("stored delta %d: timestamp %q: %w", rev, st.Header.Get(nats.JSTimeStamp), err)
	}
	return ts, nil
}
