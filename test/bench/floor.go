package main

import (
	"bytes"
	"context"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// The floor: the least work that carries a committed change to a subscriber on this
// machine. A one-row UPDATE whose transaction sends a NOTIFY; a connection LISTENing;
// one SELECT by primary key; a core NATS publish; a subscriber. Its parts are measured
// on the way. A second pass of the same relay also stores each message in JetStream and
// waits for the ack before the core publish, as the product must (PROTOCOL.md §7: a
// delta is announced only after the stream acknowledged it): that pass is not the floor,
// it tells how much of the product's time the durable store alone explains.

const (
	stCommit  = iota // COMMIT returned to the writer
	stNotify         // the LISTENing connection received the notification
	stSelect         // the SELECT by primary key returned
	stPublish        // just before the core NATS publish
	stJSAck          // floor+JetStream pass: the JetStream ack arrived (publish started at stSelect)
	stRecv           // the subscriber (or the router client's OnChange) got it
	stRev            // product: the revision that carried the write (a number, not a time)
	numStages
)

// FloorRate is the floor at one paced rate.
type FloorRate struct {
	Pace             paceResult `json:"pace"`
	EndToEnd         Latency    `json:"commit_to_subscriber"`
	CommitToNotify   Latency    `json:"commit_to_notify"`
	NotifyToSelected Latency    `json:"notify_to_select_done"`
	PublishToReceive Latency    `json:"core_publish_to_receive"`
	Missing          int        `json:"missing"`
	// The relay with a JetStream store before the core publish (not the floor).
	WithJetStream      paceResult `json:"with_jetstream_pace"`
	JSEndToEnd         Latency    `json:"with_jetstream_commit_to_subscriber"`
	JetStreamAck       Latency    `json:"jetstream_publish_to_ack"`
	JSPublishToReceive Latency    `json:"with_jetstream_core_publish_to_receive"`
	JSMissing          int        `json:"with_jetstream_missing"`
	// The raw relay again, paced at the rate the product's writers achieved in the pass
	// just before (not the floor: a diagnostic, run only where the product's writers fell
	// below 90 % of the target), so that the product is also compared at its own load.
	AtProductRate    *paceResult `json:"at_product_rate_pace,omitempty"`
	AtProductRateE2E *Latency    `json:"at_product_rate_commit_to_subscriber,omitempty"`
}

// FloorResult is the floor at every rate.
type FloorResult struct {
	Rows        int         `json:"rows"`
	WriterConns int         `json:"writer_connections"`
	Rates       []FloorRate `json:"rates"`
}

// floorRig is the raw relay, set up once and measured in passes.
type floorRig struct {
	n           int
	writerConns int
	cur         atomic.Pointer[stamps]
	withJS      atomic.Bool
	relayErr    atomic.Pointer[error]
	stopRelay   func()
	relayExited chan struct{}
	writers     []*pgx.Conn
	next        int64
}

func (f *floorRig) close() {
	f.stopRelay()
	<-f.relayExited
}

func setupFloor(ctx context.Context, e *env) (*floorRig, error) {
	p := e.opts.plan
	n := p.Registry
	f := &floorRig{n: n, writerConns: p.WriterConns, next: 1, stopRelay: func() {}, relayExited: make(chan struct{})}
	close(f.relayExited)
	url, err := createSchema(ctx, e.pg, "bench_floor", false)
	if err != nil {
		return nil, err
	}
	admin, err := e.connectPG(ctx, url)
	if err != nil {
		return nil, err
	}
	// A row about the size of an extension's.
	if _, err := admin.Exec(ctx, `CREATE TABLE floor_t (id integer PRIMARY KEY, seq bigint NOT NULL DEFAULT 0, payload text NOT NULL)`); err != nil {
		return nil, err
	}
	if _, err := admin.Exec(ctx, `INSERT INTO floor_t (id, payload)
		SELECT i, '{"id":"ext.' || lpad(i::text, 6, '0') || '","type":"pre","subject":"ext.pre.' || lpad(i::text, 6, '0') ||
		'.v1","timeout_ms":100,"retry":0,"enabled":true,"version":"v1","config":{"mode":"strict"},"metadata":{}}'
		FROM generate_series(0, $1 - 1) i`, n); err != nil {
		return nil, err
	}
	if _, err := admin.Exec(ctx, `VACUUM ANALYZE floor_t`); err != nil {
		return nil, err
	}

	cur := &f.cur
	// Subscriber.
	ncSub, err := e.connectNATS("bench-floor-sub")
	if err != nil {
		return nil, err
	}
	const subject = "bench.floor.relay"
	if _, err := ncSub.Subscribe(subject, func(m *nats.Msg) {
		t := now()
		seqText, _, _ := bytes.Cut(m.Data, []byte{' '})
		if seq, err := strconv.ParseInt(string(seqText), 10, 64); err == nil {
			cur.Load().set(stRecv, seq, t)
		}
	}); err != nil {
		return nil, err
	}
	if err := ncSub.Flush(); err != nil {
		return nil, err
	}
	// Relay: LISTEN -> SELECT by primary key -> core publish.
	ncPub, err := e.connectNATS("bench-floor-pub")
	if err != nil {
		return nil, err
	}
	lconn, err := e.connectPG(ctx, url)
	if err != nil {
		return nil, err
	}
	if _, err := lconn.Exec(ctx, `LISTEN bench_floor`); err != nil {
		return nil, err
	}
	// JetStream: a stream like the product's delta stream (file storage, duplicate
	// window, direct gets), for the second pass.
	js, err := jetstream.New(ncPub)
	if err != nil {
		return nil, err
	}
	if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: "BENCH_FLOOR_JS", Subjects: []string{"bench.floorjs.>"},
		Storage: jetstream.FileStorage, Retention: jetstream.LimitsPolicy, Duplicates: 2 * time.Minute, AllowDirect: true}); err != nil {
		return nil, err
	}
	withJS, relayErr := &f.withJS, &f.relayErr
	rctx, stopRelay := context.WithCancel(context.WithoutCancel(ctx))
	relayExited := make(chan struct{})
	f.stopRelay, f.relayExited = stopRelay, relayExited
	go func() {
		defer close(relayExited)
		var buf []byte
		for {
			nt, err := lconn.WaitForNotification(rctx)
			if err != nil {
				relayErr.Store(&err)
				return
			}
			t := now()
			st := cur.Load()
			idText, seqText, _ := stringsCut(nt.Payload, ':')
			id, _ := strconv.Atoi(idText)
			seq, _ := strconv.ParseInt(seqText, 10, 64)
			st.set(stNotify, seq, t)
			var rowSeq int64
			var payload string
			if err := lconn.QueryRow(rctx, `SELECT seq, payload FROM floor_t WHERE id = $1`, id).Scan(&rowSeq, &payload); err != nil {
				relayErr.Store(&err)
				return
			}
			t = now()
			st.set(stSelect, seq, t)
			buf = strconv.AppendInt(buf[:0], rowSeq, 10)
			buf = append(buf, ' ')
			buf = append(buf, payload...)
			if withJS.Load() {
				// One subject per message, a message id and an expected last subject
				// sequence of 0, as the syncer stores a delta.
				seqText := strconv.FormatInt(seq, 10)
				m := nats.NewMsg("bench.floorjs." + seqText)
				m.Data = buf
				if _, err := js.PublishMsg(rctx, m, jetstream.WithMsgID("floor:"+seqText), jetstream.WithExpectLastSequencePerSubject(0)); err != nil {
					relayErr.Store(&err)
					return
				}
				st.set(stJSAck, seq, now())
			}
			st.set(stPublish, seq, now())
			if err := ncPub.Publish(subject, buf); err != nil {
				relayErr.Store(&err)
				return
			}
		}
	}()
	f.writers, err = e.connectPGs(ctx, url, p.WriterConns)
	if err != nil {
		f.close()
		return nil, err
	}
	return f, nil
}

