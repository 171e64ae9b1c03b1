package client

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// collector exposes a Client's state to Prometheus, reading it at scrape time,
// and the beamline_extension_* metrics of its calls (callstats.go).
type collector struct {
	c *Client

	revision   *prometheus.Desc
	staleness  *prometheus.Desc
	ready      *prometheus.Desc
	fallback   *prometheus.Desc
	resyncs    *prometheus.Desc
	rejections *prometheus.Desc
	applied    *prometheus.Desc
	catchUps   *prometheus.Desc
	lag        prometheus.Histogram
}

func newCollector(c *Client) *collector {
	return &collector{
		c: c,
		revision: prometheus.NewDesc("registry_client_revision",
			"Registry revision of the snapshot the client serves (0 before the first one).", nil, nil),
		staleness: prometheus.NewDesc("registry_client_staleness_seconds",
			"Seconds since the client last received a valid delta or heartbeat (since Start if never).", nil, nil),
		ready: prometheus.NewDesc("registry_client_ready",
			"1 when the client serves a snapshot (from the registry or the fallback), else 0.", nil, nil),
		fallback: prometheus.NewDesc("registry_client_fallback",
			"1 while the client serves the fallback snapshot instead of one read from the registry.", nil, nil),
		resyncs: prometheus.NewDesc("registry_client_resyncs_total",
			"Times the client found itself behind or inconsistent (gap, dropped messages, drift, rejected payload, resync delta) and resynced.", nil, nil),
		rejections: prometheus.NewDesc("registry_client_rejections_total",
			"Payloads the client refused (undecodable, invalid, not applicable, or failing checksum verification).", nil, nil),
		applied: prometheus.NewDesc("registry_client_deltas_applied_total",
			"Deltas applied and verified, from the live subject or fetched from the stream.", nil, nil),
		catchUps: prometheus.NewDesc("registry_client_catchups_total",
			"Catch-ups of more than a few deltas, by the path their estimated cost chose: chain (the stored deltas) or snapshot (PROTOCOL.md §6).", []string{"path"}, nil),
		lag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "registry_client_commit_to_apply_seconds",
			Help:    "Time from a revision's database commit to its application by the client.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}),
	}
}

func (m *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{m.revision, m.staleness, m.ready, m.fallback, m.resyncs, m.rejections, m.applied, m.catchUps} {
		ch <- d
	}
	m.lag.Describe(ch)
	m.c.invokerOf().rec.describe(ch)
}

func (m *collector) Collect(ch chan<- prometheus.Metric) {
	c := m.c
	s := c.snap.Load()
	var rev, ready, fallback float64
	if s != nil {
		rev, ready = float64(s.Revision()), 1
		if c.isFallback(s) {
			fallback = 1
		}
	}
	since := c.lastHeard.Load()
	if since == 0 {
		since = c.startedAt.Load()
	}
	var stale float64
	if since != 0 {
		stale = max(0, time.Since(time.Unix(0, since)).Seconds())
	}
	ch <- prometheus.MustNewConstMetric(m.revision, prometheus.GaugeValue, rev)
	ch <- prometheus.MustNewConstMetric(m.staleness, prometheus.GaugeValue, stale)
	ch <- prometheus.MustNewConstMetric(m.ready, prometheus.GaugeValue, ready)
	ch <- prometheus.MustNewConstMetric(m.fallback, prometheus.GaugeValue, fallback)
	ch <- prometheus.MustNewConstMetric(m.resyncs, prometheus.CounterValue, float64(c.resyncs.Load()))
	ch <- prometheus.MustNewConstMetric(m.rejections, prometheus.CounterValue, float64(c.rejections.Load()))
	ch <- prometheus.MustNewConstMetric(m.applied, prometheus.CounterValue, float64(c.applied.Load()))
	for path, name := range pathNames {
		ch <- prometheus.MustNewConstMetric(m.catchUps, prometheus.CounterValue, float64(c.catchUps[path].Load()), name)
	}
	m.lag.Collect(ch)
	inv := c.invokerOf()
	inv.prune()
	inv.rec.collect(ch, &inv.breakers)
}
