package health

import (
	"context"
	"encoding/json"
	"math"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/DataDog/sketches-go/ddsketch"
	"github.com/DataDog/sketches-go/ddsketch/mapping"
	"github.com/DataDog/sketches-go/ddsketch/store"
	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"

	"github.com/beamline/registry-syncer/cache"
	"github.com/beamline/registry-syncer/extops"
	"github.com/beamline/registry-syncer/protocol"
	"github.com/beamline/registry-syncer/test/harness"
)

func TestMain(m *testing.M) { os.Exit(harness.MainPostgres(m, harness.PGOptions{})) }

const interval = time.Second

func geo(autoDisabled bool) cache.Extension {
	return cache.Extension{ID: "geo", Type: cache.TypePre, Subject: "beamline.ext.pre.geo.v1", TimeoutMS: 100, Enabled: true, Version: "v1",
		AutoDisabled: autoDisabled,
		Instances: []cache.Instance{
			{InstanceID: "i1", Subject: "beamline.ext.pre.geo.v1.i1", Weight: 50, Enabled: true, HealthStatus: cache.HealthHealthy},
			{InstanceID: "i2", Subject: "beamline.ext.pre.geo.v1.i2", Weight: 50, Enabled: true, HealthStatus: cache.HealthHealthy},
		}}
}

