// Package fleet owns the leading syncer's view of the routers: their reports merged into
// one state per router, liveness (a router unheard for three of its report intervals is
// gone), the lag of each behind the published revision, and the time from a revision's
// commit to the last live router applying it.
package fleet

import (
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/beamline/registry-syncer/protocol"
)

// goneAfter is how many of its own report intervals a router may stay silent before it
// counts as gone; forgetAfter, before it is dropped from the view.
const (
	goneAfter   = 3
	forgetAfter = 60
)

// maxPending bounds the published revisions waiting for the last router.
const maxPending = 4096

// Metrics are the fleet's Prometheus metrics, registered once per process.
type Metrics struct {
	Routers     *prometheus.GaugeVec // by state
	Lag         *prometheus.GaugeVec // routers by lag bucket
	Convergence prometheus.Histogram
	Reports     prometheus.Counter
	BadReports  prometheus.Counter
}

// LagBuckets are the label values of registry_routers_lag: how many revisions a live
// router is behind the published one.
var LagBuckets = []string{"0", "1", "2-10", "11-100", ">100"}

func lagBucket(lag int64) string {
	switch {
	case lag <= 0:
		return "0"
	case lag == 1:
		return "1"
	case lag <= 10:
		return "2-10"
	case lag <= 100:
		return "11-100"
	}
	return ">100"
}

// NewMetrics creates the metrics and registers them on reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Routers: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "registry_routers",
			Help: "Routers known to the leading syncer, by state (ready, stale, rejecting, starting, gone)."}, []string{"state"}),
		Lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "registry_routers_lag",
			Help: "Live routers by how many revisions they are behind the published one."}, []string{"revisions"}),
		Convergence: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "registry_commit_to_last_router_seconds",
			Help:    "Time from a revision's commit to the last live router reporting it applied.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16)}),
		Reports:    prometheus.NewCounter(prometheus.CounterOpts{Name: "registry_router_reports_total", Help: "Router reports received by the leading syncer."}),
		BadReports: prometheus.NewCounter(prometheus.CounterOpts{Name: "registry_router_reports_invalid_total", Help: "Router reports that could not be decoded."}),
	}
	if reg != nil {
		reg.MustRegister(m.Routers, m.Lag, m.Convergence, m.Reports, m.BadReports)
	}
	return m
}

// Fleet is one leadership term's view of the routers. Safe for concurrent use.
type Fleet struct {
	m *Metrics

	mu        sync.Mutex
	routers   map[string]*entry
	published int64
	pending   map[int64]time.Time // published revision -> commit time, until every live router has it
	least     leastLive
}

type entry struct {
	rep      protocol.Report
	received time.Time
	counted  bool // live when least was last computed, so counted in it
}

// leastLive is the least revision among the live routers, kept up to date report by report
// so that a report costs O(1), not a scan of every router: with 1,000 routers each
// reporting every change, scanning on every report made one change cost a million entry
// checks on the syncer (BenchmarkObserve). A scan is needed again only when the routers at
// the least revision have all moved on, or a counted router may have gone silent since the
// last scan (validUntil: the earliest time one of them becomes gone), or entries were dropped.
type leastLive struct {
	valid      bool
	any        bool  // some router is live
	rev        int64 // the least revision among them
	at         int   // counted routers at rev
	scannedAt  time.Time
	validUntil time.Time
}

// New returns an empty fleet view reporting into m (nil: no metrics).
func New(m *Metrics) *Fleet {
	return &Fleet{m: m, routers: map[string]*entry{}, pending: map[int64]time.Time{}}
}

// Published notes that rev, committed at committedAt, is now the published revision.
func (f *Fleet) Published(rev int64, committedAt time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.published = max(f.published, rev)
	if committedAt.IsZero() || len(f.routers) == 0 {
		return
	}
	if len(f.pending) >= maxPending {
		oldest := int64(-1)
		for r := range f.pending {
			if oldest < 0 || r < oldest {
				oldest = r
			}
		}
		delete(f.pending, oldest)
	}
	f.pending[rev] = committedAt
}

