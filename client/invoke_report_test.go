package client

import (
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/DataDog/sketches-go/ddsketch"
	"github.com/DataDog/sketches-go/ddsketch/pb/sketchpb"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"github.com/beamline/registry-syncer/cache"
	"github.com/beamline/registry-syncer/protocol"
	"github.com/beamline/registry-syncer/test/harness"
)

// TestReportsCarryCallStats: without Config.CallStats, the router reports carry
// the Invoke statistics (ReportCalls): every call counted once over the
// reports, per target, with a sketch that decodes and merges.
func TestReportsCarryCallStats(t *testing.T) {
	t.Parallel()
	srv := harness.NewNATS(t, harness.NATSOptions{})
	src := newSource(t, srv, 0, "")
	e := ext("rep", cache.TypePost, inst("a", 1, cache.HealthHealthy))
	src.commit(aggregate(t, e))
	c := startClient(t, srv.Connect(t), Config{RouterID: "r1", ReportInterval: 20 * time.Millisecond})
	waitSame(t, c, src)
	b := &invokeBundle{srv: srv, src: src, c: c, nc: srv.Connect(t)}
	b.respond(t, "beamline.inst.a", `{}`)

	var mu sync.Mutex
	var calls, success uint64
	merged := newSketch()
	sub, err := b.nc.Subscribe(src.names().Report("r1"), func(m *nats.Msg) {
		var rep protocol.Report
		if err := json.Unmarshal(m.Data, &rep); err != nil {
			t.Errorf("report: %v", err)
			return
		}
		raw, ok := rep.Calls["rep"]
		if !ok {
			return
		}
		var ec ExtensionCalls
		if err := json.Unmarshal(raw, &ec); err != nil {
			t.Errorf("calls entry %s: %v", raw, err)
			return
		}
		var pb sketchpb.DDSketch
		if err := proto.Unmarshal(ec.Sketch, &pb); err != nil {
			t.Errorf("sketch: %v", err)
			return
		}
		s, err := ddsketch.FromProto(&pb)
		if err != nil {
			t.Errorf("sketch: %v", err)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		calls += ec.Calls
		success += ec.Targets["a"].Outcomes[OutcomeSuccess]
		if err := merged.MergeWith(s); err != nil {
			t.Errorf("merge: %v", err)
		}
		if ec.Calls != uint64(s.GetCount()) || ec.P99MS <= 0 || ec.Targets["a"].Breaker != BreakerClosed {
			t.Errorf("entry %+v, sketch count %v", ec, s.GetCount())
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := b.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	for range 30 {
		if _, err := b.invoke(t, "rep", Request{}, nil); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "30 calls over the reports", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return calls == 30 && success == 30 && merged.GetCount() == 30
	})
}
