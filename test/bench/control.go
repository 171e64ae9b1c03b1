package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"runtime"
	"time"

	"github.com/DataDog/sketches-go/ddsketch"
	"google.golang.org/protobuf/proto"

	"github.com/beamline/registry-syncer/cache"
	"github.com/beamline/registry-syncer/health"
	"github.com/beamline/registry-syncer/protocol"
)

// ControlResult: the leading syncer's cost of the control loop (package health) for a
// fleet of reporting routers: one health interval is every router's report decoded and
// merged, then the rows flushed and the automatic decisions evaluated (the database write
// is one batched round trip per interval and is not included).
type ControlResult struct {
	Routers          int     `json:"routers"`
	Extensions       int     `json:"extensions_per_report"`
	ReportBytes      int     `json:"report_bytes"`
	IntervalS        float64 `json:"interval_seconds"`
	Intervals        int     `json:"intervals"`
	MSPerInterval    float64 `json:"ms_per_interval"`
	USPerReport      float64 `json:"us_per_report"`
	CPUShare         float64 `json:"cpu_share_percent"` // of one core at the default interval
	AllocMBPerInterv float64 `json:"alloc_mb_per_interval"`
}

func runControl(ctx context.Context, e *env, r *Results) error {
	const routers, extensions = 1000, 5
	interval := 5 * time.Second
	exts := make([]cache.Extension, extensions)
	for i := range exts {
		id := fmt.Sprintf("ext%d", i)
		exts[i] = cache.Extension{ID: id, Type: cache.TypePre, Subject: "beamline.ext.pre." + id + ".v1", TimeoutMS: 100, Enabled: true, Version: "v1",
			Instances: []cache.Instance{
				{InstanceID: "i1", Subject: "beamline.ext.pre." + id + ".v1.i1", Weight: 50, Enabled: true, HealthStatus: cache.HealthHealthy},
				{InstanceID: "i2", Subject: "beamline.ext.pre." + id + ".v1.i2", Weight: 50, Enabled: true, HealthStatus: cache.HealthHealthy}}}
	}
	snap, err := cache.New(1, protocol.SourceDatabase, exts)
	if err != nil {
		return err
	}
	// One entry as the Go client writes it: 200 calls over two instances, a sketch of
	// their latencies.
	sk, err := ddsketch.LogCollapsingLowestDenseDDSketch(0.01, 2048)
	if err != nil {
		return err
	}
	for i := range 200 {
		_ = sk.Add(float64(i+1) / 10000)
	}
	pb, err := proto.Marshal(sk.ToProto())
	if err != nil {
		return err
	}
	entry, err := json.Marshal(protocol.ExtensionCalls{Calls: 200, Outcomes: map[string]uint64{"success": 195, "extension_timeout": 5},
		P50MS: 10, P95MS: 19, P99MS: 19.8, Sketch: pb, Targets: map[string]protocol.TargetCalls{
			"i1": {Calls: 100, Outcomes: map[string]uint64{"success": 95, "extension_timeout": 5}, Breaker: protocol.BreakerClosed, P99MS: 19.8},
			"i2": {Calls: 100, Outcomes: map[string]uint64{"success": 100}, Breaker: protocol.BreakerClosed, P99MS: 19.7}}})
	if err != nil {
		return err
	}
	reports := make([][]byte, routers)
	for i := range reports {
		calls := map[string]json.RawMessage{}
		for _, x := range exts {
			calls[x.ID] = entry
		}
		reports[i], err = json.Marshal(protocol.Report{RouterID: fmt.Sprintf("router-%d", i), State: protocol.RouterReady,
			Time: time.Now().UTC(), StateSince: time.Now().UTC(), IntervalMS: interval.Milliseconds(), Revision: 1,
			Checksum: snap.Checksum(), Calls: calls, Features: []string{protocol.FeatureAutoDisabled}})
		if err != nil {
			return err
		}
	}
	m := health.NewMerger(interval)
	ctl := health.NewController(health.Policy{AutoDisable: true, AutoEnable: true, Instances: true}, time.Now())
	now := time.Now()
	round := func() error {
		now = now.Add(interval)
		for _, data := range reports {
			rep, err := protocol.DecodeReport(data)
			if err != nil {
				return err
			}
			m.Observe(rep, snap, now)
		}
		m.Flush(now, func(string) time.Duration { return 0 })
		ctl.Decide(m, snap, nil, nil, now, nil)
		return nil
	}
	if err := round(); err != nil { // warm-up: the series exist from here on
		return err
	}
	n := 10
	if e.opts.short {
		n = 2
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	start := time.Now()
	for range n {
		if err := round(); err != nil {
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	el := time.Since(start)
	runtime.ReadMemStats(&after)
	per := float64(el.Nanoseconds()) / float64(n)
	res := &ControlResult{Routers: routers, Extensions: extensions, ReportBytes: len(reports[0]), IntervalS: interval.Seconds(), Intervals: n,
		MSPerInterval: math.Round(per/1e5) / 10, USPerReport: math.Round(per/routers/100) / 10,
		CPUShare:         math.Round(per/float64(interval.Nanoseconds())*1000) / 10,
		AllocMBPerInterv: math.Round(float64(after.TotalAlloc-before.TotalAlloc)/float64(n)/(1<<20)*10) / 10}
	r.Control = res
	e.logf("control: %d routers x %d extensions: %.1f ms per %s interval (%.1f µs per report, %.1f%% of a core), %.1f MB allocated per interval, %d-byte reports",
		routers, extensions, res.MSPerInterval, interval, res.USPerReport, res.CPUShare, res.AllocMBPerInterv, res.ReportBytes)
	return nil
}
