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

// productRig is the product under measurement: a registry with the real syncer, a
// router client, and a plain subscriber on the live subject for the stage split.
type productRig struct {
	e       *env
	reg     *registry
	client  *clientT
	writers []*pgx.Conn
	cur     atomic.Pointer[stamps]
	liveMu  sync.Mutex
	liveAt  map[int64]int64
	next    int64
	// achieved is the commit rate the writers reached in the last pass (the floor's pass
	// at the product's rate follows it).
	achieved float64
}

func setupProduct(ctx context.Context, e *env) (*productRig, error) {
	p := e.opts.plan
	pr := &productRig{e: e, liveAt: map[int64]int64{}, next: 1}
	reg, err := e.newRegistry(ctx, "product", p.Registry)
	if err != nil {
		return nil, err
	}
	pr.reg = reg
	cur := &pr.cur
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
		return nil, err
	}
	c, err := startClient(ctx, ncClient, reg.prefix, onChange)
	if err != nil {
		return nil, err
	}
	e.onClose(c.Stop)
	pr.client = c

	// The announcement of each revision on the live subject.
	liveMu, liveAt := &pr.liveMu, pr.liveAt
	ncLive, err := e.connectNATS("bench-product-live")
	if err != nil {
		return nil, err
	}
	if _, err := ncLive.Subscribe(reg.names.Live(), func(m *nats.Msg) {
		t := now()
		if rev, err := strconv.ParseInt(m.Header.Get(protocol.HeaderRevision), 10, 64); err == nil {
			liveMu.Lock()
			liveAt[rev] = t
			liveMu.Unlock()
		}
	}); err != nil {
		return nil, err
	}
	if err := ncLive.Flush(); err != nil {
		return nil, err
	}

	pr.writers, err = e.connectPGs(ctx, reg.url, p.WriterConns)
	if err != nil {
		return nil, err
	}
	return pr, nil
}

func (pr *productRig) name() string { return "product" }

func (pr *productRig) pass(ctx context.Context, rate float64, warm, meas int) (passResult, error) {
	ids := pr.reg.ids
	write := func(ctx context.Context, conn *pgx.Conn, seq int64) error {
		tag, err := conn.Exec(ctx, updateSeq, seq, ids[seq%int64(len(ids))])
		if err == nil && tag.RowsAffected() != 1 {
			err = fmt.Errorf("update touched %d rows", tag.RowsAffected())
		}
		return err
	}
	st := newStamps(pr.next, warm+meas, numStages)
	pr.cur.Store(st)
	pace := paced(ctx, pr.writers, rate, pr.next, warm+meas, write, func(seq, t int64) { st.set(stCommit, seq, t) })
	pr.achieved = pace.Achieved
	from, to := pr.next+int64(warm), pr.next+int64(pace.Writes)
	pr.next += int64(warm + meas)
	waitUntil(ctx, 30*time.Second, func() bool { return st.complete(stCommit, stRecv, from, to) })
	if err := ctx.Err(); err != nil {
		return passResult{}, err
	}
	out := passResult{pace: pace, samples: map[string][]int64{}}
	out.samples["e2e"], out.missing = st.diffs(stCommit, stRecv, from, to)
	pr.liveMu.Lock()
	for seq := from; seq < to; seq++ {
		tc, tr, rev := st.get(stCommit, seq), st.get(stRecv, seq), st.get(stRev, seq)
		tl, ok := pr.liveAt[rev]
		if tc == 0 || tr == 0 || !ok {
			continue
		}
		out.samples["announced"] = append(out.samples["announced"], tl-tc)
		out.samples["applied"] = append(out.samples["applied"], tr-tl)
	}
	clear(pr.liveAt)
	pr.liveMu.Unlock()
	return out, nil
}

func (pr *productRig) result(passes []passResult) *ProductResult {
	p := pr.e.opts.plan
	res := &ProductResult{Registry: p.Registry, WriterConns: p.WriterConns}
	for _, x := range passes {
		res.Rates = append(res.Rates, ProductRate{Pace: x.pace, EndToEnd: summarize(x.samples["e2e"]),
			CommitToAnnounced: summarize(x.samples["announced"]), AnnouncedToApplied: summarize(x.samples["applied"]), Missing: x.missing})
	}
	return res
}

// verify checks that the client holds the database's content.
func (pr *productRig) verify(ctx context.Context, res *ProductResult) error {
	check, err := pr.e.connectPG(ctx, pr.reg.url)
	if err != nil {
		return err
	}
	rev, _, ok, err := verifyClients(ctx, check, []*clientT{pr.client}, 30*time.Second)
	if err != nil {
		return err
	}
	res.FinalRevision, res.ChecksumsEqual = rev, ok
	if !ok {
		return fmt.Errorf("the client does not hold the database's content at revision %d", rev)
	}
	return nil
}
