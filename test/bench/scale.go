package main

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"sync/atomic"
	"time"

	"github.com/beamline/registry-syncer/cache"
	"github.com/beamline/registry-syncer/protocol"
)

// ScaleResult: a large registry.
type ScaleResult struct {
	Extensions int `json:"extensions"`
	Versions   int `json:"versions"`
	Instances  int `json:"instances"`
	// COPY of the three tables in one transaction, BEGIN -> COMMIT returned, with the
	// syncer running.
	ImportMS float64 `json:"import_ms"`
	// The import's COMMIT -> an already running client has the new revision (a delta that
	// large is published as a snapshot plus a resync delta).
	ImportToClientMS float64 `json:"import_commit_to_client_ms"`
	// POST /admin/sync round trips (full reconcile: read everything, compare, no drift).
	ReconcileMS       []float64 `json:"reconcile_ms"`
	ReconcileMedianMS float64   `json:"reconcile_median_ms"`
	SnapshotBytes     int       `json:"snapshot_bytes"`
	SnapshotChunks    int       `json:"snapshot_chunks"`
	// A new client: New + Start until its first snapshot is installed.
	BootstrapMS       []float64 `json:"bootstrap_ms"`
	BootstrapMedianMS float64   `json:"bootstrap_median_ms"`
	// HeapAlloc after GC with one more client holding the snapshot, minus before.
	ClientHeapBytes int64 `json:"client_heap_bytes_per_snapshot"`
	// The syncer that was running during the import: VmHWM (peak) and VmRSS (now).
	SyncerPeakRSS int64 `json:"syncer_peak_rss_bytes"`
	SyncerRSS     int64 `json:"syncer_rss_bytes"`
	// A fresh syncer process on the loaded registry: start -> /readyz, and its peak
	// after one reconcile.
	ColdStartReadyMS float64 `json:"cold_start_ready_ms"`
	ColdPeakRSS      int64   `json:"cold_start_peak_rss_bytes"`
	// One-row changes at this size, paced at 10/s: COMMIT -> OnChange.
	ChangeLatency  Latency `json:"single_change_commit_to_onchange"`
	ChecksumsEqual bool    `json:"checksums_equal"`
}

