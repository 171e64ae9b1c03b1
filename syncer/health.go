package syncer

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/beamline/registry-syncer/health"
	"github.com/beamline/registry-syncer/protocol"
)

// termHealth is one term's control loop (package health): the routers' calls merged into
// extension_health each HealthInterval, and the automatic management decisions.
type termHealth struct {
	merger *health.Merger
	ctl    *health.Controller
	done   chan struct{}
}

// startHealth starts the term's control loop; the returned stop waits for it to end.
func (s *term) startHealth(ctx context.Context, pool *pgxpool.Pool) func() {
	ctx, cancel := context.WithCancel(ctx)
	h := s.health
	go func() {
		defer close(h.done)
		tick := time.NewTicker(s.cfg.HealthInterval)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				s.healthRound(ctx, pool, time.Now())
			}
		}
	}()
	return func() {
		cancel()
		<-h.done
		// The gauges describe this term's view: a standby reports none.
		s.metrics.Health.CircuitOpen.Set(0)
		s.metrics.Health.AutoDisabled.Set(0)
	}
}

// observeReport merges a report's calls (called from the report subscription).
func (s *term) observeReport(r *protocol.Report, at time.Time) {
	if s.health == nil {
		return
	}
	before := s.health.merger.Invalid()
	s.health.merger.Observe(r, s.latest.Load(), at)
	if n := s.health.merger.Invalid() - before; n > 0 {
		s.metrics.Health.Refused.Add(float64(n))
	}
}

// healthRound is one interval: write what changed, then decide and apply.
func (s *term) healthRound(ctx context.Context, pool *pgxpool.Pool, now time.Time) {
	h, m := s.health, s.metrics.Health
	defer func(start time.Time) { m.EvaluateSeconds.Observe(time.Since(start).Seconds()) }(time.Now())
	if s.lease != nil && s.lease.Valid() != nil {
		return
	}
	settings, err := health.ReadSettings(ctx, pool)
	if err != nil {
		s.log.WarnContext(ctx, "health: cannot read extension_health; retrying at the next interval", "error", err)
		return
	}
	rows := h.merger.Flush(now, func(id string) time.Duration { return settings[id].Window })
	m.CircuitOpen.Set(float64(h.merger.OpenExtensions()))
	if err := health.Write(ctx, pool, rows); err != nil {
		h.merger.Unwritten(rows)
		m.WriteErrors.Inc()
		s.log.WarnContext(ctx, "health: cannot write extension_health; retrying at the next interval", "error", err, "rows", len(rows))
	} else {
		m.Writes.Add(float64(len(rows)))
	}
	snap := s.latest.Load()
	if snap != nil {
		n := 0
		for _, e := range snap.All() {
			if e.AutoDisabled {
				n++
			}
		}
		m.AutoDisabled.Set(float64(n))
	}
	lacking := s.fleetView.Without(protocol.FeatureAutoDisabled, now)
	decisions := h.ctl.Decide(h.merger, snap, settings, lacking, now, func(d health.Decision, lacking []string) {
		m.Held.Inc()
		s.log.WarnContext(ctx, "health: automatic disable held back: routers that do not implement auto_disabled would refuse the revision",
			"extension", d.ExtensionID, "reason", d.Reason, "routers", lacking)
	})
	for _, d := range decisions {
		if s.lease != nil && s.lease.Valid() != nil {
			return
		}
		changed, err := health.Apply(ctx, pool, d, "syncer "+s.cfg.InstanceID, h.ctl.Policy().AutoDisable)
		if err != nil {
			s.log.WarnContext(ctx, "health: automatic decision failed", "decision", d.String(), "error", err)
			continue
		}
		if !changed {
			s.log.InfoContext(ctx, "health: automatic decision not applied: the registry changed meanwhile", "decision", d.String())
			continue
		}
		h.ctl.Applied(d, now)
		m.Decisions.WithLabelValues(d.Kind).Inc()
		s.log.InfoContext(ctx, "health: automatic decision committed", "kind", d.Kind, "extension", d.ExtensionID,
			"instance", d.InstanceID, "to", d.To, "reason", d.Reason)
	}
}

// ExtensionsHealth reads the fleet's extension health from the database (GET
// /admin/extensions/health): any syncer, leader or standby, answers it.
func (s *Syncer) ExtensionsHealth(ctx context.Context) (*health.View, error) {
	if s.cfg.Source == SourceFixtures {
		return nil, errors.New("extension health needs the database source")
	}
	pool, err := s.Pool()
	if err != nil {
		return nil, err
	}
	return health.Read(ctx, pool, s.cfg.Auto.MinSuccessRate)
}
