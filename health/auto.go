package health

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/beamline/registry-syncer/cache"
)

// Automatic management (off by default). Every decision is taken by the leading syncer
// from the routers' reports:
//
//   - auto-disable: the extension's circuit is open at no fewer than QuorumRouters of the
//     routers reporting it and at no less than QuorumFraction of them, for Hold
//     consecutive evaluations, Cooldown after the previous automatic change of it, and
//     every live router implements auto_disabled (protocol.FeatureAutoDisabled);
//   - auto-enable (recovery) of an auto-disabled extension: over the last Cooldown (and
//     since it was disabled, or this term started) the routers' probe calls succeed at
//     MinSuccessRate or more,
//     and the last answered probe succeeded at no fewer than QuorumRouters routers and at
//     no less than QuorumFraction of the routers that probed it, for Hold evaluations;
//   - instance health_status (when Instances is on): from the instance's answered calls
//     over the window since its last change (at least MinCalls): unhealthy below
//     MinSuccessRate or when its circuit is open under the quorum, degraded below the
//     midpoint between MinSuccessRate and 1, healthy above; a change needs Hold
//     evaluations. An unhealthy instance gets no traffic, so one with no calls for
//     Cooldown goes back to unknown (usable) and is judged again.
//
// The quorum keeps one broken router from disabling an extension fleet-wide; Hold, the
// separate thresholds for opening and recovering, and Cooldown keep decisions from
// flapping. Each decision is one transaction, audited with changed_by naming the syncer
// and the reason; an operator's own enable or disable always wins (migration 00008's
// registry_auto_guard), and extension_health.auto_manage = 'off' exempts an extension.

// Policy holds the environment's defaults.
type Policy struct {
	AutoDisable    bool          // EXTENSION_REGISTRY_AUTO_DISABLE (false): auto_manage 'default' means on
	AutoEnable     bool          // EXTENSION_REGISTRY_AUTO_ENABLE (true): recover auto-disabled extensions
	Instances      bool          // EXTENSION_REGISTRY_AUTO_INSTANCE_HEALTH (false)
	QuorumRouters  int           // EXTENSION_REGISTRY_AUTO_QUORUM_ROUTERS (2)
	QuorumFraction float64       // EXTENSION_REGISTRY_AUTO_QUORUM_FRACTION (0.5)
	MinSuccessRate float64       // EXTENSION_REGISTRY_AUTO_MIN_SUCCESS_RATE (0.8)
	Hold           int           // EXTENSION_REGISTRY_AUTO_HOLD (2 evaluations)
	Cooldown       time.Duration // EXTENSION_REGISTRY_AUTO_COOLDOWN (60s)
	MinCalls       int           // EXTENSION_REGISTRY_AUTO_MIN_CALLS (10)
}

// WithDefaults fills zero fields (AutoEnable has no zero default: the caller sets it).
func (p Policy) WithDefaults() Policy {
	if p.QuorumRouters <= 0 {
		p.QuorumRouters = 2
	}
	if p.QuorumFraction <= 0 {
		p.QuorumFraction = 0.5
	}
	if p.MinSuccessRate <= 0 {
		p.MinSuccessRate = 0.8
	}
	if p.Hold <= 0 {
		p.Hold = 2
	}
	if p.Cooldown <= 0 {
		p.Cooldown = 60 * time.Second
	}
	if p.MinCalls <= 0 {
		p.MinCalls = 10
	}
	return p
}

// Validate reports an out-of-range field.
func (p Policy) Validate() error {
	switch {
	case p.QuorumFraction <= 0 || p.QuorumFraction > 1:
		return fmt.Errorf("auto quorum fraction %v: must be in (0, 1]", p.QuorumFraction)
	case p.MinSuccessRate <= 0 || p.MinSuccessRate > 1:
		return fmt.Errorf("auto min success rate %v: must be in (0, 1]", p.MinSuccessRate)
	}
	return nil
}

// Decision kinds.
const (
	AutoDisable    = "auto_disable"
	AutoEnable     = "auto_enable"
	InstanceHealth = "instance_health"
)

