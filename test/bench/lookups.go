package main

import (
	"context"
	"math"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/beamline/registry-syncer/cache"
)

// LookupBench is one read benchmark of the client.
type LookupBench struct {
	Name       string  `json:"name"`
	Goroutines int     `json:"goroutines"`
	NsPerOp    float64 `json:"ns_per_op"` // wall time over all operations (b.RunParallel's convention)
	// NsPerCall is the time one call takes in its goroutine: NsPerOp times goroutines.
	NsPerCall   float64 `json:"ns_per_call"`
	AllocsPerOp int64   `json:"allocs_per_op"`
	BytesPerOp  int64   `json:"bytes_per_op"`
	Ops         int     `json:"ops"`
}

// LookupResult: the client's hot-path reads on a bootstrapped client.
type LookupResult struct {
	Registry int           `json:"registry_extensions"`
	Benches  []LookupBench `json:"benches"`
}

var (
	sinkExt  *cache.Extension
	sinkList []*cache.Extension
	sinkMu   sync.Mutex
)

func runLookups(ctx context.Context, e *env, r *Results) error {
	p := e.opts.plan
	reg, err := e.newRegistry(ctx, "lookups", p.Registry)
	if err != nil {
		return err
	}
	nc, err := e.connectNATS("bench-lookups")
	if err != nil {
		return err
	}
	c, err := startClient(ctx, nc, reg.prefix, nil)
	if err != nil {
		return err
	}
	e.onClose(c.Stop)
	// Enabled ids only (every tenth synthetic extension is disabled), in a scattered
	// order so consecutive lookups do not touch neighbouring map entries.
	var ids []string
	for _, x := range c.Snapshot().All() {
		if x.Enabled {
			ids = append(ids, x.ID)
		}
	}
	const mask = 1023
	table := make([]string, mask+1)
	for i := range table {
		table[i] = ids[(i*7919)%len(ids)]
	}
	lookup := func(n, offset int) {
		var x *cache.Extension
		for i := range n {
			e, ok := c.Lookup(table[(i+offset)&mask])
			if !ok {
				panic("lookup of an enabled extension failed")
			}
			x = e
		}
		sinkMu.Lock()
		sinkExt = x
		sinkMu.Unlock()
	}
	types := []string{cache.TypePre, cache.TypeValidator, cache.TypePost, cache.TypeProvider}
	byType := func(n, offset int) {
		var l []*cache.Extension
		for i := range n {
			l = c.ByType(types[(i+offset)&3])
		}
		sinkMu.Lock()
		sinkList = l
		sinkMu.Unlock()
	}
	res := &LookupResult{Registry: p.Registry}
	r.Lookups = res
	for _, b := range []struct {
		name string
		op   func(n, offset int)
	}{{"Lookup", lookup}, {"ByType", byType}} {
		for _, g := range []int{1, 2} {
			lb := benchOp(b.op, g, e.opts.short)
			lb.Name = b.name
			lb.NsPerCall = math.Round(lb.NsPerOp*float64(g)*10) / 10
			res.Benches = append(res.Benches, lb)
			e.logf("lookups: %s with %d goroutine(s): %.1f ns/op (%.1f ns per call), %d allocs/op", b.name, g, lb.NsPerOp, lb.NsPerCall, lb.AllocsPerOp)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	return nil
}

// benchOp runs op split over g goroutines: ns/op is wall time over all operations (as
// b.RunParallel reports it). The full run uses testing.Benchmark; -short a fixed count.
func benchOp(op func(n, offset int), g int, short bool) LookupBench {
	parallel := func(n int) {
		var wg sync.WaitGroup
		for w := range g {
			wg.Go(func() { op(n/g, w*97) })
		}
		wg.Wait()
	}
	if short {
		const n = 200_000
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		start := time.Now()
		parallel(n)
		el := time.Since(start)
		runtime.ReadMemStats(&after)
		return LookupBench{Goroutines: g, Ops: n, NsPerOp: math.Round(float64(el.Nanoseconds())/n*10) / 10,
			AllocsPerOp: int64((after.Mallocs - before.Mallocs) / n), BytesPerOp: int64((after.TotalAlloc - before.TotalAlloc) / n)}
	}
	br := testing.Benchmark(func(b *testing.B) {
		b.ReportAllocs()
		parallel(b.N)
	})
	return LookupBench{Goroutines: g, Ops: br.N, NsPerOp: math.Round(float64(br.T.Nanoseconds())/float64(br.N)*10) / 10,
		AllocsPerOp: br.AllocsPerOp(), BytesPerOp: br.AllocedBytesPerOp()}
}