// Observe merges a report received at at.
func (f *Fleet) Observe(r *protocol.Report, at time.Time) {
	if f.m != nil {
		f.m.Reports.Inc()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	e := f.routers[r.RouterID]
	if e == nil {
		e = &entry{}
		f.routers[r.RouterID] = e
	}
	old, wasCounted := e.rep.Revision, e.counted
	e.rep, e.received = *r, at
	f.observed(e, old, wasCounted, at)
	f.converged(at)
}

// observed updates the least live revision for e's new report (its previous revision old,
// counted in it or not) received at now.
func (f *Fleet) observed(e *entry, old int64, wasCounted bool, now time.Time) {
	l := &f.least
	if !l.valid || now.Before(l.scannedAt) || !now.Before(l.validUntil) {
		l.valid = false // a scan at the next converged
		return
	}
	if wasCounted && old == l.rev {
		l.at--
	}
	e.counted = true
	if until := e.goneAt(); until.Before(l.validUntil) {
		l.validUntil = until
	}
	switch rev := e.rep.Revision; {
	case !l.any || rev < l.rev:
		l.any, l.rev, l.at = true, rev, 1
	case rev == l.rev:
		l.at++
	}
	if l.at == 0 {
		l.valid = false // the least moved up: which routers hold it now takes a scan
	}
}

// endOfTime bounds a least computed with no live router (none can become gone).
var endOfTime = time.Unix(1<<40, 0)

// scan computes the least live revision at now from every router.
func (f *Fleet) scan(now time.Time) {
	l := leastLive{valid: true, scannedAt: now, validUntil: endOfTime}
	for _, e := range f.routers {
		e.counted = !e.gone(now)
		if !e.counted {
			continue
		}
		if until := e.goneAt(); until.Before(l.validUntil) {
			l.validUntil = until
		}
		switch {
		case !l.any || e.rep.Revision < l.rev:
			l.any, l.rev, l.at = true, e.rep.Revision, 1
		case e.rep.Revision == l.rev:
			l.at++
		}
	}
	f.least = l
}

// Invalid counts a report that could not be decoded.
func (f *Fleet) Invalid() {
	if f.m != nil {
		f.m.BadReports.Inc()
	}
}

func (e *entry) gone(now time.Time) bool {
	return now.Sub(e.received) > e.silence()
}

func (e *entry) silence() time.Duration {
	return goneAfter * time.Duration(e.rep.IntervalMS) * time.Millisecond
}

// goneAt is the first time at which e counts as gone (unless it reports again).
func (e *entry) goneAt() time.Time { return e.received.Add(e.silence() + time.Nanosecond) }

// converged observes the revisions every live router has applied now.
func (f *Fleet) converged(now time.Time) {
	if len(f.pending) == 0 {
		return
	}
	l := &f.least
	if !l.valid || now.Before(l.scannedAt) || !now.Before(l.validUntil) {
		f.scan(now)
	}
	if !l.any {
		return
	}
	least := l.rev
	for rev, at := range f.pending {
		if rev <= least {
			if f.m != nil {
				f.m.Convergence.Observe(now.Sub(at).Seconds())
			}
			delete(f.pending, rev)
		}
	}
}

// Routers returns every known router's status at now, sorted by id, and updates the
// gauges. Routers silent for long are forgotten.
func (f *Fleet) Routers(now time.Time) []protocol.RouterStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]protocol.RouterStatus, 0, len(f.routers))
	states := map[string]int{}
	lags := map[string]int{}
	for id, e := range f.routers {
		silent := now.Sub(e.received)
		if silent > forgetAfter*time.Duration(e.rep.IntervalMS)*time.Millisecond {
			delete(f.routers, id)
			f.least.valid = false
			continue
		}
		st := protocol.RouterStatus{RouterID: id, Revision: e.rep.Revision, Checksum: e.rep.Checksum, ChecksumV2: e.rep.ChecksumV2,
			State: e.rep.State, StateSince: e.rep.StateSince, LastReport: e.received,
			StalenessS: silent.Seconds(), Lag: max(0, f.published-e.rep.Revision), LastRejection: e.rep.LastRejection}
		if e.gone(now) {
			st.State, st.StateSince = protocol.RouterGone, e.received
		} else {
			lags[lagBucket(st.Lag)]++
		}
		states[st.State]++
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].RouterID < out[j].RouterID })
	if f.m != nil {
		for _, s := range []string{protocol.RouterReady, protocol.RouterStale, protocol.RouterRejecting, protocol.RouterStarting, protocol.RouterGone} {
			f.m.Routers.WithLabelValues(s).Set(float64(states[s]))
		}
		for _, b := range LagBuckets {
			f.m.Lag.WithLabelValues(b).Set(float64(lags[b]))
		}
	}
	return out
}

// Without lists the live routers whose reports do not list feature (sorted).
func (f *Fleet) Without(feature string, now time.Time) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for id, e := range f.routers {
		if !e.gone(now) && !e.rep.Has(feature) {
			out = append(out, id)
		}
	}
	sort.Strings(out)
	return out
}

// Reset zeroes the gauges (the term that kept this view ended).
func (m *Metrics) Reset() {
	if m == nil {
		return
	}
	m.Routers.Reset()
	m.Lag.Reset()
}