func runScale(ctx context.Context, e *env, r *Results) error {
	p := e.opts.plan
	n := p.Scale
	url, err := createSchema(ctx, e.pg, "bench_scale", true)
	if err != nil {
		return err
	}
	const name = "scale"
	prefix := "bench." + name
	names, _ := protocol.NewNames(prefix)
	syn, err := e.startSyncer(ctx, name, url, prefix, 2*time.Minute)
	if err != nil {
		return err
	}
	res := &ScaleResult{Extensions: n}
	r.Scale = res

	// A client that follows the registry from the empty state.
	var cur atomic.Pointer[stamps]
	var lastRev, lastAt atomic.Int64
	onChange := func(_, next *cache.Snapshot, changed []string) {
		t := now()
		lastAt.Store(t)
		lastRev.Store(next.Revision())
		if st := cur.Load(); st != nil && len(changed) < 100 {
			for _, id := range changed {
				if x, ok := next.Get(id); ok {
					if seq := parseSeq(x.Metadata); seq >= 0 {
						st.set(stRecv, seq, t)
					}
				}
			}
		}
	}
	ncOld, err := e.connectNATS("bench-scale-follower")
	if err != nil {
		return err
	}
	follower, err := startClient(ctx, ncOld, prefix, onChange)
	if err != nil {
		return err
	}
	e.onClose(follower.Stop)

	exts := cache.Synthetic(n)
	ids := make([]string, n)
	for i := range exts {
		ids[i] = exts[i].ID
		res.Versions += len(exts[i].Versions)
		res.Instances += len(exts[i].Instances)
	}
	conn, err := e.connectPG(ctx, url)
	if err != nil {
		return err
	}
	d, err := importSynthetic(ctx, conn, "extensions", exts)
	if err != nil {
		return err
	}
	committed := now()
	exts = nil
	res.ImportMS = msd(d)
	rev, err := counter(ctx, conn)
	if err != nil {
		return err
	}
	if !waitUntil(ctx, 3*time.Minute, func() bool { return lastRev.Load() >= rev }) {
		return fmt.Errorf("the running client did not get the import (revision %d) within 3 minutes", rev)
	}
	res.ImportToClientMS = ms(lastAt.Load() - committed)
	e.logf("scale: imported %d extensions (%d versions, %d instances) in %.0f ms; a running client had it %.0f ms after the commit",
		n, res.Versions, res.Instances, res.ImportMS, res.ImportToClientMS)
	if _, err := conn.Exec(ctx, `VACUUM ANALYZE extensions, extension_versions, extension_instances`); err != nil {
		return err
	}

	// Full reconciles.
	for range 3 {
		d, err := syn.forceSync(ctx)
		if err != nil {
			return err
		}
		res.ReconcileMS = append(res.ReconcileMS, msd(d))
	}
	res.ReconcileMedianMS = median(res.ReconcileMS)

	// The snapshot on the wire: wait until it holds the import.
	reader := &protocol.Reader{NC: ncOld, Names: names}
	var man *protocol.Manifest
	waitUntil(ctx, time.Minute, func() bool {
		m, err := reader.Manifest(ctx)
		if err == nil && m.Revision >= rev {
			man = m
			return true
		}
		return false
	})
	if man == nil {
		return fmt.Errorf("no snapshot of revision %d was written", rev)
	}
	res.SnapshotBytes, res.SnapshotChunks = man.Size, len(man.Sequences)

	// New clients: bootstrap time, and the heap one snapshot takes.
	for i := range 3 {
		nc, err := e.connectNATS(fmt.Sprintf("bench-scale-new-%d", i))
		if err != nil {
			return err
		}
		var heapBefore uint64
		if i == 0 {
			heapBefore = heapAfterGC()
		}
		start := time.Now()
		c, err := startClient(ctx, nc, prefix, nil)
		if err != nil {
			return err
		}
		res.BootstrapMS = append(res.BootstrapMS, msd(time.Since(start)))
		if i == 0 {
			res.ClientHeapBytes = int64(heapAfterGC()) - int64(heapBefore)
			runtime.KeepAlive(c.Snapshot())
		}
		c.Stop()
	}
	res.BootstrapMedianMS = median(res.BootstrapMS)
	e.logf("scale: reconcile %v ms, bootstrap %v ms, snapshot %d bytes in %d chunks, client heap %.1f MB per snapshot",
		res.ReconcileMS, res.BootstrapMS, res.SnapshotBytes, res.SnapshotChunks, float64(res.ClientHeapBytes)/(1<<20))

	// Single changes at this size.
	cnt := 20
	if e.opts.short {
		cnt = 5
	}
	writer, err := e.connectPG(ctx, url)
	if err != nil {
		return err
	}
	st := newStamps(1, cnt, numStages)
	cur.Store(st)
	for i := range cnt {
		seq := int64(1 + i)
		if _, err := writer.Exec(ctx, updateSeq, seq, ids[(i*7919)%n]); err != nil {
			return err
		}
		st.set(stCommit, seq, now())
		time.Sleep(100 * time.Millisecond)
	}
	waitUntil(ctx, 30*time.Second, func() bool { return st.complete(stCommit, stRecv, 1, int64(cnt+1)) })
	lat, _ := st.diffs(stCommit, stRecv, 1, int64(cnt+1))
	res.ChangeLatency = summarize(lat)

	_, _, ok, err := verifyClients(ctx, conn, []*clientT{follower}, 30*time.Second)
	if err != nil {
		return err
	}
	res.ChecksumsEqual = ok
	if res.SyncerPeakRSS, err = syn.procStatus("VmHWM"); err != nil {
		return err
	}
	if res.SyncerRSS, err = syn.procStatus("VmRSS"); err != nil {
		return err
	}
	follower.Stop()
	syn.stop()

	// A fresh syncer on the loaded registry.
	start := time.Now()
	syn2, err := e.startSyncer(ctx, name+"-cold", url, prefix, 3*time.Minute)
	if err != nil {
		return err
	}
	res.ColdStartReadyMS = msd(time.Since(start))
	if _, err := syn2.forceSync(ctx); err != nil {
		return err
	}
	if res.ColdPeakRSS, err = syn2.procStatus("VmHWM"); err != nil {
		return err
	}
	syn2.stop()
	e.logf("scale: syncer peak RSS %.0f MB (live import), %.0f MB (cold start, ready in %.0f ms); one-row change p50 %.1f ms max %.1f ms",
		float64(res.SyncerPeakRSS)/(1<<20), float64(res.ColdPeakRSS)/(1<<20), res.ColdStartReadyMS, res.ChangeLatency.P50, res.ChangeLatency.Max)
	if !ok {
		return fmt.Errorf("the following client does not hold the database's content")
	}
	return nil
}

func heapAfterGC() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}
