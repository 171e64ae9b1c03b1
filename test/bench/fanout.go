package main

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/beamline/registry-syncer/cache"
)

// FanoutResult: many router clients on one change.
type FanoutResult struct {
	Clients     int `json:"clients"`
	Connections int `json:"nats_connections"`
	Registry    int `json:"registry_extensions"`
	// Starting every client (in parallel) until each has its first snapshot.
	BootstrapAllMS float64 `json:"bootstrap_all_ms"`
	Changes        int     `json:"changes"`
	// Per change: COMMIT returned -> the last client's OnChange.
	AllUpdated Latency `json:"commit_to_all_clients"`
	// Per change: COMMIT returned -> the first client's OnChange.
	FirstUpdated Latency `json:"commit_to_first_client"`
	// Every (client, change) pair: COMMIT returned -> that client's OnChange.
	PerClient  Latency `json:"commit_to_each_client"`
	Incomplete int     `json:"incomplete_changes"`
	// JetStream consumers on the server (Jsz): before the clients, after they started, at
	// the end.
	ConsumersBefore int  `json:"consumers_before"`
	ConsumersStart  int  `json:"consumers_after_start"`
	ConsumersAfter  int  `json:"consumers_after"`
	ChecksumsEqual  bool `json:"checksums_equal"`
	// The benchmark's Go heap with every client bootstrapped (after GC): all clients
	// share one process, so their snapshots and garbage share one heap and two cores.
	HeapBytes int64 `json:"process_heap_bytes"`
	// CPU time per change while the changes ran (user + system, over the whole loop,
	// divided by the changes): of the benchmark process (the clients, and NATS when it
	// runs in-process) and of the syncer process. Less sensitive to other load on the
	// machine than the latencies: with 2 CPUs, the clients' share bounds how fast the last
	// of them can be updated.
	ClientsCPUPerChangeMS float64 `json:"clients_cpu_ms_per_change"`
	SyncerCPUPerChangeMS  float64 `json:"syncer_cpu_ms_per_change"`
	// The same with a registry of a few extensions: what NATS fan-out costs when each
	// client's apply is nearly free.
	TinyRegistry *FanoutResult `json:"tiny_registry,omitempty"`
}

// tinyRegistry is the registry size of the second fan-out pass.
const tinyRegistry = 10

func runFanout(ctx context.Context, e *env, r *Results) error {
	p := e.opts.plan
	res := &FanoutResult{}
	r.Fanout = res
	// Each pass in a scope of its own: the first pass's clients, connections and syncer
	// are gone (and their heap collectable) before the second starts.
	first := e.child()
	err := fanoutPass(ctx, first, "fanout", p.Registry, res)
	first.close()
	if err != nil {
		return err
	}
	res.TinyRegistry = &FanoutResult{}
	return fanoutPass(ctx, e, "fanouttiny", tinyRegistry, res.TinyRegistry)
}

func fanoutPass(ctx context.Context, e *env, name string, size int, res *FanoutResult) error {
	p := e.opts.plan
	reg, err := e.newRegistry(ctx, name, size)
	if err != nil {
		return err
	}
	*res = FanoutResult{Clients: p.FanClients, Connections: p.FanConns, Registry: size, Changes: p.FanChanges}
	if res.ConsumersBefore, err = e.nats.ConsumerCount(); err != nil {
		return err
	}
	conns := make([]*nats.Conn, p.FanConns)
	for i := range conns {
		// Clients buffer their messages themselves; the connection must not be the
		// bottleneck of a 50-client fan-in.
		if conns[i], err = e.connectNATS(fmt.Sprintf("bench-fanout-%d", i)); err != nil {
			return err
		}
	}
	// arrivals[k*clients+i]: when client i applied change k.
	arrivals := make([]atomic.Int64, p.FanChanges*p.FanClients)
	var counts = make([]atomic.Int64, p.FanChanges)
	seqBase := int64(1)
	clients := make([]*clientT, p.FanClients)
	var mu sync.Mutex
	var firstErr error
	sem := make(chan struct{}, 2*goroutines)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range clients {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			c, err := startClient(ctx, conns[i%len(conns)], reg.prefix, func(_, next *cache.Snapshot, changed []string) {
				t := now()
				for _, id := range changed {
					if x, ok := next.Get(id); ok {
						if k := parseSeq(x.Metadata) - seqBase; k >= 0 && k < int64(len(counts)) {
							if arrivals[int(k)*len(clients)+i].CompareAndSwap(0, t) {
								counts[k].Add(1)
							}
						}
					}
				}
			})
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if firstErr == nil {
					firstErr = err
				}
				return
			}
			clients[i] = c
			e.onClose(c.Stop)
		})
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	res.BootstrapAllMS = msd(time.Since(start))
	res.HeapBytes = int64(heapAfterGC())
	if res.ConsumersStart, err = e.nats.ConsumerCount(); err != nil {
		return err
	}
	e.logf("fanout: %d clients on %d connections bootstrapped in %.0f ms (registry of %d; heap %.0f MB)", len(clients), len(conns), res.BootstrapAllMS, size, mb(res.HeapBytes))

	writer, err := e.connectPG(ctx, reg.url)
	if err != nil {
		return err
	}
	var all, first, each []int64
	selfCPU0, syncerCPU0 := processCPU(os.Getpid()), reg.syncer.cpu()
	for k := range p.FanChanges {
		seq := seqBase + int64(k)
		if _, err := writer.Exec(ctx, updateSeq, seq, reg.ids[(k*37)%len(reg.ids)]); err != nil {
			return err
		}
		tc := now()
		done := waitUntil(ctx, 10*time.Second, func() bool { return counts[k].Load() == int64(len(clients)) })
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !done {
			res.Incomplete++
		}
		var lo, hi int64
		for i := range clients {
			t := arrivals[k*len(clients)+i].Load()
			if t == 0 {
				continue
			}
			each = append(each, t-tc)
			if lo == 0 || t < lo {
				lo = t
			}
			hi = max(hi, t)
		}
		if done {
			all = append(all, hi-tc)
		}
		first = append(first, lo-tc)
		time.Sleep(50 * time.Millisecond) // let the clients' garbage settle between changes
	}
	res.ClientsCPUPerChangeMS = round1(msd(processCPU(os.Getpid())-selfCPU0) / float64(p.FanChanges))
	res.SyncerCPUPerChangeMS = round1(msd(reg.syncer.cpu()-syncerCPU0) / float64(p.FanChanges))
	res.AllUpdated, res.FirstUpdated, res.PerClient = summarize(all), summarize(first), summarize(each)
	if res.ConsumersAfter, err = e.nats.ConsumerCount(); err != nil {
		return err
	}
	_, _, ok, err := verifyClients(ctx, writer, clients, 30*time.Second)
	if err != nil {
		return err
	}
	res.ChecksumsEqual = ok
	e.logf("fanout: all %d clients updated (registry of %d): p50 %.1f ms p99 %.1f ms max %.1f ms over %d changes; CPU per change: clients %.1f ms, syncer %.1f ms; consumers %d -> %d -> %d",
		len(clients), size, res.AllUpdated.P50, res.AllUpdated.P99, res.AllUpdated.Max, p.FanChanges, res.ClientsCPUPerChangeMS, res.SyncerCPUPerChangeMS,
		res.ConsumersBefore, res.ConsumersStart, res.ConsumersAfter)
	if !ok {
		return fmt.Errorf("not every client holds the database's content")
	}
	if res.Incomplete > 0 {
		return fmt.Errorf("%d of %d changes did not reach every client within 10 s", res.Incomplete, p.FanChanges)
	}
	return nil
}
