package health

import (
	"reflect"
	"slices"
	"time"

	"github.com/beamline/registry-syncer/protocol"
)

// Row is one extension's health over its window, as extension_health holds it.
type Row struct {
	ExtensionID      string        `json:"extension_id"`
	SuccessCount     uint64        `json:"success_count"`
	FailureCount     uint64        `json:"failure_count"`
	RejectedCount    uint64        `json:"rejected_count"` // refused by open breakers, never sent
	LastSuccess      *time.Time    `json:"last_success,omitempty"`
	LastFailure      *time.Time    `json:"last_failure,omitempty"`
	AvgLatencyMS     *float64      `json:"avg_latency_ms,omitempty"`
	P50LatencyMS     *float64      `json:"p50_latency_ms,omitempty"`
	P95LatencyMS     *float64      `json:"p95_latency_ms,omitempty"`
	P99LatencyMS     *float64      `json:"p99_latency_ms,omitempty"`
	State            string        `json:"circuit_breaker_state"`
	OpenedAt         *time.Time    `json:"opened_at,omitempty"`
	RoutersReporting int           `json:"routers_reporting"`
	RoutersOpen      int           `json:"routers_open"`
	RoutersHalfOpen  int           `json:"routers_half_open"`
	Instances        []InstanceRow `json:"instances,omitempty"`
}

// InstanceRow is one instance's health over its extension's window.
type InstanceRow struct {
	InstanceID       string     `json:"instance_id"`
	SuccessCount     uint64     `json:"success_count"`
	FailureCount     uint64     `json:"failure_count"`
	RejectedCount    uint64     `json:"rejected_count"`
	LastSuccess      *time.Time `json:"last_success,omitempty"`
	LastFailure      *time.Time `json:"last_failure,omitempty"`
	P99LatencyMS     *float64   `json:"p99_latency_ms,omitempty"` // the highest router p99
	State            string     `json:"circuit_breaker_state"`
	RoutersReporting int        `json:"routers_reporting"`
	RoutersOpen      int        `json:"routers_open"`
	RoutersHalfOpen  int        `json:"routers_half_open"`
}

// SuccessRate is successes over answered calls (NaN-free: 1 when none).
func (r *Row) SuccessRate() float64 { return rate(r.SuccessCount, r.FailureCount) }

// SuccessRate is successes over answered calls (1 when none).
func (r *InstanceRow) SuccessRate() float64 { return rate(r.SuccessCount, r.FailureCount) }

func rate(s, f uint64) float64 {
	if s+f == 0 {
		return 1
	}
	return float64(s) / float64(s+f)
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	u := t.UTC()
	return &u
}

func floatPtr(v float64) *float64 { return &v }

// same reports whether two rows hold the same values (a row is written only when it
// changed). Times are UTC without a monotonic reading (timePtr), floats never NaN.
func same(a, b *Row) bool { return reflect.DeepEqual(a, b) }

// Flush returns the rows to write at now: every extension whose row over its window
// (windows gives an extension's window; 0: the default of 60 s) changed since the last
// Flush, an extension whose calls all left the window once more with zero counts. The
// returned rows are remembered as written; call Unwritten for rows a failed write lost.
func (m *Merger) Flush(now time.Time, windows func(id string) time.Duration) []Row {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Row
	for id, x := range m.exts {
		w := windows(id)
		if w <= 0 {
			w = DefaultWindow
		}
		since := now.Add(-w).Truncate(m.interval)
		x.prune(since)
		row := x.row(id, now, since)
		if same(&row, x.written) {
			if len(x.buckets) == 0 && len(x.routers) == 0 {
				delete(m.exts, id) // nothing left to report: zeros were written
			}
			continue
		}
		r := row
		x.written = &r
		out = append(out, row)
	}
	return out
}

// OpenExtensions is the number of extensions whose circuit was open across the fleet at
// the last Flush.
func (m *Merger) OpenExtensions() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, x := range m.exts {
		if !x.openedAt.IsZero() {
			n++
		}
	}
	return n
}

// Unwritten forgets that rows were written (the write failed): the next Flush returns them
// again.
func (m *Merger) Unwritten(rows []Row) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, r := range rows {
		if x := m.exts[r.ExtensionID]; x != nil {
			x.written = nil
		}
	}
}

// DefaultWindow is the statistics window of an extension without an extension_health row
// (the column's default).
const DefaultWindow = 60 * time.Second

func (x *extension) row(id string, now, since time.Time) Row {
	c, sk, _ := x.window(since)
	f := x.fleet(now)
	st := f.state()
	switch {
	case st == protocol.BreakerOpen && x.openedAt.IsZero():
		x.openedAt = now
	case st != protocol.BreakerOpen:
		x.openedAt = time.Time{}
	}
	r := Row{ExtensionID: id, SuccessCount: c.success, FailureCount: c.failure, RejectedCount: c.rejected,
		LastSuccess: timePtr(x.lastSuccess), LastFailure: timePtr(x.lastFailure), State: st, OpenedAt: timePtr(x.openedAt),
		RoutersReporting: f.reporting, RoutersOpen: f.open, RoutersHalfOpen: f.halfOpen}
	if sk != nil && sk.GetCount() > 0 {
		r.AvgLatencyMS = floatPtr(round3(sk.GetSum() / sk.GetCount() * 1000))
		for q, p := range map[float64]**float64{0.5: &r.P50LatencyMS, 0.95: &r.P95LatencyMS, 0.99: &r.P99LatencyMS} {
			if v, err := sk.GetValueAtQuantile(q); err == nil {
				*p = floatPtr(round3(v * 1000))
			}
		}
	}
	ids := make([]string, 0, len(x.instances))
	for iid := range x.instances {
		ids = append(ids, iid)
	}
	slices.Sort(ids)
	for _, iid := range ids {
		s := x.instances[iid]
		s.prune(since)
		ic, _, p99 := s.window(since)
		fi := s.fleet(now)
		if len(s.buckets) == 0 && len(s.routers) == 0 {
			delete(x.instances, iid)
			continue
		}
		ir := InstanceRow{InstanceID: iid, SuccessCount: ic.success, FailureCount: ic.failure, RejectedCount: ic.rejected,
			LastSuccess: timePtr(s.lastSuccess), LastFailure: timePtr(s.lastFailure), State: fi.state(),
			RoutersReporting: fi.reporting, RoutersOpen: fi.open, RoutersHalfOpen: fi.halfOpen}
		if p99 > 0 {
			ir.P99LatencyMS = floatPtr(round3(p99))
		}
		r.Instances = append(r.Instances, ir)
	}
	return r
}

func round3(v float64) float64 {
	return float64(int64(v*1000+0.5)) / 1000
}
