// Package health owns the fleet's extension health, the third phase of the router project:
// the routers' call statistics (the "calls" of their reports, PROTOCOL.md §3.7) merged per
// extension and per instance over a rolling window; the rows of extension_health and
// extension_instance_health written from them (at most one write per extension per
// interval, never a registry revision); the view GET /admin/extensions/health serves; and
// the automatic management decisions (auto-disable, auto-enable, instance health_status)
// taken under a quorum of routers with hysteresis (auto.go).
//
// A Merger lives for one leadership term: the leader that starts a term starts from what
// the routers report to it.
package health

import (
	"math"
	"sync"
	"time"

	"github.com/DataDog/sketches-go/ddsketch"
	"github.com/DataDog/sketches-go/ddsketch/mapping"
	"github.com/DataDog/sketches-go/ddsketch/pb/sketchpb"
	"github.com/DataDog/sketches-go/ddsketch/store"
	"google.golang.org/protobuf/proto"

	"github.com/beamline/registry-syncer/cache"
	"github.com/beamline/registry-syncer/protocol"
)

// Sketches from routers are merged when their mapping is the Go client's (1% relative
// accuracy, logarithmic); a foreign mapping is counted but not merged. Stores are
// bounded, so a forged sketch cannot grow memory.
const (
	sketchAccuracy = 0.01
	sketchMaxBins  = 2048
	// keepBuckets bounds the history kept per extension (window_seconds is at most
	// this many intervals; longer windows are cut to it).
	keepBuckets = 720
)

var refMapping = func() mapping.IndexMapping {
	m, err := mapping.NewLogarithmicMapping(sketchAccuracy)
	if err != nil {
		panic(err)
	}
	return m
}()

func newSketch() *ddsketch.DDSketch {
	s, err := ddsketch.LogCollapsingLowestDenseDDSketch(sketchAccuracy, sketchMaxBins)
	if err != nil {
		panic(err) // constant arguments
	}
	return s
}

func boundedStore() store.Store { return store.NewCollapsingLowestDenseStore(sketchMaxBins) }

// decodeSketch decodes a report's sketch; nil when it is absent or not mergeable.
func decodeSketch(data []byte) *ddsketch.DDSketch {
	if len(data) == 0 {
		return nil
	}
	var pb sketchpb.DDSketch
	if err := proto.Unmarshal(data, &pb); err != nil {
		return nil
	}
	m, err := mapping.FromProto(pb.Mapping)
	if err != nil || !m.Equals(refMapping) {
		return nil
	}
	for _, st := range []*sketchpb.Store{pb.PositiveValues, pb.NegativeValues} {
		if st == nil {
			continue
		}
		for _, c := range st.BinCounts {
			if c < 0 || math.IsNaN(c) || math.IsInf(c, 0) {
				return nil
			}
		}
		for _, c := range st.ContiguousBinCounts {
			if c < 0 || math.IsNaN(c) || math.IsInf(c, 0) {
				return nil
			}
		}
		if len(st.ContiguousBinCounts) > sketchMaxBins*4 {
			return nil
		}
	}
	if pb.ZeroCount < 0 || math.IsNaN(pb.ZeroCount) || math.IsInf(pb.ZeroCount, 0) {
		return nil
	}
	s, err := ddsketch.FromProtoWithStoreProvider(&pb, boundedStore)
	if err != nil {
		return nil
	}
	return s
}

// counts are calls by outcome class.
type counts struct {
	success, failure, rejected uint64
}

func (c *counts) add(outcomes map[string]uint64) {
	for o, n := range outcomes {
		switch protocol.OutcomeClass(o) {
		case protocol.ClassSuccess:
			c.success = satAdd(c.success, n)
		case protocol.ClassFailure:
			c.failure = satAdd(c.failure, n)
		case protocol.ClassRejected:
			c.rejected = satAdd(c.rejected, n)
		}
	}
}

func (c *counts) plus(o counts) {
	c.success, c.failure, c.rejected = satAdd(c.success, o.success), satAdd(c.failure, o.failure), satAdd(c.rejected, o.rejected)
}

func satAdd(a, b uint64) uint64 {
	if a+b < a {
		return math.MaxUint64
	}
	return a + b
}

// bucket is one interval's merged calls.
type bucket struct {
	start  time.Time
	counts counts
	sketch *ddsketch.DDSketch // extension level only
	p99    float64            // target level: the highest router p99 (ms)
}

