package main

import (
	"context"
	"testing"
)

// TestFloorAtProductRate: the floor's pass at the product's rate measures nothing while
// the product's writers reach 90 % of the target (it never touches the floor's rig then),
// and the ratio against it appears only where it ran.
func TestFloorAtProductRate(t *testing.T) {
	pr := &productRig{}
	fr := &floorRig{} // no database: a pass that ran would return the context's error
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, got := range []float64{0, 950, 1000} {
		pr.achieved = got
		res, err := fr.atRateOf(pr).pass(ctx, 1000, 100, 800)
		if err != nil || len(res.samples["e2e"]) != 0 || res.pace.Writes != 0 {
			t.Fatalf("product at %v/s of 1000/s: the floor ran at its rate (%+v, %v)", got, res, err)
		}
	}

	r := &Results{
		Floor: &FloorResult{Rates: []FloorRate{
			{EndToEnd: Latency{P50: 0.5, P99: 5}},
			{EndToEnd: Latency{P50: 1, P99: 10}, AtProductRate: &paceResult{Target: 300, Achieved: 299.5}, AtProductRateE2E: &Latency{P50: 0.8, P99: 4}},
		}},
		Product: &ProductResult{Rates: []ProductRate{
			{Pace: paceResult{Target: 100}, EndToEnd: Latency{P50: 2, P99: 20}},
			{Pace: paceResult{Target: 1000}, EndToEnd: Latency{P50: 4, P99: 40}},
		}},
	}
	got := ratios(r)
	if len(got) != 2 {
		t.Fatalf("%d ratios, want 2", len(got))
	}
	if a := got[0]; a.AtProductRate != 0 || a.P50AtProductRate != 0 || a.P99AtProductRate != 0 {
		t.Errorf("100/s: a ratio against a floor pass that did not run: %+v", a)
	}
	if b := got[1]; b.AtProductRate != 299.5 || b.P50AtProductRate != 5 || b.P99AtProductRate != 10 || b.FloorP50AtRate != 0.8 || b.P50 != 4 {
		t.Errorf("1000/s: %+v, want the floor at 299.5/s, p50 ratio 5 (4 ÷ 0.8), p99 10 (40 ÷ 4), headline p50 4", b)
	}
}
