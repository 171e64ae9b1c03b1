package client

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/beamline/registry-syncer/cache"
)

// BenchmarkInvoke compares Invoke with a bare nc.Request to the same responder
// on the same in-process server, in the same run: the difference is what
// selection, the breaker, encoding, reply validation and the statistics cost.
// On a shared machine read "interleaved" (both timed in every iteration).
func BenchmarkInvoke(b *testing.B) {
	e := ext("bench", cache.TypePost, instBench("a", 60), instBench("b", 40))
	bb := setupInvoke(b, e)
	body := []byte(`{"payload":{"text":"hello"},"metadata":{}}`)
	for _, in := range e.Instances {
		if _, err := bb.nc.Subscribe(in.Subject, func(m *nats.Msg) { _ = m.Respond(body) }); err != nil {
			b.Fatal(err)
		}
	}
	if err := bb.nc.Flush(); err != nil {
		b.Fatal(err)
	}
	nc := bb.c.nc
	req := Request{TraceID: "trace-0001", TenantID: "t1", Payload: json.RawMessage(`{"text":" Hello "}`), Metadata: json.RawMessage(`{"k":"v"}`)}
	wire, _ := json.Marshal(wireRequest{TraceID: req.TraceID, TenantID: req.TenantID, Payload: req.Payload, Metadata: req.Metadata})
	attrs := map[string]string{"tenant_id": "t1"}
	ctx := context.Background()

	b.Run("bare", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := nc.Request("beamline.inst.a", wire, 5*time.Second); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("invoke", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := bb.c.Invoke(ctx, "bench", req, attrs); err != nil {
				b.Fatal(err)
			}
		}
	})
	// Interleaved: one bare request and one Invoke per iteration, timed apart,
	// so that the load of a shared machine weighs on both alike.
	b.Run("interleaved", func(b *testing.B) {
		var bare, inv time.Duration
		for b.Loop() {
			t0 := time.Now()
			if _, err := nc.Request("beamline.inst.a", wire, 5*time.Second); err != nil {
				b.Fatal(err)
			}
			t1 := time.Now()
			if _, err := bb.c.Invoke(ctx, "bench", req, attrs); err != nil {
				b.Fatal(err)
			}
			bare, inv = bare+t1.Sub(t0), inv+time.Since(t1)
		}
		n := float64(b.N)
		b.ReportMetric(float64(bare.Nanoseconds())/n, "bare-ns/op")
		b.ReportMetric(float64(inv.Nanoseconds())/n, "invoke-ns/op")
		b.ReportMetric(float64(inv-bare)/n, "overhead-ns/op")
		b.ReportMetric(float64(inv)/float64(bare), "ratio")
	})
	b.Run("invoke_sticky", func(b *testing.B) {
		b.ReportAllocs()
		r := req
		r.StickyKey = "t1"
		for b.Loop() {
			if _, err := bb.c.Invoke(ctx, "bench", r, attrs); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func instBench(id string, weight int) cache.Instance { return inst(id, weight, cache.HealthHealthy) }

// BenchmarkReportCalls: what the statistics cost a router per report: 5 extensions with 2
// instances each, 200 calls per extension recorded, then ReportCalls (take, merge the
// targets' sketches, encode). The JSON size of the calls is reported as B/report.
func BenchmarkReportCalls(b *testing.B) {
	var exts []*cache.Extension
	for _, id := range []string{"e1", "e2", "e3", "e4", "e5"} {
		exts = append(exts, ext(id, cache.TypePre, instBench("a", 50), instBench("b", 50)))
	}
	bb := setupInvoke(b, exts...)
	inv := bb.c.invokerOf()
	record := func() {
		for _, e := range exts {
			for i := range 200 {
				target := "a"
				if i%2 == 1 {
					target = "b"
				}
				inv.rec.record(e.ID, target, OutcomeSuccess, time.Duration(100+i)*time.Microsecond, 0)
			}
		}
	}
	size := 0
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		record()
		b.StartTimer()
		calls := bb.c.ReportCalls()
		size = 0
		for _, raw := range calls {
			size += len(raw)
		}
	}
	b.ReportMetric(float64(size), "B/report")
}