// floorPass is a rig view of the floor: raw, or with the JetStream store.
type floorPass struct {
	f  *floorRig
	js bool
}

func (f *floorRig) raw() rig           { return floorPass{f, false} }
func (f *floorRig) withJetStream() rig { return floorPass{f, true} }

func (fp floorPass) name() string {
	if fp.js {
		return "floor+JetStream"
	}
	return "floor"
}

// atProductRate is the raw relay paced at the rate the product's writers achieved in
// its last pass, when that fell below 90 % of the target (registry commits are
// serialised: "Registry commits/s" in BENCHMARKS.md); otherwise it measures nothing.
type atProductRate struct {
	f  *floorRig
	pr *productRig
}

func (f *floorRig) atRateOf(pr *productRig) rig { return atProductRate{f, pr} }

func (a atProductRate) name() string { return "floor@product" }

func (a atProductRate) pass(ctx context.Context, rate float64, warm, meas int) (passResult, error) {
	got := a.pr.achieved
	if got <= 0 || got >= 0.9*rate {
		return passResult{pace: paceResult{Target: rate}}, nil
	}
	scale := got / rate
	return floorPass{a.f, false}.pass(ctx, got, int(float64(warm)*scale), max(1, int(float64(meas)*scale)))
}

func (fp floorPass) pass(ctx context.Context, rate float64, warm, meas int) (passResult, error) {
	f := fp.f
	n := f.n
	write := func(ctx context.Context, conn *pgx.Conn, seq int64) error {
		_, err := conn.Exec(ctx, `WITH u AS (UPDATE floor_t SET seq = $1 WHERE id = $2 RETURNING id, seq)
			SELECT pg_notify('bench_floor', u.id || ':' || u.seq) FROM u`, seq, seq%int64(n))
		return err
	}
	f.withJS.Store(fp.js)
	st := newStamps(f.next, warm+meas, numStages)
	f.cur.Store(st)
	pace := paced(ctx, f.writers, rate, f.next, warm+meas, write, func(seq, t int64) { st.set(stCommit, seq, t) })
	from, to := f.next+int64(warm), f.next+int64(pace.Writes)
	f.next += int64(warm + meas)
	waitUntil(ctx, 10*time.Second, func() bool { return st.complete(stCommit, stRecv, from, to) })
	if err := ctx.Err(); err != nil {
		return passResult{}, err
	}
	if err := f.relayErr.Load(); err != nil {
		return passResult{}, fmt.Errorf("relay: %w", *err)
	}
	out := passResult{pace: pace, samples: map[string][]int64{}}
	out.samples["e2e"], out.missing = st.diffs(stCommit, stRecv, from, to)
	out.samples["publish"], _ = st.diffs(stPublish, stRecv, from, to)
	if fp.js {
		out.samples["ack"], _ = st.diffs(stSelect, stJSAck, from, to)
	} else {
		out.samples["notify"], _ = st.diffs(stCommit, stNotify, from, to)
		out.samples["select"], _ = st.diffs(stNotify, stSelect, from, to)
	}
	return out, nil
}

