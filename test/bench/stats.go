package main

import (
	"context"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

// clockBase: every timestamp of the run is nanoseconds on the monotonic clock since
// clockBase, taken in this one process, so start and end of a latency share a clock.
var clockBase = time.Now()

func now() int64 { return int64(time.Since(clockBase)) }

// Latency summarises a set of samples; every figure is in milliseconds.
type Latency struct {
	N    int     `json:"n"`
	P50  float64 `json:"p50_ms"`
	P90  float64 `json:"p90_ms"`
	P99  float64 `json:"p99_ms"`
	Max  float64 `json:"max_ms"`
	Mean float64 `json:"mean_ms"`
	Min  float64 `json:"min_ms"`
}

func ms(ns int64) float64 { return math.Round(float64(ns)/1e3) / 1e3 }

func msd(d time.Duration) float64 { return ms(int64(d)) }

// summarize sorts samples (nanoseconds) and returns nearest-rank percentiles.
func summarize(samples []int64) Latency {
	if len(samples) == 0 {
		return Latency{}
	}
	s := slices.Clone(samples)
	slices.Sort(s)
	rank := func(p float64) int64 {
		i := int(math.Ceil(p*float64(len(s)))) - 1
		return s[max(0, min(len(s)-1, i))]
	}
	var sum float64
	for _, v := range s {
		sum += float64(v)
	}
	return Latency{N: len(s), P50: ms(rank(.50)), P90: ms(rank(.90)), P99: ms(rank(.99)), Max: ms(s[len(s)-1]),
		Min: ms(s[0]), Mean: ms(int64(sum / float64(len(s))))}
}

// stamps records one timestamp per sequence number and stage.
type stamps struct {
	first int64 // sequence number of index 0
	at    [][]atomic.Int64
}

func newStamps(first int64, n, stages int) *stamps {
	s := &stamps{first: first, at: make([][]atomic.Int64, stages)}
	for i := range s.at {
		s.at[i] = make([]atomic.Int64, n)
	}
	return s
}

// set records t for seq at stage unless one is recorded already (first wins).
func (s *stamps) set(stage int, seq, t int64) {
	if s == nil {
		return
	}
	i := seq - s.first
	if i < 0 || i >= int64(len(s.at[stage])) {
		return
	}
	s.at[stage][i].CompareAndSwap(0, t)
}

func (s *stamps) get(stage int, seq int64) int64 {
	i := seq - s.first
	if i < 0 || i >= int64(len(s.at[stage])) {
		return 0
	}
	return s.at[stage][i].Load()
}

// diffs returns stage b minus stage a over the sequence numbers [from, to) where both
// are recorded, and how many lacked b (a recorded).
func (s *stamps) diffs(a, b int, from, to int64) (out []int64, missing int) {
	for seq := from; seq < to; seq++ {
		ta, tb := s.get(a, seq), s.get(b, seq)
		if ta == 0 {
			continue
		}
		if tb == 0 {
			missing++
			continue
		}
		out = append(out, tb-ta)
	}
	return out, missing
}

// complete reports whether stage b is recorded for every seq in [from, to) that has a.
func (s *stamps) complete(a, b int, from, to int64) bool {
	for seq := from; seq < to; seq++ {
		if s.get(a, seq) != 0 && s.get(b, seq) == 0 {
			return false
		}
	}
	return true
}

// writeFunc performs the write of one sequence number on conn; it returns once COMMIT
// has returned.
type writeFunc func(ctx context.Context, conn *pgx.Conn, seq int64) error

// paceResult describes one paced run.
type paceResult struct {
	Target   float64 `json:"target_per_s"`
	Achieved float64 `json:"achieved_per_s"`
	Writes   int     `json:"writes"`
	Errors   int     `json:"errors"`
	Late     int     `json:"late_dispatches"` // writes dispatched >1 ms after their slot: every writer was busy
	ElapsedS float64 `json:"elapsed_s"`
}

// paced issues count writes at rate per second, seq first..first+count-1, on a pool of
// writer connections (one write at a time per connection), and calls committed(seq, t)
// with the time COMMIT returned. When the writers cannot keep up, it stops dispatching
// at 1.25 times the planned duration: Writes says how many were issued.
func paced(ctx context.Context, conns []*pgx.Conn, rate float64, first int64, count int, write writeFunc, committed func(seq, t int64)) paceResult {
	jobs := make(chan int64, len(conns))
	var errs atomic.Int64
	var wg sync.WaitGroup
	for _, conn := range conns {
		wg.Go(func() {
			for seq := range jobs {
				if err := write(ctx, conn, seq); err != nil {
					errs.Add(1)
					continue
				}
				committed(seq, now())
			}
		})
	}
	res := paceResult{Target: rate}
	start := time.Now()
	interval := float64(time.Second) / rate
	deadline := start.Add(time.Duration(1.25 * float64(count) * interval))
	for i := 0; i < count && ctx.Err() == nil && time.Now().Before(deadline); i++ {
		slot := start.Add(time.Duration(float64(i) * interval))
		if d := time.Until(slot); d > 0 {
			time.Sleep(d)
		}
		select {
		case jobs <- first + int64(i):
		case <-ctx.Done():
		}
		if time.Since(slot) > time.Millisecond {
			res.Late++
		}
		res.Writes++
	}
	close(jobs)
	wg.Wait()
	res.ElapsedS = time.Since(start).Seconds()
	res.Achieved = math.Round(float64(res.Writes)/res.ElapsedS*10) / 10
	res.Errors = int(errs.Load())
	return res
}

// waitUntil polls cond every millisecond until it holds or timeout passes.
func waitUntil(ctx context.Context, timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			return false
		}
		time.Sleep(time.Millisecond)
	}
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return math.Round(a/b*100) / 100
}

func round1(f float64) float64 { return math.Round(f*10) / 10 }