// Decision is one registry change automatic management wants.
type Decision struct {
	Kind        string
	ExtensionID string
	InstanceID  string // InstanceHealth
	From, To    string // InstanceHealth: health_status before and after
	Reason      string
}

func (d Decision) String() string {
	if d.Kind == InstanceHealth {
		return fmt.Sprintf("%s %s/%s %s -> %s: %s", d.Kind, d.ExtensionID, d.InstanceID, d.From, d.To, d.Reason)
	}
	return fmt.Sprintf("%s %s: %s", d.Kind, d.ExtensionID, d.Reason)
}

// Controller keeps automatic management's state for one leadership term: the streaks of
// each pending decision and when each extension last changed.
type Controller struct {
	p       Policy
	started time.Time
	streak  map[string]int
	changed map[string]time.Time // extension id, or id/instance
	// disabledSince is when this term saw an extension auto-disabled first (its recovery
	// counts the probes since then).
	disabledSince map[string]time.Time
	held          map[string]bool // decisions held back because a router lacks the feature (logged once)
}

// NewController starts a term's automatic management.
func NewController(p Policy, now time.Time) *Controller {
	return &Controller{p: p.WithDefaults(), started: now, streak: map[string]int{}, changed: map[string]time.Time{},
		disabledSince: map[string]time.Time{}, held: map[string]bool{}}
}

// Policy is the controller's policy, defaults filled.
func (c *Controller) Policy() Policy { return c.p }

func (c *Controller) managed(st Settings, ok bool) bool {
	if ok && st.AutoManage == ManageOn {
		return true
	}
	if ok && st.AutoManage == ManageOff {
		return false
	}
	return c.p.AutoDisable
}

func (c *Controller) minRate(st Settings, ok bool) float64 {
	if ok && st.HasMinRate {
		return st.MinSuccessRate
	}
	return c.p.MinSuccessRate
}

func (c *Controller) quorum(n, of int) bool {
	return n >= c.p.QuorumRouters && float64(n) >= c.p.QuorumFraction*float64(of)-1e-9
}

// hold counts one more evaluation in which key's condition held; it reports whether it
// has held long enough. cond false resets it.
func (c *Controller) hold(key string, cond bool) bool {
	if !cond {
		delete(c.streak, key)
		return false
	}
	c.streak[key]++
	return c.streak[key] >= c.p.Hold
}

func (c *Controller) cooled(key string, now time.Time) bool {
	at, ok := c.changed[key]
	return !ok || now.Sub(at) >= c.p.Cooldown
}

// Applied notes that d was committed at now.
func (c *Controller) Applied(d Decision, now time.Time) {
	key := d.ExtensionID
	if d.Kind == InstanceHealth {
		key += "/" + d.InstanceID
	}
	c.changed[key] = now
	delete(c.streak, d.Kind+":"+key)
	switch d.Kind {
	case AutoDisable:
		c.disabledSince[d.ExtensionID] = now
	case AutoEnable:
		delete(c.disabledSince, d.ExtensionID)
	}
}

