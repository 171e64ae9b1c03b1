package health

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the control loop's Prometheus metrics, registered once per process.
type Metrics struct {
	Decisions       *prometheus.CounterVec // by kind: auto_disable, auto_enable, instance_health
	Held            prometheus.Counter
	Writes          prometheus.Counter
	WriteErrors     prometheus.Counter
	Refused         prometheus.Counter
	CircuitOpen     prometheus.Gauge
	AutoDisabled    prometheus.Gauge
	EvaluateSeconds prometheus.Histogram
}

// NewMetrics creates the metrics and registers them on reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	ns := "registry_syncer"
	m := &Metrics{
		Decisions: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "auto_decisions_total",
			Help: "Registry changes committed by automatic management, by kind (auto_disable, auto_enable, instance_health)."}, []string{"kind"}),
		Held: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "auto_decisions_held_total",
			Help: "Automatic disables held back because a live router does not implement auto_disabled."}),
		Writes: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "health_rows_written_total",
			Help: "extension_health rows written from the routers' reports."}),
		WriteErrors: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "health_write_errors_total",
			Help: "Failed writes of extension_health (retried at the next interval)."}),
		Refused: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "health_report_entries_refused_total",
			Help: "Entries of router reports' calls refused (unknown extension, inconsistent counts)."}),
		CircuitOpen: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "extensions_circuit_open",
			Help: "Extensions whose circuit is open in more than half of the routers reporting them."}),
		AutoDisabled: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "extensions_auto_disabled",
			Help: "Extensions auto-disabled in the published snapshot."}),
		EvaluateSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Name: "health_evaluate_seconds",
			Help: "Time of one health interval's merge, write and decisions.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}),
	}
	if reg != nil {
		reg.MustRegister(m.Decisions, m.Held, m.Writes, m.WriteErrors, m.Refused, m.CircuitOpen, m.AutoDisabled, m.EvaluateSeconds)
	}
	return m
}