// seen is the latest report of one router that carried the extension (or instance).
type seen struct {
	at          time.Time
	interval    time.Duration
	state       string // the circuit at that router: closed, half_open, open
	counts      counts // of that report
	lastSuccess time.Time
	lastFailure time.Time
}

// series is the merged history of one extension or one instance.
type series struct {
	buckets     []*bucket
	routers     map[string]*seen
	lastSuccess time.Time
	lastFailure time.Time
}

func newSeries() *series { return &series{routers: map[string]*seen{}} }

func (s *series) bucketAt(start time.Time, withSketch bool) *bucket {
	if n := len(s.buckets); n > 0 && s.buckets[n-1].start.Equal(start) {
		return s.buckets[n-1]
	}
	for i := len(s.buckets) - 1; i >= 0 && !s.buckets[i].start.Before(start); i-- {
		if s.buckets[i].start.Equal(start) {
			return s.buckets[i]
		}
	}
	b := &bucket{start: start}
	if withSketch {
		b.sketch = newSketch()
	}
	// Buckets stay ordered: a report is placed by the time it was received.
	i := len(s.buckets)
	for i > 0 && s.buckets[i-1].start.After(start) {
		i--
	}
	s.buckets = append(s.buckets, nil)
	copy(s.buckets[i+1:], s.buckets[i:])
	s.buckets[i] = b
	if len(s.buckets) > keepBuckets {
		s.buckets = s.buckets[len(s.buckets)-keepBuckets:]
	}
	return b
}

// extension is an extension's series with its instances'.
type extension struct {
	series
	instances map[string]*series
	// state across the fleet and since when it is open (zero: not open).
	openedAt time.Time
	written  *Row // the last row written (nil: none this term)
}

// Merger merges the reports of one leadership term. Safe for concurrent use.
type Merger struct {
	interval time.Duration

	mu   sync.Mutex
	exts map[string]*extension
	// Invalid counts report entries that were refused (unknown extension, bad counts).
	invalid uint64
}

// NewMerger returns a merger whose buckets are interval long (the health interval).
func NewMerger(interval time.Duration) *Merger {
	return &Merger{interval: interval, exts: map[string]*extension{}}
}

// routerState is the extension's circuit at one router: open when every target the
// router called is open, half_open when none is closed and one is half-open, closed
// otherwise (also when the report names no breaker).
func routerState(c *protocol.ExtensionCalls) string {
	open, half, closed := 0, 0, 0
	for _, t := range c.Targets {
		switch t.Breaker {
		case protocol.BreakerOpen:
			open++
		case protocol.BreakerHalfOpen:
			half++
		case protocol.BreakerClosed:
			closed++
		}
	}
	switch {
	case closed > 0 || open+half == 0:
		return protocol.BreakerClosed
	case half > 0:
		return protocol.BreakerHalfOpen
	}
	return protocol.BreakerOpen
}