func snapOf(t *testing.T, exts ...cache.Extension) *cache.Snapshot {
	t.Helper()
	s, err := cache.New(1, "database", exts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// calls builds one report entry: per target (outcome -> n, breaker) and latencies.
func calls(t testing.TB, latencies []float64, targets map[string]protocol.TargetCalls) json.RawMessage {
	t.Helper()
	c := protocol.ExtensionCalls{Outcomes: map[string]uint64{}, Targets: targets}
	for _, tc := range targets {
		c.Calls += tc.Calls
		for o, n := range tc.Outcomes {
			c.Outcomes[o] += n
		}
	}
	if len(latencies) > 0 {
		sk := newSketch()
		for _, l := range latencies {
			if err := sk.Add(l); err != nil {
				t.Fatal(err)
			}
		}
		data, err := proto.Marshal(sk.ToProto())
		if err != nil {
			t.Fatal(err)
		}
		c.Sketch = data
	}
	raw, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func target(breaker string, outcomes map[string]uint64) protocol.TargetCalls {
	tc := protocol.TargetCalls{Outcomes: outcomes, Breaker: breaker}
	for _, n := range outcomes {
		tc.Calls += n
	}
	return tc
}

func report(router string, at time.Time, cs map[string]json.RawMessage) *protocol.Report {
	return &protocol.Report{RouterID: router, State: protocol.RouterReady, Time: at, IntervalMS: interval.Milliseconds(),
		Calls: cs, Features: []string{protocol.FeatureAutoDisabled}}
}

func setupDB(t *testing.T) *harness.Schema {
	t.Helper()
	s := harness.PG(t).NewSchema(t)
	ctx := context.Background()
	for _, q := range []string{
		`INSERT INTO extensions (id, type, subject, timeout_ms) VALUES ('geo', 'pre', 'beamline.ext.pre.geo.v1', 100)`,
		`INSERT INTO extension_instances (extension_id, instance_id, subject, weight, health_status) VALUES
			('geo', 'i1', 'beamline.ext.pre.geo.v1.i1', 50, 'healthy'), ('geo', 'i2', 'beamline.ext.pre.geo.v1.i2', 50, 'healthy')`,
	} {
		if _, err := s.Pool.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

func revision(t *testing.T, s *harness.Schema) (rev, audit int64) {
	t.Helper()
	ctx := context.Background()
	if err := s.Pool.QueryRow(ctx, `SELECT revision FROM registry_counter`).Scan(&rev); err != nil {
		t.Fatal(err)
	}
	if err := s.Pool.QueryRow(ctx, `SELECT count(*) FROM extension_audit_log`).Scan(&audit); err != nil {
		t.Fatal(err)
	}
	return rev, audit
}

// TestMergeWrite: three routers' reports merged into extension_health with exact counts,
// percentiles within the sketch's accuracy, the fleet's breaker view, per-instance rows,
// and no registry revision; a second flush with nothing new writes nothing.
func TestMergeWrite(t *testing.T) {
	t.Parallel()
	s := setupDB(t)
	ctx := context.Background()
	rev0, audit0 := revision(t, s)
	snap := snapOf(t, geo(false))
	m := NewMerger(interval)
	now := time.Now()
	var all []float64
	for i, r := range []string{"r1", "r2", "r3"} {
		lat := make([]float64, 0, 100)
		for j := range 100 {
			lat = append(lat, float64(j+1+i*100)/1000) // 1..300 ms over the fleet
		}
		all = append(all, lat...)
		b1 := protocol.BreakerClosed
		if r == "r3" {
			b1 = protocol.BreakerOpen
		}
		m.Observe(report(r, now, map[string]json.RawMessage{"geo": calls(t, lat, map[string]protocol.TargetCalls{
			"i1": target(b1, map[string]uint64{"success": 40, "extension_timeout": 10, "extension_unavailable": 5}),
			"i2": target(protocol.BreakerClosed, map[string]uint64{"success": 50, "validator_blocked": 0}),
		}), "unknown_ext": calls(t, nil, nil)}), snap, now)
	}
	if m.Invalid() != 3 {
		t.Errorf("%d entries refused, want 3 (an unknown extension in each report)", m.Invalid())
	}
	rows := m.Flush(now, func(string) time.Duration { return 0 })
	if len(rows) != 1 {
		t.Fatalf("flush returned %d rows, want 1", len(rows))
	}
	r := rows[0]
	if r.SuccessCount != 270 || r.FailureCount != 30 || r.RejectedCount != 15 {
		t.Errorf("counts %d/%d/%d, want 270 successes, 30 failures, 15 rejected", r.SuccessCount, r.FailureCount, r.RejectedCount)
	}
	if r.RoutersReporting != 3 || r.RoutersOpen != 0 || r.State != protocol.BreakerClosed {
		t.Errorf("fleet view %d reporting, %d open, state %s; want 3, 0 (i2 is closed everywhere), closed", r.RoutersReporting, r.RoutersOpen, r.State)
	}
	for _, q := range []struct {
		got  *float64
		want float64
	}{{r.P50LatencyMS, 150}, {r.P95LatencyMS, 285}, {r.P99LatencyMS, 297}} {
		if q.got == nil || math.Abs(*q.got-q.want)/q.want > 0.02 {
			t.Errorf("percentile %v ms, want %v within the sketch's error", q.got, q.want)
		}
	}
	if len(r.Instances) != 2 || r.Instances[0].InstanceID != "i1" || r.Instances[0].RoutersOpen != 1 || r.Instances[0].FailureCount != 30 {
		t.Errorf("instances %+v", r.Instances)
	}
	if err := Write(ctx, s.Pool, rows); err != nil {
		t.Fatal(err)
	}
	var succ, fail int64
	var p95 float64
	if err := s.Pool.QueryRow(ctx, `SELECT success_count, failure_count, p95_latency_ms FROM extension_health WHERE extension_id = 'geo'`).
		Scan(&succ, &fail, &p95); err != nil {
		t.Fatal(err)
	}
	if succ != 270 || fail != 30 || p95 != *r.P95LatencyMS {
		t.Errorf("extension_health holds %d/%d p95 %v", succ, fail, p95)
	}
	var iopen int
	if err := s.Pool.QueryRow(ctx, `SELECT routers_open FROM extension_instance_health WHERE extension_id = 'geo' AND instance_id = 'i1'`).Scan(&iopen); err != nil || iopen != 1 {
		t.Errorf("extension_instance_health i1 routers_open %d (%v), want 1", iopen, err)
	}
	if rev, audit := revision(t, s); rev != rev0 || audit != audit0 {
		t.Errorf("health writes moved the registry: revision %d -> %d, audit rows %d -> %d", rev0, rev, audit0, audit)
	}
	// A deleted instance's health row goes at the next write of its extension.
	if _, err := s.Pool.Exec(ctx, `DELETE FROM extension_instances WHERE extension_id = 'geo' AND instance_id = 'i2'`); err != nil {
		t.Fatal(err)
	}
	if err := Write(ctx, s.Pool, rows); err != nil {
		t.Fatal(err)
	}
	var left int
	if err := s.Pool.QueryRow(ctx, `SELECT count(*) FROM extension_instance_health WHERE extension_id = 'geo'`).Scan(&left); err != nil || left != 1 {
		t.Errorf("instance health rows after i2 was deleted: %d (%v), want 1", left, err)
	}
	if again := m.Flush(now.Add(interval/2), func(string) time.Duration { return 0 }); len(again) != 0 {
		t.Errorf("a flush with nothing new returned %d rows", len(again))
	}
	// Once the calls leave the window, one more write with zero counts.
	later := now.Add(DefaultWindow + 2*interval)
	rows = m.Flush(later, func(string) time.Duration { return 0 })
	if len(rows) != 1 || rows[0].SuccessCount != 0 || rows[0].RoutersReporting != 0 {
		t.Fatalf("after the window: %+v", rows)
	}
	if rows = m.Flush(later.Add(interval), func(string) time.Duration { return 0 }); len(rows) != 0 {
		t.Errorf("idle extension written again: %+v", rows)
	}

	v, err := Read(ctx, s.Pool, 0.8)
	if err != nil {
		t.Fatal(err)
	}
	if v.Summary.Total != 1 || v.Summary.Healthy != 1 || v.Summary.AvgSuccess == nil || *v.Summary.AvgSuccess != 0.9 ||
		v.Summary.AvgP95MS == nil || len(v.Extensions[0].Instances) != 1 {
		t.Errorf("view %+v", v.Summary)
	}
}

// TestSketchesRefused: a sketch with another mapping, negative or NaN counts is not merged.
func TestSketchesRefused(t *testing.T) {
	t.Parallel()
	other, err := ddsketch.NewDefaultDDSketch(0.05)
	if err != nil {
		t.Fatal(err)
	}
	_ = other.Add(1)
	data, _ := proto.Marshal(other.ToProto())
	if decodeSketch(data) != nil {
		t.Error("a 5% sketch was accepted for merging with 1% sketches")
	}
	m, _ := mapping.NewLogarithmicMapping(sketchAccuracy)
	neg := ddsketch.NewDDSketch(m, store.NewDenseStore(), store.NewDenseStore())
	_ = neg.AddWithCount(1, 3)
	pb := neg.ToProto()
	for k := range pb.PositiveValues.BinCounts {
		pb.PositiveValues.BinCounts[k] = -3
	}
	for i := range pb.PositiveValues.ContiguousBinCounts {
		pb.PositiveValues.ContiguousBinCounts[i] = -3
	}
	data, _ = proto.Marshal(pb)
	if decodeSketch(data) != nil {
		t.Error("a sketch with negative counts was accepted")
	}
	if decodeSketch([]byte("garbage")) != nil {
		t.Error("garbage was accepted as a sketch")
	}
}

func openReport(t *testing.T, router string, at time.Time, breaker string, failures uint64) *protocol.Report {
	return report(router, at, map[string]json.RawMessage{"geo": calls(t, []float64{0.01}, map[string]protocol.TargetCalls{
		"i1": target(breaker, map[string]uint64{"success": 1, "extension_error": failures}),
		"i2": target(breaker, map[string]uint64{"success": 1, "extension_error": failures}),
	})})
}

// TestAutoDisableQuorum: one router with an open circuit disables nothing; a quorum
// does after Hold evaluations, in an audited transaction; an operator's enable wins and is
// never undone.
func TestAutoDisableQuorum(t *testing.T) {
	t.Parallel()
	s := setupDB(t)
	ctx := context.Background()
	snap := snapOf(t, geo(false))
	m := NewMerger(interval)
	start := time.Now()
	c := NewController(Policy{AutoDisable: true, AutoEnable: true, Hold: 2, QuorumRouters: 2, QuorumFraction: 0.5, Cooldown: time.Millisecond}, start)
	decide := func(at time.Time, lacking []string) []Decision {
		return c.Decide(m, snap, map[string]Settings{}, lacking, at, nil)
	}
	now := start
	for i := range 4 {
		now = start.Add(time.Duration(i) * interval)
		m.Observe(openReport(t, "r1", now, protocol.BreakerOpen, 5), snap, now)
		m.Observe(openReport(t, "r2", now, protocol.BreakerClosed, 0), snap, now)
		m.Observe(openReport(t, "r3", now, protocol.BreakerClosed, 0), snap, now)
		m.Observe(openReport(t, "r4", now, protocol.BreakerClosed, 0), snap, now)
		if ds := decide(now, nil); len(ds) != 0 {
			t.Fatalf("one broken router of four decided %v", ds)
		}
	}
	var got []Decision
	for i := range 3 {
		now = now.Add(interval)
		m.Observe(openReport(t, "r1", now, protocol.BreakerOpen, 5), snap, now)
		m.Observe(openReport(t, "r2", now, protocol.BreakerOpen, 5), snap, now)
		var lacking []string
		if i == 0 {
			lacking = []string{"old-router"} // does not implement auto_disabled
		}
		got = decide(now, lacking)
		if i < 1 && len(got) != 0 {
			t.Fatalf("evaluation %d decided %v before the hold", i, got)
		}
		if len(got) > 0 {
			break
		}
	}
	if len(got) != 1 || got[0].Kind != AutoDisable || !strings.Contains(got[0].Reason, "2 of 4") {
		t.Fatalf("quorum of 2 in 4 open decided %v, want one auto_disable naming 2 of 4", got)
	}
	rev0, _ := revision(t, s)
	ok, err := Apply(ctx, s.Pool, got[0], "syncer host:1", true)
	if err != nil || !ok {
		t.Fatalf("apply: %v %v", ok, err)
	}
	rev1, _ := revision(t, s)
	var by, action string
	if err := s.Pool.QueryRow(ctx, `SELECT changed_by, action FROM extension_audit_log ORDER BY seq DESC LIMIT 1`).Scan(&by, &action); err != nil {
		t.Fatal(err)
	}
	if rev1 != rev0+1 || !strings.HasPrefix(by, "syncer host:1: auto_disable: circuit open in 2 of 4") {
		t.Errorf("auto-disable: revision %d -> %d, audit changed_by %q action %s", rev0, rev1, by, action)
	}
	// An operator cannot set auto_disabled by hand...
	if _, err := s.Pool.Exec(ctx, `UPDATE extensions SET auto_disabled = false, timeout_ms = 100 WHERE id = 'nope'`); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Pool.Exec(ctx, `INSERT INTO extensions (id, type, subject, auto_disabled) VALUES ('x', 'pre', 'beamline.ext.pre.x.v1', true)`); err == nil ||
		!strings.Contains(err.Error(), "auto_disabled is set only by the syncer") {
		t.Errorf("an operator's insert with auto_disabled: %v", err)
	}
	// ...but clearing it is an explicit enable: it wins and turns management off.
	if _, err := s.Pool.Exec(ctx, `UPDATE extensions SET auto_disabled = false WHERE id = 'geo'`); err != nil {
		t.Fatal(err)
	}
	var manage string
	if err := s.Pool.QueryRow(ctx, `SELECT auto_manage FROM extension_health WHERE extension_id = 'geo'`).Scan(&manage); err != nil || manage != ManageOff {
		t.Fatalf("after the operator's enable auto_manage is %q (%v), want off", manage, err)
	}
	if ok, err := Apply(ctx, s.Pool, got[0], "syncer host:1", true); err != nil || ok {
		t.Errorf("auto-disable after the operator's enable changed a row: %v %v", ok, err)
	}
	settings, err := ReadSettings(ctx, s.Pool)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		now = now.Add(interval)
		m.Observe(openReport(t, "r1", now, protocol.BreakerOpen, 5), snap, now)
		m.Observe(openReport(t, "r2", now, protocol.BreakerOpen, 5), snap, now)
		if ds := c.Decide(m, snap, settings, nil, now, nil); len(ds) != 0 {
			t.Fatalf("auto_manage off, still decided %v", ds)
		}
	}
	// An operator's disable also clears the automatic state.
	if _, err := s.Pool.Exec(ctx, `UPDATE extension_health SET auto_manage = 'default' WHERE extension_id = 'geo'`); err != nil {
		t.Fatal(err)
	}
	if ok, err := Apply(ctx, s.Pool, got[0], "syncer host:1", true); err != nil || !ok {
		t.Fatalf("re-armed auto-disable: %v %v", ok, err)
	}
	if _, err := s.Pool.Exec(ctx, `UPDATE extensions SET enabled = false WHERE id = 'geo'`); err != nil {
		t.Fatal(err)
	}
	var auto bool
	if err := s.Pool.QueryRow(ctx, `SELECT auto_disabled FROM extensions WHERE id = 'geo'`).Scan(&auto); err != nil || auto {
		t.Errorf("after the operator's disable auto_disabled = %v (%v)", auto, err)
	}
	if ok, err := Apply(ctx, s.Pool, Decision{Kind: AutoEnable, ExtensionID: "geo", Reason: "test"}, "syncer", true); err != nil || ok {
		t.Errorf("auto-enable of an operator-disabled extension changed a row: %v %v", ok, err)
	}
}

// TestRecovery: an auto-disabled extension whose probes succeed at a quorum of routers is
// enabled again after the hold; failing probes keep it disabled.
func TestRecovery(t *testing.T) {
	t.Parallel()
	snap := snapOf(t, geo(true))
	m := NewMerger(interval)
	start := time.Now()
	c := NewController(Policy{AutoDisable: true, AutoEnable: true, Hold: 2, Cooldown: 3 * interval}, start)
	now := start
	for i := range 3 {
		now = start.Add(time.Duration(i+1) * interval)
		m.Observe(openReport(t, "r1", now, protocol.BreakerHalfOpen, 1), snap, now)
		m.Observe(openReport(t, "r2", now, protocol.BreakerHalfOpen, 1), snap, now)
		if ds := c.Decide(m, snap, nil, nil, now, nil); len(ds) != 0 {
			t.Fatalf("failing probes decided %v", ds)
		}
	}
	var got []Decision
	for range 3 {
		now = now.Add(interval)
		m.Observe(openReport(t, "r1", now, protocol.BreakerClosed, 0), snap, now)
		m.Observe(openReport(t, "r2", now, protocol.BreakerClosed, 0), snap, now)
		if got = c.Decide(m, snap, nil, nil, now, nil); len(got) > 0 {
			break
		}
	}
	// Failing probes lately, then successes: the rate over the last cooldown must reach
	// 0.8 first.
	for range 20 {
		if len(got) > 0 {
			break
		}
		now = now.Add(interval)
		m.Observe(openReport(t, "r1", now, protocol.BreakerClosed, 0), snap, now)
		m.Observe(openReport(t, "r2", now, protocol.BreakerClosed, 0), snap, now)
		got = c.Decide(m, snap, nil, nil, now, nil)
	}
	if len(got) != 1 || got[0].Kind != AutoEnable || !strings.Contains(got[0].Reason, "2 of 2") {
		t.Fatalf("recovery decided %v", got)
	}
}

// TestInstanceHealth: an instance failing half its calls becomes unhealthy after the hold;
// one succeeding stays healthy; an unhealthy one without calls goes back to unknown.
func TestInstanceHealth(t *testing.T) {
	t.Parallel()
	snap := snapOf(t, geo(false))
	m := NewMerger(interval)
	start := time.Now()
	c := NewController(Policy{Instances: true, AutoEnable: true, Hold: 2, Cooldown: 3 * interval, MinCalls: 10}, start)
	now := start
	var got []Decision
	for i := range 3 {
		now = start.Add(time.Duration(i) * interval)
		for _, r := range []string{"r1", "r2"} {
			m.Observe(report(r, now, map[string]json.RawMessage{"geo": calls(t, nil, map[string]protocol.TargetCalls{
				"i1": target(protocol.BreakerClosed, map[string]uint64{"success": 10, "extension_error": 10}),
				"i2": target(protocol.BreakerClosed, map[string]uint64{"success": 20}),
			})}), snap, now)
		}
		got = c.Decide(m, snap, nil, nil, now, nil)
		if i == 0 && len(got) != 0 {
			t.Fatalf("decided before the hold: %v", got)
		}
		if len(got) > 0 {
			break
		}
	}
	if len(got) != 1 || got[0].InstanceID != "i1" || got[0].To != cache.HealthUnhealthy {
		t.Fatalf("decisions %v, want i1 unhealthy", got)
	}
	c.Applied(got[0], now)
	e := geo(false)
	e.Instances[0].HealthStatus = cache.HealthUnhealthy
	snap = snapOf(t, e)
	got = nil
	for range 10 {
		now = now.Add(interval)
		if got = c.Decide(m, snap, nil, nil, now, nil); len(got) > 0 {
			break
		}
	}
	if len(got) != 1 || got[0].InstanceID != "i1" || got[0].To != cache.HealthUnknown {
		t.Fatalf("an unhealthy instance without calls: %v, want back to unknown after the cooldown", got)
	}
}

// TestOperatorEnableCLI: `syncer ext enable` (extops.SetEnabled) on an auto-disabled
// extension is the operator's explicit enable: it clears auto_disabled in an audited
// revision and turns the extension's automatic management off.
func TestOperatorEnableCLI(t *testing.T) {
	t.Parallel()
	s := setupDB(t)
	ctx := context.Background()
	if ok, err := Apply(ctx, s.Pool, Decision{Kind: AutoDisable, ExtensionID: "geo", Reason: "test"}, "syncer", true); err != nil || !ok {
		t.Fatalf("auto-disable: %v %v", ok, err)
	}
	conn, err := pgx.Connect(ctx, s.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	res, err := extops.Do(ctx, conn, "geo", "alice", false, extops.SetEnabled(true))
	if err != nil {
		t.Fatal(err)
	}
	var auto bool
	var manage, by string
	if err := s.Pool.QueryRow(ctx, `SELECT e.auto_disabled, h.auto_manage, (SELECT changed_by FROM extension_audit_log ORDER BY seq DESC LIMIT 1)
		FROM extensions e JOIN extension_health h ON h.extension_id = e.id WHERE e.id = 'geo'`).Scan(&auto, &manage, &by); err != nil {
		t.Fatal(err)
	}
	if auto || manage != ManageOff || by != "alice" || res.Revision == 0 {
		t.Errorf("after ext enable: auto_disabled %v, auto_manage %q, changed_by %q, revision %d", auto, manage, by, res.Revision)
	}
}

// TestThresholdsReachRouters: an operator's threshold change in extension_health becomes
// the extension's metadata.circuit_breaker in an audited revision (what routers read);
// the syncer's statistics writes never create one; an out-of-range threshold is refused.
func TestThresholdsReachRouters(t *testing.T) {
	t.Parallel()
	s := setupDB(t)
	ctx := context.Background()
	if _, err := s.Pool.Exec(ctx, `UPDATE extensions SET metadata = '{"circuit_breaker": {"open_timeout_ms": 1000}, "owner": "geo-team"}' WHERE id = 'geo'`); err != nil {
		t.Fatal(err)
	}
	rev0, _ := revision(t, s)
	now := time.Now()
	if err := Write(ctx, s.Pool, []Row{{ExtensionID: "geo", SuccessCount: 3, State: "closed", LastSuccess: &now}}); err != nil {
		t.Fatal(err)
	}
	if rev, _ := revision(t, s); rev != rev0 {
		t.Fatalf("a statistics write created revision %d", rev)
	}
	if _, err := s.Pool.Exec(ctx, `UPDATE extension_health SET failure_threshold = 2, window_seconds = 30 WHERE extension_id = 'geo'`); err != nil {
		t.Fatal(err)
	}
	var md string
	if err := s.Pool.QueryRow(ctx, `SELECT metadata::text FROM extensions WHERE id = 'geo'`).Scan(&md); err != nil {
		t.Fatal(err)
	}
	var got struct {
		CB    map[string]float64 `json:"circuit_breaker"`
		Owner string             `json:"owner"`
	}
	if err := json.Unmarshal([]byte(md), &got); err != nil {
		t.Fatal(err)
	}
	if got.CB["failure_threshold"] != 2 || got.CB["window_seconds"] != 30 || got.CB["error_rate_threshold"] != 0.5 ||
		got.CB["half_open_max_requests"] != 3 || got.CB["open_timeout_ms"] != 1000 || got.Owner != "geo-team" {
		t.Errorf("metadata after the threshold change: %s", md)
	}
	if rev, _ := revision(t, s); rev != rev0+1 {
		t.Errorf("the threshold change made revision %d, want %d", rev, rev0+1)
	}
	if err := Write(ctx, s.Pool, []Row{{ExtensionID: "geo", SuccessCount: 9, State: "closed"}}); err != nil {
		t.Fatal(err)
	}
	if rev, _ := revision(t, s); rev != rev0+1 {
		t.Errorf("a statistics write after the threshold change created revision %d", rev)
	}
	if _, err := s.Pool.Exec(ctx, `UPDATE extension_health SET error_rate_threshold = 1.5 WHERE extension_id = 'geo'`); err == nil ||
		!strings.Contains(err.Error(), "extension_health_error_rate_threshold_above_0_at_most_1") {
		t.Errorf("error_rate_threshold 1.5: %v", err)
	}
}
