package health

import (
	"context"
	"fmt"
	"time"
)

// ExtensionHealth is one extension in GET /admin/extensions/health.
type ExtensionHealth struct {
	Row
	Enabled      bool       `json:"enabled"`
	AutoDisabled bool       `json:"auto_disabled"`
	AutoManage   string     `json:"auto_manage"`
	SuccessRate  *float64   `json:"success_rate,omitempty"` // over answered calls in the window (absent: none)
	Status       string     `json:"status"`                 // healthy, degraded, open, half_open, unknown, disabled, auto_disabled
	UpdatedAt    *time.Time `json:"updated_at,omitempty"`
}

// Summary is the fleet-wide summary of GET /admin/extensions/health (the old design's).
type Summary struct {
	Total        int      `json:"total"`
	Healthy      int      `json:"healthy"`
	Degraded     int      `json:"degraded"`
	Open         int      `json:"open"`
	HalfOpen     int      `json:"half_open"`
	Unknown      int      `json:"unknown"` // no answered call in the window
	Disabled     int      `json:"disabled"`
	AutoDisabled int      `json:"auto_disabled"`
	AvgSuccess   *float64 `json:"avg_success_rate,omitempty"` // mean over extensions with answered calls
	AvgP95MS     *float64 `json:"avg_p95_ms,omitempty"`       // mean over extensions with a p95
}

// View is the answer of GET /admin/extensions/health.
type View struct {
	Summary    Summary           `json:"summary"`
	Extensions []ExtensionHealth `json:"extensions"`
}

// Statuses of ExtensionHealth.
const (
	StatusHealthy      = "healthy"
	StatusDegraded     = "degraded"
	StatusOpen         = "open"
	StatusHalfOpen     = "half_open"
	StatusUnknown      = "unknown"
	StatusDisabled     = "disabled"
	StatusAutoDisabled = "auto_disabled"
)

// Read builds the view from the database (any syncer, leader or standby, serves it):
// every extension, with its extension_health row where it has one. minSuccessRate is the
// environment's default (an extension's min_success_rate wins): below it an extension
// with calls is degraded.
func Read(ctx context.Context, q Querier, minSuccessRate float64) (*View, error) {
	rows, err := q.Query(ctx, `
		SELECT e.id, e.enabled, e.auto_disabled, coalesce(h.auto_manage, 'default'), h.min_success_rate,
			coalesce(h.success_count, 0), coalesce(h.failure_count, 0), coalesce(h.rejected_count, 0),
			h.last_success, h.last_failure, h.avg_latency_ms, h.p50_latency_ms, h.p95_latency_ms, h.p99_latency_ms,
			coalesce(h.circuit_breaker_state, 'closed'), h.opened_at, coalesce(h.routers_reporting, 0),
			coalesce(h.routers_open, 0), coalesce(h.routers_half_open, 0), h.updated_at
		FROM extensions e LEFT JOIN extension_health h ON h.extension_id = e.id
		ORDER BY e.id`)
	if err != nil {
		return nil, fmt.Errorf("read extension health: %w", err)
	}
	defer rows.Close()
	v := &View{Extensions: []ExtensionHealth{}}
	index := map[string]int{}
	var sumRate, sumP95 float64
	var nRate, nP95 int
	for rows.Next() {
		var x ExtensionHealth
		var minRate *float64
		var s, f, rj int64
		if err := rows.Scan(&x.ExtensionID, &x.Enabled, &x.AutoDisabled, &x.AutoManage, &minRate, &s, &f, &rj,
			&x.LastSuccess, &x.LastFailure, &x.AvgLatencyMS, &x.P50LatencyMS, &x.P95LatencyMS, &x.P99LatencyMS,
			&x.State, &x.OpenedAt, &x.RoutersReporting, &x.RoutersOpen, &x.RoutersHalfOpen, &x.UpdatedAt); err != nil {
			return nil, fmt.Errorf("read extension health: %w", err)
		}
		x.SuccessCount, x.FailureCount, x.RejectedCount = uint64(s), uint64(f), uint64(rj)
		threshold := minSuccessRate
		if minRate != nil {
			threshold = *minRate
		}
		answered := s + f
		if answered > 0 {
			r := x.Row.SuccessRate()
			x.SuccessRate = &r
			sumRate += r
			nRate++
		}
		if x.P95LatencyMS != nil {
			sumP95 += *x.P95LatencyMS
			nP95++
		}
		switch {
		case !x.Enabled:
			x.Status = StatusDisabled
			v.Summary.Disabled++
		case x.AutoDisabled:
			x.Status = StatusAutoDisabled
			v.Summary.AutoDisabled++
		case x.State == "open":
			x.Status = StatusOpen
			v.Summary.Open++
		case x.State == "half_open":
			x.Status = StatusHalfOpen
			v.Summary.HalfOpen++
		case answered == 0:
			x.Status = StatusUnknown
			v.Summary.Unknown++
		case *x.SuccessRate < threshold:
			x.Status = StatusDegraded
			v.Summary.Degraded++
		default:
			x.Status = StatusHealthy
			v.Summary.Healthy++
		}
		index[x.ExtensionID] = len(v.Extensions)
		v.Extensions = append(v.Extensions, x)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read extension health: %w", err)
	}
	rows.Close()
	v.Summary.Total = len(v.Extensions)
	if nRate > 0 {
		a := round3(sumRate / float64(nRate))
		v.Summary.AvgSuccess = &a
	}
	if nP95 > 0 {
		a := round3(sumP95 / float64(nP95))
		v.Summary.AvgP95MS = &a
	}
	irows, err := q.Query(ctx, `
		SELECT extension_id, instance_id, success_count, failure_count, rejected_count, last_success, last_failure,
			p99_latency_ms, circuit_breaker_state, routers_reporting, routers_open, routers_half_open
		FROM extension_instance_health ORDER BY extension_id, instance_id`)
	if err != nil {
		return nil, fmt.Errorf("read instance health: %w", err)
	}
	defer irows.Close()
	for irows.Next() {
		var id string
		var in InstanceRow
		var s, f, rj int64
		if err := irows.Scan(&id, &in.InstanceID, &s, &f, &rj, &in.LastSuccess, &in.LastFailure, &in.P99LatencyMS,
			&in.State, &in.RoutersReporting, &in.RoutersOpen, &in.RoutersHalfOpen); err != nil {
			return nil, fmt.Errorf("read instance health: %w", err)
		}
		in.SuccessCount, in.FailureCount, in.RejectedCount = uint64(s), uint64(f), uint64(rj)
		if i, ok := index[id]; ok {
			v.Extensions[i].Instances = append(v.Extensions[i].Instances, in)
		}
	}
	if err := irows.Err(); err != nil {
		return nil, fmt.Errorf("read instance health: %w", err)
	}
	return v, nil
}
