package main

import (
	"context"
	"math"
	"time"
)

// A rig runs one paced pass at a rate and returns its samples: the floor's raw relay,
// the floor's relay with a JetStream store, or the product.
type rig interface {
	name() string
	pass(ctx context.Context, rate float64, warm, meas int) (passResult, error)
}

// passResult is one paced pass: named latency samples (nanoseconds) and the misses.
type passResult struct {
	pace    paceResult
	samples map[string][]int64
	missing int
}

// merge adds b's samples to a.
func (a *passResult) merge(b passResult) {
	if a.samples == nil {
		a.samples = map[string][]int64{}
		a.pace = paceResult{Target: b.pace.Target}
	}
	for k, v := range b.samples {
		a.samples[k] = append(a.samples[k], v...)
	}
	a.missing += b.missing
	a.pace.Writes += b.pace.Writes
	a.pace.Errors += b.pace.Errors
	a.pace.Late += b.pace.Late
	a.pace.ElapsedS += b.pace.ElapsedS
	if a.pace.ElapsedS > 0 {
		a.pace.Achieved = math.Round(float64(a.pace.Writes)/a.pace.ElapsedS*10) / 10
	}
}

// rounds is how many times each rate alternates between the rigs: the machine's load
// changes over seconds (other tenants), and alternating short passes lets the floor and
// the product see the same conditions, so that their ratio means something.
func (p plan) rounds() int {
	if p.Warmup < time.Second {
		return 1 // -short
	}
	return 3
}

// measure runs every rig at every rate, alternating between them, and returns the merged
// results per rig and rate.
func measure(ctx context.Context, e *env, rigs []rig) ([][]passResult, error) {
	p := e.opts.plan
	out := make([][]passResult, len(rigs))
	for i := range out {
		out[i] = make([]passResult, len(p.Rates))
	}
	k := p.rounds()
	for ri, rate := range p.Rates {
		meas := int(rate * p.Durations[ri].Seconds() / float64(k))
		for round := range k {
			warm := 0
			if round == 0 {
				warm = int(rate * p.Warmup.Seconds())
			}
			for gi, g := range rigs {
				res, err := g.pass(ctx, rate, warm, meas)
				if err != nil {
					return out, err
				}
				out[gi][ri].merge(res)
			}
		}
		for gi, g := range rigs {
			r := out[gi][ri]
			l := summarize(r.samples["e2e"])
			e.logf("%-16s %5.0f/s: p50 %.3f ms p90 %.3f p99 %.3f max %.3f (n %d, achieved %.1f/s, missing %d)",
				g.name(), rate, l.P50, l.P90, l.P99, l.Max, l.N, r.pace.Achieved, r.missing)
		}
	}
	return out, nil
}

func runFloor(ctx context.Context, e *env, r *Results) error {
	fr, err := setupFloor(ctx, e)
	if err != nil {
		return err
	}
	defer fr.close()
	res, err := measure(ctx, e, []rig{fr.raw(), fr.withJetStream()})
	r.Floor = fr.result(res[0], res[1], nil)
	return err
}

func runProduct(ctx context.Context, e *env, r *Results) error {
	pr, err := setupProduct(ctx, e)
	if err != nil {
		return err
	}
	res, err := measure(ctx, e, []rig{pr})
	r.Product = pr.result(res[0])
	if err != nil {
		return err
	}
	return pr.verify(ctx, r.Product)
}

// runPropagation is floor and product together, alternating at every rate.
func runPropagation(ctx context.Context, e *env, r *Results) error {
	fr, err := setupFloor(ctx, e)
	if err != nil {
		return err
	}
	defer fr.close()
	pr, err := setupProduct(ctx, e)
	if err != nil {
		return err
	}
	res, err := measure(ctx, e, []rig{fr.raw(), fr.withJetStream(), pr, fr.atRateOf(pr)})
	r.Floor = fr.result(res[0], res[1], res[3])
	r.Product = pr.result(res[2])
	if err != nil {
		return err
	}
	return pr.verify(ctx, r.Product)
}
