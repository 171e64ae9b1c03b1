package main

import (
	"context"
	"log/slog"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// The soft memory limit of `syncer run` (EXTENSION_REGISTRY_MEMORY_LIMIT_BYTES).
//
// With the Go default alone (GOGC=100) the heap may grow to twice what was live after the
// last collection before the next one: a syncer of 100,000 extensions, about 110 MB live
// and 180 MB at the peak of a reconcile's whole-registry read, reached 400 MB of RSS
// (BENCHMARKS.md). A soft limit makes the collector run earlier as the heap nears it; it
// never refuses an allocation. A live heap near or above a fixed limit would make the
// collector run without end (Go bounds that at about half the CPU), so the limit follows
// the live heap: never below 1.5 times it.

// memoryLimitFor is the limit to use with the configured floor and the live heap.
func memoryLimitFor(floor, live int64) int64 {
	return max(floor, live+live/2)
}

// memoryCheck is how often the live heap is read to raise (or lower back) the limit.
const memoryCheck = 2 * time.Second

// limitMemory applies the limit for the life of ctx, unless limit is 0 or GOMEMLIMIT is
// set (the runtime's own setting wins).
func limitMemory(ctx context.Context, limit int64, lookup func(string) (string, bool), log *slog.Logger) {
	if v, set := lookup("GOMEMLIMIT"); set || limit <= 0 {
		if set {
			log.InfoContext(ctx, "syncer: GOMEMLIMIT is set; EXTENSION_REGISTRY_MEMORY_LIMIT_BYTES is not applied", "gomemlimit", v)
		}
		return
	}
	debug.SetMemoryLimit(limit)
	go func() {
		sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
		cur := limit
		t := time.NewTicker(memoryCheck)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			metrics.Read(sample)
			if sample[0].Value.Kind() != metrics.KindUint64 {
				return
			}
			if next := memoryLimitFor(limit, int64(sample[0].Value.Uint64())); next != cur {
				debug.SetMemoryLimit(next)
				if next > limit && cur == limit {
					log.InfoContext(ctx, "syncer: the live heap is above two thirds of the memory limit; the limit follows it",
						"memory_limit_bytes", limit, "now", next)
				}
				cur = next
			}
		}
	}()
}
