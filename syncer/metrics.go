package syncer

import (
	"sync/atomic"

	"github.com/beamline/registry-syncer/fleet"
	"github.com/beamline/registry-syncer/health"
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the syncer's Prometheus metrics, registered on an injected registry.
type Metrics struct {
	Notifications     prometheus.Counter
	Revisions         prometheus.Counter
	PublishErrors     prometheus.Counter
	Republished       prometheus.Counter
	ReconcileRuns     prometheus.Counter
	ReconcileRepairs  prometheus.Counter
	DriftExtensions   prometheus.Counter
	ApplyErrors       prometheus.Counter
	TimelineChanges   prometheus.Counter
	Withheld          prometheus.Gauge
	SnapshotWrites    prometheus.Counter
	SnapshotDeferrals prometheus.Counter
	ListenerReconnect prometheus.Counter
	LastPublished     prometheus.Gauge
	DatabaseRevision  prometheus.Gauge
	SnapshotRevision  prometheus.Gauge
	SnapshotBytes     prometheus.Gauge
	Extensions        prometheus.Gauge
	Leader            prometheus.Gauge
	DatabaseUp        prometheus.Gauge
	Lag               prometheus.Histogram
	InFlight          prometheus.Gauge
	HistoryDeltas     prometheus.Gauge
	HistoryBytes      prometheus.Gauge
	// ChangeLogRows is the most change-log rows one read held (a batch of revisions, or a
	// page of a huge one), since the process started: bounded by
	// EXTENSION_REGISTRY_CHANGELOG_BATCH_BYTES, whatever the size of a revision.
	ChangeLogRows prometheus.Gauge
	changeRowsMax atomic.Int64
	// Fleet are the metrics of the leader's fleet view (router reports).
	Fleet *fleet.Metrics
	// Health are the control loop's (extension health, automatic management).
	Health *health.Metrics
}

// NewMetrics creates the metrics and registers them on reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	c := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Namespace: "registry_syncer", Name: name, Help: help})
	}
	g := func(name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "registry_syncer", Name: name, Help: help})
	}
	m := &Metrics{
		Notifications:     c("notifications_total", "Wake-ups received from the LISTEN connection."),
		Revisions:         c("revisions_published_total", "Revisions published as deltas."),
		PublishErrors:     c("publish_errors_total", "Failed attempts to publish a delta, snapshot or heartbeat."),
		Republished:       c("republished_total", "Deltas republished because the stream had lost them."),
		ReconcileRuns:     c("reconcile_runs_total", "Full reconciles of the cache against the database."),
		ReconcileRepairs:  c("reconcile_repairs_total", "Reconciles that found drift and repaired it under a new revision."),
		DriftExtensions:   c("drift_extensions_total", "Extensions found different from the database by a reconcile."),
		ApplyErrors:       c("apply_errors_total", "Revisions from the change log that could not be applied (not published)."),
		TimelineChanges:   c("timeline_changes_total", "Times the database was found on a new timeline (went back in time or was replaced) and its content was published above every published revision."),
		Withheld:          g("withheld_extensions", "Extensions withheld from publishing because the database holds a version of them the router side refuses (named in /readyz)."),
		SnapshotWrites:    c("snapshot_writes_total", "Snapshots written to the snapshot stream."),
		SnapshotDeferrals: c("snapshot_deferrals_total", "Times a snapshot write waited because the snapshots within EXTENSION_REGISTRY_SNAPSHOT_GRACE filled EXTENSION_REGISTRY_SNAPSHOT_RETAIN_BYTES."),
		ListenerReconnect: c("listener_reconnects_total", "Reconnects of the LISTEN connection."),
		LastPublished:     g("last_published_revision", "The last revision published."),
		DatabaseRevision:  g("database_revision", "The last committed revision seen in the database."),
		SnapshotRevision:  g("snapshot_revision", "The revision of the last snapshot written."),
		SnapshotBytes:     g("snapshot_bytes", "Size of the last snapshot written, in bytes."),
		Extensions:        g("extensions", "Extensions in the published snapshot."),
		Leader:            g("leader", "1 while this process is the publishing leader."),
		DatabaseUp:        g("database_up", "1 while the database answers."),
		InFlight:          g("deltas_in_flight", "Deltas whose store was sent and is not yet acknowledged and announced (at most EXTENSION_REGISTRY_PUBLISH_WINDOW)."),
		HistoryDeltas:     g("history_deltas", "Published deltas kept in memory to republish what the stream loses."),
		HistoryBytes:      g("history_bytes", "Bytes of the published deltas kept in memory (at most EXTENSION_REGISTRY_HISTORY_BYTES)."),
		ChangeLogRows:     g("changelog_rows_read_max", "The most change-log rows one read held at once (a batch of revisions, or a page of a huge revision) since the start; bounded by EXTENSION_REGISTRY_CHANGELOG_BATCH_BYTES."),
		Lag: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "registry_syncer", Name: "commit_to_publish_seconds",
			Help:    "Time from a registry transaction's commit to its delta being stored and announced.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}),
	}
	m.Fleet = fleet.NewMetrics(reg)
	m.Health = health.NewMetrics(reg)
	if reg != nil {
		reg.MustRegister(m.Notifications, m.Revisions, m.PublishErrors, m.Republished, m.ReconcileRuns,
			m.ReconcileRepairs, m.DriftExtensions, m.ApplyErrors, m.TimelineChanges, m.Withheld, m.SnapshotWrites, m.SnapshotDeferrals, m.ListenerReconnect,
			m.LastPublished, m.DatabaseRevision, m.SnapshotRevision, m.SnapshotBytes, m.Extensions, m.Leader,
			m.DatabaseUp, m.Lag, m.InFlight, m.HistoryDeltas, m.HistoryBytes, m.ChangeLogRows)
	}
	return m
}

// noteChangeRows records the change-log rows of one read of revisions.
func (m *Metrics) noteChangeRows(revs []revision) {
	n := 0
	for i := range revs {
		n += len(revs[i].Changes)
	}
	m.noteChangePage(n)
}

// noteChangePage records n change-log rows held by one read.
func (m *Metrics) noteChangePage(n int) {
	for {
		was := m.changeRowsMax.Load()
		if int64(n) <= was {
			return
		}
		if m.changeRowsMax.CompareAndSwap(was, int64(n)) {
			m.ChangeLogRows.Set(float64(n))
			return
		}
	}
}