// result builds the floor's figures from the merged passes of each rate; atProduct (nil
// without the product) holds the passes at the product's achieved rate.
func (f *floorRig) result(raw, js, atProduct []passResult) *FloorResult {
	res := &FloorResult{Rows: f.n, WriterConns: f.writerConns}
	for i := range raw {
		a, b := raw[i], js[i]
		fr := FloorRate{
			Pace: a.pace, EndToEnd: summarize(a.samples["e2e"]), CommitToNotify: summarize(a.samples["notify"]),
			NotifyToSelected: summarize(a.samples["select"]), PublishToReceive: summarize(a.samples["publish"]), Missing: a.missing,
			WithJetStream: b.pace, JSEndToEnd: summarize(b.samples["e2e"]), JetStreamAck: summarize(b.samples["ack"]),
			JSPublishToReceive: summarize(b.samples["publish"]), JSMissing: b.missing,
		}
		if i < len(atProduct) && len(atProduct[i].samples["e2e"]) > 0 {
			c := atProduct[i]
			l := summarize(c.samples["e2e"])
			fr.AtProductRate, fr.AtProductRateE2E = &c.pace, &l
		}
		res.Rates = append(res.Rates, fr)
	}
	return res
}

func stringsCut(s string, sep byte) (string, string, bool) {
	for i := 0; i < len(s); i++ {
		if s[i] == sep {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}
