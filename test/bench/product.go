package main

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"

	"github.com/beamline/registry-syncer/cache"
	"github.com/beamline/registry-syncer/protocol"
)

// ProductRate is the product at one paced rate: COMMIT of a registry change -> applied
// in a router client (OnChange), through the real `syncer run` process.
type ProductRate struct {
	Pace     paceResult `json:"pace"`
	EndToEnd Latency    `json:"commit_to_onchange"`
	// The split at the live subject: a plain subscriber records when each delta is
	// announced (the syncer has read the change log, stored the delta in JetStream and
	// published it); the rest is the client's decode, verify and apply.
	CommitToAnnounced  Latency `json:"commit_to_announced"`
	AnnouncedToApplied Latency `json:"announced_to_onchange"`
	Missing            int     `json:"missing"`
}

// ProductResult is the product at every rate.
type ProductResult struct {
	Registry       int           `json:"registry_extensions"`
	WriterConns    int           `json:"writer_connections"`
	Rates          []ProductRate `json:"rates"`
	FinalRevision  int64         `json:"final_revision"`
	ChecksumsEqual bool          `json:"checksums_equal"`
}

// updateSeq is the registry write of the benchmark: one extension's metadata becomes
// {"seq": N}, in its own transaction (one revision).
const updateSeq = `UPDATE extensions SET metadata = jsonb_build_object('seq', $1::bigint) WHERE id = $2`

func runProduct(ctx context.Context, e *env, r *Results) error {
	p := e.opts.plan
	reg, err := e.newRegistry(ctx, "product", p.Registry)
	if err != nil {
		return err
	}
	var cur atomic.Pointer[stamps]
	onChange := func(_, next *cache.Snapshot, changed []string) {
		t := now()
		st := cur.Load()
		for _, id := range changed {
			if x, ok := next.Get(id); ok {
				if seq := parseSeq(x.Metadata); seq >= 0 {
					st.set(stRecv, seq, t)
					st.set(stRev, seq, next.Revision())
				}
			}
		}
	}
	ncClient, err := e.connectNATS("bench-product-client")
	if err != nil {
		return err
	}
	c, err := startClient(ctx, ncClient, reg.prefix, onChange)
	if err != nil {
		return err
	}
	e.onClose(c.Stop)

	// The announcement of each revision on the live subject.
	var liveMu sync.Mutex
	liveAt := map[int64]int64{}
	ncLive, err := e.connectNATS("bench-product-live")
	if err != nil {
		return err
	}
	if _, err := ncLive.Subscribe(reg.names.Live(), func(m *nats.Msg) {
		t := now()
		if rev, err := strconv.ParseInt(m.Header.Get(protocol.HeaderRevision), 10, 64); err == nil {
			liveMu.Lock()
			liveAt[rev] = t
			liveMu.Unlock()
		}
	}); err != nil {
		return err
	}
	if err := ncLive.Flush(); err != nil {
		return err
	}

	writers, err := e.connectPGs(ctx, reg.url, p.WriterConns)
	if err != nil {
		return err
	}
	ids := reg.ids
	write := func(ctx context.Context, conn *pgx.Conn, seq int64) error {
		tag, err := conn.Exec(ctx, updateSeq, seq, ids[seq%int64(len(ids))])
		if err == nil && tag.RowsAffected() != 1 {
			err = fmt.Errorf("update touched %d rows", tag.RowsAffected())
		}
		return err
	}
	res := &ProductResult{Registry: p.Registry, WriterConns: p.WriterConns}
	r.Product = res
	next := int64(1)
	for i, rate := range p.Rates {
		warm := int(rate * p.Warmup.Seconds())
		meas := int(rate * p.Durations[i].Seconds())
		st := newStamps(next, warm+meas, numStages)
		cur.Store(st)
		pace := paced(ctx, writers, rate, next, warm+meas, write, func(seq, t int64) { st.set(stCommit, seq, t) })
		from, to := next+int64(warm), next+int64(pace.Writes)
		waitUntil(ctx, 30*time.Second, func() bool { return st.complete(stCommit, stRecv, from, to) })
		if err := ctx.Err(); err != nil {
			return err
		}
		pr := ProductRate{Pace: pace}
		e2e, missing := st.diffs(stCommit, stRecv, from, to)
		pr.EndToEnd, pr.Missing = summarize(e2e), missing
		var toLive, fromLive []int64
		liveMu.Lock()
		for seq := from; seq < to; seq++ {
			tc, tr, rev := st.get(stCommit, seq), st.get(stRecv, seq), st.get(stRev, seq)
			tl, ok := liveAt[rev]
			if tc == 0 || tr == 0 || !ok {
				continue
			}
			toLive = append(toLive, tl-tc)
			fromLive = append(fromLive, tr-tl)
		}
		liveMu.Unlock()
		pr.CommitToAnnounced, pr.AnnouncedToApplied = summarize(toLive), summarize(fromLive)
		res.Rates = append(res.Rates, pr)
		next = to
		e.logf("product %5.0f/s: commit->OnChange p50 %.3f ms p90 %.3f p99 %.3f max %.3f (commit->announced p50 %.3f, announced->applied p50 %.3f), achieved %.1f/s, missing %d",
			rate, pr.EndToEnd.P50, pr.EndToEnd.P90, pr.EndToEnd.P99, pr.EndToEnd.Max, pr.CommitToAnnounced.P50, pr.AnnouncedToApplied.P50, pace.Achieved, missing)
	}
	check, err := e.connectPG(ctx, reg.url)
	if err != nil {
		return err
	}
	rev, _, ok, err := verifyClients(ctx, check, []*clientT{c}, 30*time.Second)
	if err != nil {
		return err
	}
	res.FinalRevision, res.ChecksumsEqual = rev, ok
	if !ok {
		return fmt.Errorf("the client does not hold the database's content at revision %d", rev)
	}
	return nil
}
