package health

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Querier is what the store needs of a pool or a transaction.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

// Auto-management settings of extension_health.auto_manage.
const (
	ManageDefault = "default" // the environment's setting (EXTENSION_REGISTRY_AUTO_DISABLE)
	ManageOn      = "on"
	ManageOff     = "off"
)

// Settings are one extension's health settings from extension_health (the column
// defaults when it has no row).
type Settings struct {
	Window         time.Duration
	AutoManage     string
	MinSuccessRate float64 // meaningful when HasMinRate (else the environment's applies)
	HasMinRate     bool
}

// ReadSettings reads every extension_health row's settings.
func ReadSettings(ctx context.Context, q Querier) (map[string]Settings, error) {
	rows, err := q.Query(ctx, `SELECT extension_id, window_seconds, auto_manage, min_success_rate FROM extension_health`)
	if err != nil {
		return nil, fmt.Errorf("read extension_health settings: %w", err)
	}
	defer rows.Close()
	out := map[string]Settings{}
	for rows.Next() {
		var id, manage string
		var window int
		var minRate *float64
		if err := rows.Scan(&id, &window, &manage, &minRate); err != nil {
			return nil, fmt.Errorf("read extension_health settings: %w", err)
		}
		s := Settings{Window: time.Duration(window) * time.Second, AutoManage: manage}
		if minRate != nil {
			s.MinSuccessRate, s.HasMinRate = *minRate, true
		}
		out[id] = s
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read extension_health settings: %w", err)
	}
	return out, nil
}

// Write upserts rows into extension_health and extension_instance_health in one round
// trip. Rows of extensions (or instances) deleted meanwhile are skipped. last_success and
// last_failure never move back.
func Write(ctx context.Context, q Querier, rows []Row) error {
	if len(rows) == 0 {
		return nil
	}
	b := &pgx.Batch{}
	for i := range rows {
		r := &rows[i]
		b.Queue(`
			INSERT INTO extension_health AS h (extension_id, last_success, last_failure, success_count, failure_count,
				rejected_count, avg_latency_ms, p50_latency_ms, p95_latency_ms, p99_latency_ms, circuit_breaker_state,
				opened_at, routers_reporting, routers_open, routers_half_open, updated_at)
			SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, now()
			WHERE EXISTS (SELECT 1 FROM extensions WHERE id = $1)
			ON CONFLICT (extension_id) DO UPDATE SET
				last_success = greatest(h.last_success, excluded.last_success),
				last_failure = greatest(h.last_failure, excluded.last_failure),
				success_count = excluded.success_count, failure_count = excluded.failure_count,
				rejected_count = excluded.rejected_count, avg_latency_ms = excluded.avg_latency_ms,
				p50_latency_ms = excluded.p50_latency_ms, p95_latency_ms = excluded.p95_latency_ms,
				p99_latency_ms = excluded.p99_latency_ms, circuit_breaker_state = excluded.circuit_breaker_state,
				opened_at = excluded.opened_at, routers_reporting = excluded.routers_reporting,
				routers_open = excluded.routers_open, routers_half_open = excluded.routers_half_open,
				updated_at = now()`,
			r.ExtensionID, r.LastSuccess, r.LastFailure, int64(min(r.SuccessCount, 1<<62)), int64(min(r.FailureCount, 1<<62)),
			int64(min(r.RejectedCount, 1<<62)), r.AvgLatencyMS, r.P50LatencyMS, r.P95LatencyMS, r.P99LatencyMS, r.State,
			r.OpenedAt, r.RoutersReporting, r.RoutersOpen, r.RoutersHalfOpen)
		b.Queue(`DELETE FROM extension_instance_health h WHERE h.extension_id = $1 AND NOT EXISTS
			(SELECT 1 FROM extension_instances i WHERE i.extension_id = h.extension_id AND i.instance_id = h.instance_id)`, r.ExtensionID)
		for j := range r.Instances {
			in := &r.Instances[j]
			b.Queue(`
				INSERT INTO extension_instance_health AS h (extension_id, instance_id, last_success, last_failure,
					success_count, failure_count, rejected_count, p99_latency_ms, circuit_breaker_state,
					routers_reporting, routers_open, routers_half_open, updated_at)
				SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, now()
				WHERE EXISTS (SELECT 1 FROM extension_instances WHERE extension_id = $1 AND instance_id = $2)
				ON CONFLICT (extension_id, instance_id) DO UPDATE SET
					last_success = greatest(h.last_success, excluded.last_success),
					last_failure = greatest(h.last_failure, excluded.last_failure),
					success_count = excluded.success_count, failure_count = excluded.failure_count,
					rejected_count = excluded.rejected_count, p99_latency_ms = excluded.p99_latency_ms,
					circuit_breaker_state = excluded.circuit_breaker_state, routers_reporting = excluded.routers_reporting,
					routers_open = excluded.routers_open, routers_half_open = excluded.routers_half_open, updated_at = now()`,
				r.ExtensionID, in.InstanceID, in.LastSuccess, in.LastFailure, int64(min(in.SuccessCount, 1<<62)),
				int64(min(in.FailureCount, 1<<62)), int64(min(in.RejectedCount, 1<<62)), in.P99LatencyMS, in.State,
				in.RoutersReporting, in.RoutersOpen, in.RoutersHalfOpen)
		}
	}
	br := q.SendBatch(ctx, b)
	for range b.Len() {
		if _, err := br.Exec(); err != nil {
			_ = br.Close()
			return fmt.Errorf("write extension health: %w", err)
		}
	}
	if err := br.Close(); err != nil {
		return fmt.Errorf("write extension health: %w", err)
	}
	return nil
}
