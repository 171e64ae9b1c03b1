package client

import (
	"encoding/json"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/DataDog/sketches-go/ddsketch"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/beamline/registry-syncer/protocol"
)

// Call statistics.
//
// Every Invoke is counted under its extension and target (the instance id, or the
// subject called when the extension has no instance; "" when no target was
// chosen: extension_not_found, invalid_request, no usable instance) with its
// outcome: "success" or the error code. The latency of every call that reached
// NATS (success, validator_blocked, extension_timeout, extension_error,
// invalid_response_format; retries and backoff included) goes into a DDSketch
// with 1% relative accuracy on every quantile (at most 2048 bins, about 16 KiB a
// target; the lowest bins collapse first, so the high quantiles stay accurate).
// Sketches of several targets or routers merge exactly (MergeWith), which is what
// the fleet view needs; see CallStats.
//
// The same calls are exposed to Prometheus through Client.Collector():
//
//	beamline_extension_calls_total{extension,instance,outcome}  counter
//	beamline_extension_call_duration_seconds{extension,instance} histogram (calls that reached NATS)
//	beamline_extension_retries_total{extension,instance}         counter (attempts after the first)
//	beamline_extension_circuit_state{extension,instance}         gauge: 0 closed, 1 half-open, 2 open
//
// where instance is the target as above. Extensions unknown to the snapshot are
// counted under extension="" so that arbitrary ids cannot grow the label set.

// Outcome labels besides the error codes.
const OutcomeSuccess = protocol.OutcomeSuccess

// sketchAccuracy is the relative accuracy of the latency sketches.
const (
	sketchAccuracy = 0.01
	sketchMaxBins  = 2048
)

func newSketch() *ddsketch.DDSketch {
	s, err := ddsketch.LogCollapsingLowestDenseDDSketch(sketchAccuracy, sketchMaxBins)
	if err != nil {
		panic(err) // constant arguments
	}
	return s
}

// TargetStats are the calls of one extension target since the previous
// CallStats.
type TargetStats struct {
	Extension string `json:"extension"`
	// Target is the instance id, or the subject called when the extension has no
	// instance ("" for calls that chose no target).
	Target string `json:"target"`
	// Calls is the number of Invoke calls; Outcomes splits it by outcome
	// ("success" or an error code).
	Calls    uint64            `json:"calls"`
	Outcomes map[string]uint64 `json:"outcomes"`
	// Retries is the number of attempts after the first.
	Retries uint64 `json:"retries"`
	// Breaker is the state of the target's circuit breaker at the time of
	// CallStats ("" when the target has none).
	Breaker string `json:"breaker,omitempty"`
	// Latency holds the durations, in seconds, of the calls that reached NATS.
	// It belongs to the caller (merge it, encode it with ToProto).
	Latency *ddsketch.DDSketch `json:"-"`
	// LastSuccess and LastFailure are the times of the last successful and failed
	// call (zero: none); see protocol.OutcomeClass.
	LastSuccess time.Time `json:"last_success"`
	LastFailure time.Time `json:"last_failure"`
}

// Quantile returns the latency at quantile q (0..1) with 1% relative accuracy,
// or 0 when no call was timed.
func (t *TargetStats) Quantile(q float64) time.Duration {
	return sketchQuantile(t.Latency, q)
}

func sketchQuantile(s *ddsketch.DDSketch, q float64) time.Duration {
	if s == nil || s.IsEmpty() {
		return 0
	}
	v, err := s.GetValueAtQuantile(q)
	if err != nil {
		return 0
	}
	return time.Duration(v * float64(time.Second))
}

// CallStats is what Client.CallStats returns: the calls of every target since
// the previous CallStats (or since the client was created).
type CallStats struct {
	Since   time.Time     `json:"since"`
	Until   time.Time     `json:"until"`
	Targets []TargetStats `json:"targets"` // sorted by extension, then target; only targets with calls
}