// Decide evaluates every extension of snap at now. settings are the extension_health
// settings; lacking lists the live routers that do not implement auto_disabled (an
// auto-disable waits for them). held receives each decision held back, once.
func (c *Controller) Decide(m *Merger, snap *cache.Snapshot, settings map[string]Settings, lacking []string, now time.Time, held func(Decision, []string)) []Decision {
	if snap == nil {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Decision
	for _, e := range snap.All() {
		st, ok := settings[e.ID]
		x := m.exts[e.ID]
		if !e.Enabled || (ok && st.AutoManage == ManageOff) {
			c.forget(e.ID)
			continue
		}
		minRate := c.minRate(st, ok)
		if e.AutoDisabled {
			if _, seen := c.disabledSince[e.ID]; !seen {
				c.disabledSince[e.ID] = c.started
			}
			if c.p.AutoEnable || c.managed(st, ok) {
				if d, ok := c.recover(e.ID, x, minRate, now); ok {
					out = append(out, d)
				}
			}
		} else {
			delete(c.disabledSince, e.ID)
			if c.managed(st, ok) && x != nil {
				f := x.fleet(now)
				key := AutoDisable + ":" + e.ID
				if c.hold(key, c.quorum(f.open, f.reporting)) && c.cooled(e.ID, now) {
					d := Decision{Kind: AutoDisable, ExtensionID: e.ID,
						Reason: fmt.Sprintf("circuit open in %d of %d routers calling it (quorum: %d routers and %.0f%%)",
							f.open, f.reporting, c.p.QuorumRouters, 100*c.p.QuorumFraction)}
					if len(lacking) > 0 {
						if !c.held[e.ID] && held != nil {
							held(d, lacking)
						}
						c.held[e.ID] = true
					} else {
						delete(c.held, e.ID)
						out = append(out, d)
					}
				}
			}
		}
		if (c.p.Instances || (ok && st.AutoManage == ManageOn)) && x != nil && !e.AutoDisabled {
			out = append(out, c.instances(e, x, st, ok, minRate, now)...)
		}
	}
	return out
}

func (c *Controller) forget(id string) {
	for k := range c.streak {
		if strings.HasSuffix(k, ":"+id) || strings.Contains(k, ":"+id+"/") {
			delete(c.streak, k)
		}
	}
	delete(c.disabledSince, id)
}

// recover decides whether an auto-disabled extension recovered.
func (c *Controller) recover(id string, x *extension, minRate float64, now time.Time) (Decision, bool) {
	key := AutoEnable + ":" + id
	if x == nil {
		c.hold(key, false)
		return Decision{}, false
	}
	// The fleet's success rate counts recent probes only (the last Cooldown, and not
	// before the disable): old failures must not delay a recovery the probes show.
	since := c.disabledSince[id]
	if recent := now.Add(-c.p.Cooldown); recent.After(since) {
		since = recent
	}
	var cnt counts
	for i := len(x.buckets) - 1; i >= 0 && !x.buckets[i].start.Before(since); i-- {
		cnt.plus(x.buckets[i].counts)
	}
	probing, recovered := 0, 0
	for _, sv := range x.routers {
		last := sv.lastSuccess
		if sv.lastFailure.After(last) {
			last = sv.lastFailure
		}
		if last.Before(since) {
			continue
		}
		probing++
		if sv.lastSuccess.After(sv.lastFailure) {
			recovered++
		}
	}
	r := rate(cnt.success, cnt.failure)
	cond := cnt.success > 0 && r >= minRate && c.quorum(recovered, probing)
	if !c.hold(key, cond) || !c.cooled(id, now) {
		return Decision{}, false
	}
	return Decision{Kind: AutoEnable, ExtensionID: id,
		Reason: fmt.Sprintf("recovered: %d of %d probing routers succeed, success rate %.2f >= %.2f over %d answered probes",
			recovered, probing, r, minRate, cnt.success+cnt.failure)}, true
}

// instances decides the health_status of e's instances.
func (c *Controller) instances(e *cache.Extension, x *extension, st Settings, ok bool, minRate float64, now time.Time) []Decision {
	window := DefaultWindow
	if ok && st.Window > 0 {
		window = st.Window
	}
	var out []Decision
	for i := range e.Instances {
		in := &e.Instances[i]
		if !in.Enabled {
			continue
		}
		key := e.ID + "/" + in.InstanceID
		since := now.Add(-window)
		if at, ok := c.changed[key]; ok && at.After(since) {
			since = at
		}
		var cnt counts
		var f fleetState
		if s := x.instances[in.InstanceID]; s != nil {
			for j := len(s.buckets) - 1; j >= 0 && !s.buckets[j].start.Before(since); j-- {
				cnt.plus(s.buckets[j].counts)
			}
			f = s.fleet(now)
		}
		answered := cnt.success + cnt.failure
		want := ""
		var reason string
		r := rate(cnt.success, cnt.failure)
		switch {
		case c.quorum(f.open, f.reporting):
			want, reason = cache.HealthUnhealthy, fmt.Sprintf("circuit open in %d of %d routers calling it", f.open, f.reporting)
		case answered >= uint64(c.p.MinCalls) && r < minRate:
			want, reason = cache.HealthUnhealthy, fmt.Sprintf("success rate %.2f < %.2f over %d calls", r, minRate, answered)
		case answered >= uint64(c.p.MinCalls) && r < (1+minRate)/2:
			want, reason = cache.HealthDegraded, fmt.Sprintf("success rate %.2f < %.2f over %d calls", r, (1+minRate)/2, answered)
		case answered >= uint64(c.p.MinCalls):
			want, reason = cache.HealthHealthy, fmt.Sprintf("success rate %.2f over %d calls", r, answered)
		case answered == 0 && in.HealthStatus == cache.HealthUnhealthy:
			last := c.started
			if at, ok := c.changed[key]; ok {
				last = at
			}
			if now.Sub(last) >= c.p.Cooldown {
				want, reason = cache.HealthUnknown, fmt.Sprintf("no calls for %s since it was marked unhealthy: usable again to be judged", c.p.Cooldown)
			}
		}
		hkey := InstanceHealth + ":" + key
		if want == "" || want == in.HealthStatus {
			c.hold(hkey, false)
			continue
		}
		if !c.hold(hkey, true) {
			continue
		}
		out = append(out, Decision{Kind: InstanceHealth, ExtensionID: e.ID, InstanceID: in.InstanceID, From: in.HealthStatus, To: want, Reason: reason})
	}
	return out
}

// Apply commits d in its own transaction, as actor (changed_by is "<actor>: <kind>:
// <reason>"), only if the registry still is as d expects (an operator's concurrent
// change wins). manageDefault is the environment's auto-disable setting. It reports
// whether a row changed.
func Apply(ctx context.Context, db interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}, d Decision, actor string, manageDefault bool) (bool, error) {
	tx, err := db.Begin(ctx)
	if err != nil {
		return false, fmt.Errorf("%s: %w", d, err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, `SELECT set_config('registry.auto_manage', 'syncer', true), set_config('registry.changed_by', $1, true)`,
		fmt.Sprintf("%s: %s: %s", actor, d.Kind, d.Reason)); err != nil {
		return false, fmt.Errorf("%s: %w", d, err)
	}
	var n int64
	switch d.Kind {
	case AutoDisable:
		tag, err := tx.Exec(ctx, `
			UPDATE extensions SET auto_disabled = true
			WHERE id = $1 AND enabled AND NOT auto_disabled
			  AND coalesce((SELECT auto_manage FROM extension_health WHERE extension_id = $1), 'default')
			      IN ('on', CASE WHEN $2 THEN 'default' ELSE 'on' END)`, d.ExtensionID, manageDefault)
		if err != nil {
			return false, fmt.Errorf("%s: %w", d, err)
		}
		n = tag.RowsAffected()
	case AutoEnable:
		tag, err := tx.Exec(ctx, `UPDATE extensions SET auto_disabled = false WHERE id = $1 AND auto_disabled`, d.ExtensionID)
		if err != nil {
			return false, fmt.Errorf("%s: %w", d, err)
		}
		n = tag.RowsAffected()
	case InstanceHealth:
		tag, err := tx.Exec(ctx, `
			UPDATE extension_instances SET health_status = $3, last_health_check = now()
			WHERE extension_id = $1 AND instance_id = $2 AND health_status = $4 AND enabled`,
			d.ExtensionID, d.InstanceID, d.To, d.From)
		if err != nil {
			return false, fmt.Errorf("%s: %w", d, err)
		}
		n = tag.RowsAffected()
	default:
		return false, fmt.Errorf("unknown decision kind %q", d.Kind)
	}
	if n == 0 {
		return false, nil
	}
	if err := tx.Commit(ctx); err != nil {
		return false, fmt.Errorf("%s: commit: %w", d, err)
	}
	return true, nil
}
