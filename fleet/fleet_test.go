package fleet

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/beamline/registry-syncer/protocol"
)

func report(id string, rev int64, state string, intervalMS int64) *protocol.Report {
	return &protocol.Report{RouterID: id, Revision: rev, State: state, IntervalMS: intervalMS}
}

func TestFleetView(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	f := New(m)
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	f.Observe(report("a", 10, protocol.RouterReady, 1000), t0)
	f.Observe(report("b", 10, protocol.RouterReady, 1000), t0)
	f.Observe(report("c", 10, protocol.RouterReady, 5000), t0)
	f.Published(11, t0.Add(-5*time.Millisecond))
	f.Observe(report("a", 11, protocol.RouterReady, 1000), t0.Add(10*time.Millisecond))
	f.Observe(report("b", 11, protocol.RouterReady, 1000), t0.Add(20*time.Millisecond))
	if n := testutil.CollectAndCount(m.Convergence); n != 1 {
		t.Fatalf("convergence histogram collected %d series", n)
	}
	if got := histogramCount(t, reg); got != 0 {
		t.Fatalf("converged before c applied 11: %d observations", got)
	}
	f.Observe(report("c", 11, protocol.RouterRejecting, 5000), t0.Add(30*time.Millisecond))
	if got := histogramCount(t, reg); got != 1 {
		t.Fatalf("%d convergence observations after every router applied 11, want 1", got)
	}
	f.Published(15, t0.Add(40*time.Millisecond))

	// 3.5 s later: a and b (1 s interval) are gone, c (5 s) is not.
	rs := f.Routers(t0.Add(3530 * time.Millisecond))
	want := map[string]struct {
		state string
		lag   int64
	}{"a": {protocol.RouterGone, 4}, "b": {protocol.RouterGone, 4}, "c": {protocol.RouterRejecting, 4}}
	if len(rs) != 3 {
		t.Fatalf("routers %+v", rs)
	}
	for _, r := range rs {
		if w := want[r.RouterID]; r.State != w.state || r.Lag != w.lag {
			t.Errorf("%s: state %s lag %d, want %s %d", r.RouterID, r.State, r.Lag, w.state, w.lag)
		}
	}
	if v := testutil.ToFloat64(m.Routers.WithLabelValues(protocol.RouterGone)); v != 2 {
		t.Errorf("registry_routers{state=gone} = %v", v)
	}
	if v := testutil.ToFloat64(m.Lag.WithLabelValues("2-10")); v != 1 {
		t.Errorf("registry_routers_lag{revisions=2-10} = %v", v)
	}
	// Gone routers do not hold convergence back.
	f.Observe(report("c", 15, protocol.RouterReady, 5000), t0.Add(3600*time.Millisecond))
	if got := histogramCount(t, reg); got != 2 {
		t.Fatalf("%d convergence observations, want 2 (gone routers ignored)", got)
	}
	// Silent for 60 intervals: forgotten.
	if rs := f.Routers(t0.Add(61 * time.Second)); len(rs) != 1 || rs[0].RouterID != "c" {
		t.Errorf("after a minute: %+v", rs)
	}
	if problems, err := testutil.CollectAndLint(m.Convergence); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
}

func histogramCount(t *testing.T, reg *prometheus.Registry) uint64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "registry_commit_to_last_router_seconds" {
			return mf.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	return 0
}

// TestLeastLiveMatchesAScan drives the fleet view with random reports (routers moving on,
// going back, going silent, being forgotten) and checks after every step that the least
// live revision it keeps incrementally is the one a scan of every router gives.
func TestLeastLiveMatchesAScan(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(1, 2))
	f := New(nil)
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	now := t0
	ids := []string{"a", "b", "c", "d", "e", "f", "g", "h"}
	published := int64(1)
	for step := range 20000 {
		now = now.Add(time.Duration(rng.IntN(400)) * time.Millisecond)
		switch k := rng.IntN(20); {
		case k == 0:
			published += int64(1 + rng.IntN(3))
			f.Published(published, now)
		case k == 1:
			f.Routers(now)
		default:
			id := ids[rng.IntN(len(ids))]
			rev := published + 20 - int64(rng.IntN(3))
			if rng.IntN(50) == 0 {
				rev -= 10 // a router that went back (restored from an old snapshot)
			}
			interval := int64([]int{100, 500, 1000}[rng.IntN(3)])
			f.Observe(report(id, rev, protocol.RouterReady, interval), now)
		}
		f.mu.Lock()
		want, live := int64(0), false
		for _, e := range f.routers {
			if !e.gone(now) && (!live || e.rep.Revision < want) {
				want, live = e.rep.Revision, true
			}
		}
		f.pending[-1] = now // a pending revision makes converged settle the least now
		f.converged(now)
		delete(f.pending, -1)
		got, gotLive := f.least.rev, f.least.any
		f.mu.Unlock()
		if gotLive != live || (live && got != want) {
			t.Fatalf("step %d at %v: least live revision %d (any live: %v), a scan gives %d (%v)", step, now.Sub(t0), got, gotLive, want, live)
		}
	}
}

// BenchmarkObserve is one report into a fleet view of n routers with a revision pending:
// the routers report the new revision one after another, as after every change. The cost
// per report must not grow with n.
func BenchmarkObserve(b *testing.B) {
	for _, n := range []int{10, 1000, 10000} {
		b.Run(fmt.Sprintf("routers=%d", n), func(b *testing.B) {
			f := New(nil)
			now := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
			reps := make([]*protocol.Report, n)
			for i := range reps {
				reps[i] = report(fmt.Sprintf("router-%05d", i), 1, protocol.RouterReady, 60_000)
				f.Observe(reps[i], now)
			}
			rev := int64(1)
			b.ResetTimer()
			for i := range b.N {
				k := i % n
				if k == 0 {
					rev++
					f.Published(rev, now)
				}
				reps[k].Revision = rev
				f.Observe(reps[k], now)
			}
		})
	}
}