// Extension merges the targets of one extension (Target "").
func (s CallStats) Extension(id string) TargetStats {
	out := TargetStats{Extension: id, Outcomes: map[string]uint64{}, Latency: newSketch()}
	for i := range s.Targets {
		t := &s.Targets[i]
		if t.Extension != id {
			continue
		}
		out.Calls += t.Calls
		out.Retries += t.Retries
		if t.LastSuccess.After(out.LastSuccess) {
			out.LastSuccess = t.LastSuccess
		}
		if t.LastFailure.After(out.LastFailure) {
			out.LastFailure = t.LastFailure
		}
		for k, v := range t.Outcomes {
			out.Outcomes[k] += v
		}
		if t.Latency != nil {
			_ = out.Latency.MergeWith(t.Latency) // same mapping: cannot fail
		}
	}
	return out
}

// targetStats accumulates one target's calls.
type targetStats struct {
	extension, target string

	mu          sync.Mutex
	calls       uint64
	retries     uint64
	outcomes    map[string]uint64
	latency     *ddsketch.DDSketch
	lastSuccess time.Time
	lastFailure time.Time

	// Prometheus children, resolved once.
	duration prometheus.Observer
	retried  prometheus.Counter
	counters sync.Map // outcome -> prometheus.Counter
}

// callRecorder keeps the statistics and the Prometheus metrics of the calls.
type callRecorder struct {
	mu      sync.RWMutex
	targets map[targetKey]*targetStats
	since   time.Time

	calls    *prometheus.CounterVec
	duration *prometheus.HistogramVec
	retries  *prometheus.CounterVec
	circuit  *prometheus.Desc
}

func newCallRecorder() *callRecorder {
	labels := []string{"extension", "instance"}
	return &callRecorder{
		targets: make(map[targetKey]*targetStats),
		since:   time.Now(),
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "beamline_extension_calls_total",
			Help: "Extension calls made through Client.Invoke, by extension, instance (the subject when the extension has none) and outcome (success or the error code).",
		}, []string{"extension", "instance", "outcome"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "beamline_extension_call_duration_seconds",
			Help:    "Duration of extension calls that reached NATS, retries and backoff included.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, labels),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "beamline_extension_retries_total",
			Help: "Attempts after the first (retried NATS timeouts) of extension calls.",
		}, labels),
		circuit: prometheus.NewDesc("beamline_extension_circuit_state",
			"Circuit breaker state of an extension target: 0 closed, 1 half-open, 2 open.", labels, nil),
	}
}