// Observe merges the calls of report r, received at at. snap is the published state:
// calls of extensions it does not hold are refused, and targets that are not one of the
// extension's instances are counted at the extension only.
func (m *Merger) Observe(r *protocol.Report, snap *cache.Snapshot, at time.Time) {
	if len(r.Calls) == 0 || snap == nil {
		return
	}
	start := at.Truncate(m.interval)
	interval := time.Duration(r.IntervalMS) * time.Millisecond
	type decoded struct {
		id     string
		ext    *cache.Extension
		calls  *protocol.ExtensionCalls
		sketch *ddsketch.DDSketch
	}
	list := make([]decoded, 0, len(r.Calls))
	bad := uint64(0)
	for id, raw := range r.Calls {
		e, ok := snap.Get(id)
		if !ok {
			bad++
			continue
		}
		c, err := protocol.DecodeCalls(id, raw)
		if err != nil {
			bad++
			continue
		}
		list = append(list, decoded{id, e, c, decodeSketch(c.Sketch)})
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.invalid += bad
	for _, d := range list {
		x := m.exts[d.id]
		if x == nil {
			x = &extension{series: *newSeries(), instances: map[string]*series{}}
			m.exts[d.id] = x
		}
		var c counts
		c.add(d.calls.Outcomes)
		b := x.bucketAt(start, true)
		b.counts.plus(c)
		if d.sketch != nil {
			_ = b.sketch.MergeWith(d.sketch) // same mapping, checked by decodeSketch
		}
		x.saw(r.RouterID, &seen{at: at, interval: interval, state: routerState(d.calls), counts: c},
			d.calls.LastSuccess, d.calls.LastFailure)
		for tid, tc := range d.calls.Targets {
			if !hasInstance(d.ext, tid) {
				continue
			}
			s := x.instances[tid]
			if s == nil {
				s = newSeries()
				x.instances[tid] = s
			}
			var tcnt counts
			tcnt.add(tc.Outcomes)
			tb := s.bucketAt(start, false)
			tb.counts.plus(tcnt)
			if !math.IsNaN(tc.P99MS) && tc.P99MS > tb.p99 {
				tb.p99 = tc.P99MS
			}
			st := tc.Breaker
			if st == "" {
				st = protocol.BreakerClosed
			}
			s.saw(r.RouterID, &seen{at: at, interval: interval, state: st, counts: tcnt}, tc.LastSuccess, tc.LastFailure)
		}
	}
}

// saw records sv, router's latest report of the series. The report's last success and
// failure times are used when it has them (else the time it arrived, if it counted any);
// the router's earlier ones are kept when this report has none.
func (s *series) saw(router string, sv *seen, lastSuccess, lastFailure *time.Time) {
	sv.lastSuccess = lastTime(lastSuccess, sv.counts.success, sv.at)
	sv.lastFailure = lastTime(lastFailure, sv.counts.failure, sv.at)
	if prev := s.routers[router]; prev != nil {
		sv.lastSuccess = later(sv.lastSuccess, prev.lastSuccess)
		sv.lastFailure = later(sv.lastFailure, prev.lastFailure)
	}
	s.routers[router] = sv
	s.lastSuccess = later(s.lastSuccess, sv.lastSuccess)
	s.lastFailure = later(s.lastFailure, sv.lastFailure)
}

func lastTime(reported *time.Time, n uint64, arrived time.Time) time.Time {
	switch {
	case reported != nil:
		return *reported
	case n > 0:
		return arrived
	}
	return time.Time{}
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

func hasInstance(e *cache.Extension, id string) bool {
	for i := range e.Instances {
		if e.Instances[i].InstanceID == id {
			return true
		}
	}
	return false
}

// Invalid is the number of report entries refused so far.
func (m *Merger) Invalid() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.invalid
}

// fresh reports whether a router's latest report is recent enough to count toward the
// fleet's state: within three of its report intervals (the fleet view's "gone").
func (sv *seen) fresh(now time.Time) bool {
	return now.Sub(sv.at) <= 3*sv.interval
}

// fleetState is the breaker state across the fleet from the routers' latest reports.
type fleetState struct {
	reporting, open, halfOpen int
}

func (s *series) fleet(now time.Time) fleetState {
	var f fleetState
	for id, sv := range s.routers {
		if !sv.fresh(now) {
			if now.Sub(sv.at) > time.Hour {
				delete(s.routers, id)
			}
			continue
		}
		f.reporting++
		switch sv.state {
		case protocol.BreakerOpen:
			f.open++
		case protocol.BreakerHalfOpen:
			f.halfOpen++
		}
	}
	return f
}

// state is the fleet's breaker state: open when more than half of the reporting routers
// have it open, half_open when more than half have it open or half-open, else closed.
func (f fleetState) state() string {
	switch {
	case f.reporting > 0 && 2*f.open > f.reporting:
		return protocol.BreakerOpen
	case f.reporting > 0 && 2*(f.open+f.halfOpen) > f.reporting:
		return protocol.BreakerHalfOpen
	}
	return protocol.BreakerClosed
}

// window sums the buckets that started at or after since.
func (s *series) window(since time.Time) (counts, *ddsketch.DDSketch, float64) {
	var c counts
	var sk *ddsketch.DDSketch
	p99 := 0.0
	for i := len(s.buckets) - 1; i >= 0; i-- {
		b := s.buckets[i]
		if b.start.Before(since) {
			break
		}
		c.plus(b.counts)
		if b.sketch != nil && !b.sketch.IsEmpty() {
			if sk == nil {
				sk = newSketch()
			}
			_ = sk.MergeWith(b.sketch)
		}
		p99 = max(p99, b.p99)
	}
	return c, sk, p99
}

// prune drops the buckets that started before since.
func (s *series) prune(since time.Time) {
	i := 0
	for i < len(s.buckets) && s.buckets[i].start.Before(since) {
		i++
	}
	s.buckets = s.buckets[i:]
}
