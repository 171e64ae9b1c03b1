package health

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/beamline/registry-syncer/cache"
	"github.com/beamline/registry-syncer/protocol"
)

// BenchmarkObserve1000Routers: the syncer's cost of the control loop for 1,000 routers
// reporting every 5 s, each calling 5 extensions with 2 instances: one op is one health
// interval, 1,000 reports decoded and merged, then Flush and Decide. CPU per second of
// wall time at the default interval is ns/op / 5e9.
func BenchmarkObserve1000Routers(b *testing.B) {
	exts := make([]cache.Extension, 5)
	for i := range exts {
		e := geo(false)
		e.ID = fmt.Sprintf("ext%d", i)
		exts[i] = e
	}
	snap, err := cache.New(1, "database", exts)
	if err != nil {
		b.Fatal(err)
	}
	lat := make([]float64, 200)
	for i := range lat {
		lat[i] = float64(i+1) / 10000
	}
	entry := calls(b, lat, map[string]protocol.TargetCalls{
		"i1": target(protocol.BreakerClosed, map[string]uint64{"success": 95, "extension_timeout": 5}),
		"i2": target(protocol.BreakerClosed, map[string]uint64{"success": 100}),
	})
	reports := make([][]byte, 1000)
	for r := range reports {
		cs := map[string]json.RawMessage{}
		for _, e := range exts {
			cs[e.ID] = entry
		}
		data, err := json.Marshal(report(fmt.Sprintf("router-%d", r), time.Now(), cs))
		if err != nil {
			b.Fatal(err)
		}
		reports[r] = data
	}
	b.SetBytes(int64(len(reports[0])))
	m := NewMerger(5 * time.Second)
	c := NewController(Policy{AutoDisable: true, AutoEnable: true, Instances: true}, time.Now())
	now := time.Now()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		now = now.Add(5 * time.Second)
		for _, data := range reports {
			r, err := protocol.DecodeReport(data)
			if err != nil {
				b.Fatal(err)
			}
			m.Observe(r, snap, now)
		}
		m.Flush(now, func(string) time.Duration { return 0 })
		c.Decide(m, snap, nil, nil, now, nil)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/5e9*100, "%cpu@5s")
}