func (r *callRecorder) target(extension, target string) *targetStats {
	k := targetKey{extension, target}
	r.mu.RLock()
	t := r.targets[k]
	r.mu.RUnlock()
	if t != nil {
		return t
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if t = r.targets[k]; t == nil {
		t = &targetStats{extension: extension, target: target, outcomes: map[string]uint64{}, latency: newSketch(),
			duration: r.duration.WithLabelValues(extension, target), retried: r.retries.WithLabelValues(extension, target)}
		r.targets[k] = t
	}
	return t
}

// record counts one call. latency < 0: the call did not reach NATS.
func (r *callRecorder) record(extension, target, outcome string, latency time.Duration, retries int) {
	t := r.target(extension, target)
	c, ok := t.counters.Load(outcome)
	if !ok {
		c, _ = t.counters.LoadOrStore(outcome, r.calls.WithLabelValues(extension, target, outcome))
	}
	c.(prometheus.Counter).Inc()
	if retries > 0 {
		t.retried.Add(float64(retries))
	}
	if latency >= 0 {
		t.duration.Observe(latency.Seconds())
	}
	var now time.Time
	class := protocol.OutcomeClass(outcome)
	if class == protocol.ClassSuccess || class == protocol.ClassFailure {
		now = time.Now()
	}
	t.mu.Lock()
	t.calls++
	t.retries += uint64(retries)
	t.outcomes[outcome]++
	switch class {
	case protocol.ClassSuccess:
		t.lastSuccess = now
	case protocol.ClassFailure:
		t.lastFailure = now
	}
	if latency >= 0 {
		_ = t.latency.Add(latency.Seconds()) // fails only for negative values
	}
	t.mu.Unlock()
}

// take returns the statistics since the previous take and starts new ones.
func (r *callRecorder) take(breakerState func(extension, target string) string) CallStats {
	r.mu.Lock()
	list := make([]*targetStats, 0, len(r.targets))
	for _, t := range r.targets {
		list = append(list, t)
	}
	now := time.Now()
	out := CallStats{Since: r.since, Until: now}
	r.since = now
	r.mu.Unlock()
	for _, t := range list {
		t.mu.Lock()
		if t.calls == 0 {
			t.mu.Unlock()
			continue
		}
		ts := TargetStats{Extension: t.extension, Target: t.target, Calls: t.calls, Retries: t.retries,
			Outcomes: t.outcomes, Latency: t.latency, LastSuccess: t.lastSuccess, LastFailure: t.lastFailure}
		t.calls, t.retries, t.outcomes, t.latency = 0, 0, map[string]uint64{}, newSketch()
		t.lastSuccess, t.lastFailure = time.Time{}, time.Time{}
		t.mu.Unlock()
		ts.Breaker = breakerState(t.extension, t.target)
		out.Targets = append(out.Targets, ts)
	}
	slices.SortFunc(out.Targets, func(a, b TargetStats) int {
		if c := strings.Compare(a.Extension, b.Extension); c != 0 {
			return c
		}
		return strings.Compare(a.Target, b.Target)
	})
	return out
}

func (r *callRecorder) describe(ch chan<- *prometheus.Desc) {
	r.calls.Describe(ch)
	r.duration.Describe(ch)
	r.retries.Describe(ch)
	ch <- r.circuit
}

func (r *callRecorder) collect(ch chan<- prometheus.Metric, bs *breakers) {
	r.calls.Collect(ch)
	r.duration.Collect(ch)
	r.retries.Collect(ch)
	bs.each(func(b *breaker) {
		ch <- prometheus.MustNewConstMetric(r.circuit, prometheus.GaugeValue, stateValue(b.cb.State()), b.extension, b.target)
	})
}

// ExtensionCalls is one extension's entry in a router report's "calls"
// (PROTOCOL.md §3.7), built by ReportCalls.
type ExtensionCalls = protocol.ExtensionCalls

// TargetCalls is one target of an ExtensionCalls.
type TargetCalls = protocol.TargetCalls

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	u := t.UTC()
	return &u
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// ReportCalls takes CallStats (so it resets them) and encodes them per
// extension as a router report's "calls" (ExtensionCalls as JSON; nil when no
// call was made). It suits Config.CallStats; when that is not set the client's
// reports use it on their own, so a router that reads CallStats itself should
// set Config.CallStats.
func (c *Client) ReportCalls() map[string]json.RawMessage {
	stats := c.CallStats()
	if len(stats.Targets) == 0 {
		return nil
	}
	out := make(map[string]json.RawMessage)
	for i := 0; i < len(stats.Targets); {
		id := stats.Targets[i].Extension
		merged := stats.Extension(id)
		entry := ExtensionCalls{Calls: merged.Calls, Outcomes: merged.Outcomes, Retries: merged.Retries,
			P50MS: ms(merged.Quantile(.5)), P95MS: ms(merged.Quantile(.95)), P99MS: ms(merged.Quantile(.99)),
			Targets: map[string]TargetCalls{}, LastSuccess: timePtr(merged.LastSuccess), LastFailure: timePtr(merged.LastFailure)}
		if !merged.Latency.IsEmpty() {
			if data, err := proto.Marshal(merged.Latency.ToProto()); err == nil {
				entry.Sketch = data
			}
		}
		for ; i < len(stats.Targets) && stats.Targets[i].Extension == id; i++ {
			t := &stats.Targets[i]
			entry.Targets[t.Target] = TargetCalls{Calls: t.Calls, Outcomes: t.Outcomes, Breaker: t.Breaker, P99MS: ms(t.Quantile(.99)),
				LastSuccess: timePtr(t.LastSuccess), LastFailure: timePtr(t.LastFailure)}
		}
		if data, err := json.Marshal(&entry); err == nil {
			out[id] = data
		}
	}
	return out
}
