package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"testing"

	"github.com/beamline/registry-syncer/cache"
)

// ApplyResult: a router's cost of one one-row delta (cache.Snapshot.Apply, the step that
// issue 12 made O(changes)) at a small and a large registry, in the same run.
type ApplyResult struct {
	Sizes []ApplySize `json:"sizes"`
	// Ratio is the large registry's median ns/op over the small one's.
	Ratio float64 `json:"large_over_small"`
}

// ApplySize is one registry size: the median of the rounds (they alternate between sizes).
type ApplySize struct {
	Extensions  int       `json:"extensions"`
	NsPerOp     float64   `json:"ns_per_op"` // median over the rounds
	Rounds      []float64 `json:"rounds_ns_per_op"`
	AllocsPerOp int64     `json:"allocs_per_op"`
	BytesPerOp  int64     `json:"bytes_per_op"`
}

const applyRounds = 3

func runApply(ctx context.Context, e *env, r *Results) error {
	sizes := []int{1000, 100_000}
	if e.opts.short {
		sizes = []int{100, 2000}
	}
	res := &ApplyResult{}
	r.Apply = res
	type bench struct {
		snap    *cache.Snapshot
		changes [2][]cache.Change
	}
	benches := make([]bench, len(sizes))
	for i, n := range sizes {
		exts := cache.Synthetic(n)
		snap, err := cache.New(1, "bench", exts)
		if err != nil {
			return fmt.Errorf("apply: a registry of %d: %w", n, err)
		}
		target := exts[n/2]
		target.Versions, target.Instances = nil, nil
		for k := range benches[i].changes {
			target.TimeoutMS = 1000 + k
			v, err := json.Marshal(target)
			if err != nil {
				return err
			}
			benches[i].changes[k] = []cache.Change{{Op: cache.OpPut, Kind: cache.KindExtension, ID: target.ID, Value: v}}
		}
		benches[i].snap = snap
		res.Sizes = append(res.Sizes, ApplySize{Extensions: n})
	}
	for range applyRounds {
		for i := range benches {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			b := &benches[i]
			var failed error
			br := testing.Benchmark(func(tb *testing.B) {
				tb.ReportAllocs()
				s := b.snap
				for k := 0; k < tb.N; k++ {
					next, changed, err := s.Apply(s.Revision()+1, "bench", b.changes[k&1])
					if err != nil || len(changed) != 1 {
						failed = fmt.Errorf("apply: one-row delta on %d extensions: %v (changed %v)", sizes[i], err, changed)
						tb.FailNow()
					}
					s = next
				}
			})
			if failed != nil {
				return failed
			}
			sz := &res.Sizes[i]
			sz.Rounds = append(sz.Rounds, math.Round(float64(br.T.Nanoseconds())/float64(max(1, br.N))))
			sz.AllocsPerOp, sz.BytesPerOp = br.AllocsPerOp(), br.AllocedBytesPerOp()
		}
	}
	for i := range res.Sizes {
		sz := &res.Sizes[i]
		sorted := slices.Sorted(slices.Values(sz.Rounds))
		sz.NsPerOp = sorted[len(sorted)/2]
		e.logf("apply: one-row delta on %d extensions: %.0f ns/op (rounds %v), %d allocs, %d B", sz.Extensions, sz.NsPerOp, sz.Rounds, sz.AllocsPerOp, sz.BytesPerOp)
	}
	if small := res.Sizes[0].NsPerOp; small > 0 {
		res.Ratio = math.Round(res.Sizes[len(res.Sizes)-1].NsPerOp/small*100) / 100
	}
	return nil
}
