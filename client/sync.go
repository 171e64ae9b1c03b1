package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/beamline/registry-syncer/cache"
	"github.com/beamline/registry-syncer/protocol"
)

// goal is what the client knows it is missing. While a goal is pending the
// client retries, with backoff, to reach it from the stored deltas and the
// stored snapshot; live deltas that extend the served revision still apply.
type goal struct {
	target  int64            // revision to reach
	content protocol.Content // content expected at target (zero: any verified content)
	hard    bool             // deltas cannot extend the served content to the target (missing, resync, drift): read a snapshot first
	probe   bool             // also catch up with the stream's newest delta (the target is unknown)
	reason  string
	since   time.Time // when the goal was first recorded
}

// loopState belongs to the run goroutine.
type loopState struct {
	need        *goal
	attempt     int
	lastAttempt time.Time
	timer       *time.Timer
	armed       bool
	due         time.Time
	dropped     int
	badSnapshot string // manifest of the last snapshot rejected, not read again
	badStored   string // last stored payload rejected, not reported again
	readyClosed bool
	tokens      float64   // resync tokens left (see resyncBurst)
	tokensAt    time.Time // when tokens was last refilled
	// rejectLogged is when a rejection was last logged; rejectQuiet counts those
	// not logged since.
	rejectLogged time.Time
	rejectQuiet  int
	// cost is what the client measured of its reads and applies: catch-up chooses the
	// chain of stored deltas or the snapshot by it (chooseCatchUp).
	cost costModel
}

const (
	backoffMin = 50 * time.Millisecond
	backoffMax = 2 * time.Second
	// maxChain and maxChainBytes bound how many stored deltas, and how many bytes
	// of them, are held in memory to bridge one gap (the estimated costs choose
	// the path: chooseCatchUp); beyond either the snapshot is read instead.
	maxChain      = 10_000
	maxChainBytes = 64 << 20
	// snapshotMovedRetries bounds immediate rereads when the snapshot is
	// replaced while being read.
	snapshotMovedRetries = 3
	// New goals are rate limited by a token bucket: up to resyncBurst start at
	// once, then one per resyncEvery. Whatever arrives (rejected payloads,
	// heartbeats alternating "ahead" and "confirm"), resync reads stay bounded;
	// reaching or dropping a goal returns no token.
	resyncBurst = 5
	resyncEvery = 200 * time.Millisecond
	// defaultGoalTimeout is how long a goal that neither the stored deltas nor
	// the stored snapshot can reach is chased: a revision announced but absent
	// from the streams is given up, and the client goes on following the live
	// subject (the next announcement or heartbeat sets a new goal).
	defaultGoalTimeout = 30 * time.Second
	// rejectLogEvery bounds how often a rejection is logged (each one is still
	// counted and passed to Config.OnError).
	rejectLogEvery = time.Second
)

// Catch-up paths (Client.catchUps, the registry_client_catchups_total label).
const (
	pathChain = iota
	pathSnapshot
)

var pathNames = [...]string{pathChain: "chain", pathSnapshot: "snapshot"}

// Priors of the cost model until the client measured its own reads: a direct get
// on loopback, applying a small delta, reading and decoding a snapshot per byte.
const (
	priorGet          = 200 * time.Microsecond
	priorApply        = 50 * time.Microsecond
	priorSnapshotByte = 25 * time.Nanosecond
	// snapshotAdvantage: the snapshot is read only when its estimate is below the
	// chain's divided by this (the chain also reports every revision through
	// OnChange; estimates close to each other do not flip the path back and forth).
	snapshotAdvantage = 2
)

// ewma is an exponentially weighted moving average (weight 1/8 for each new sample).
type ewma struct {
	v float64
	n int
}

func (e *ewma) observe(x float64) {
	if e.n == 0 {
		e.v = x
	} else {
		e.v += (x - e.v) / 8
	}
	e.n++
}

// or is the average, or def before any sample.
func (e ewma) or(def float64) float64 {
	if e.n == 0 {
		return def
	}
	return e.v
}

// costModel holds the client's measurements, in nanoseconds. It belongs to the run
// goroutine.
type costModel struct {
	get          ewma // one direct get of a stored delta (round trip and transfer)
	apply        ewma // applying and verifying one delta
	snapshotByte ewma // reading, decoding and diffing a snapshot, per byte of its document
}

// chain estimates fetching and applying n stored deltas.
func (m *costModel) chain(n int64) time.Duration {
	return time.Duration(float64(n) * (m.get.or(float64(priorGet)) + m.apply.or(float64(priorApply))))
}

// snapshot estimates reading the snapshot of man and then the deltas stored after it up
// to target. Before any snapshot was read, its chunks cost a direct get each plus the
// per-byte prior.
func (m *costModel) snapshot(man *protocol.Manifest, target int64) time.Duration {
	read := float64(man.Size) * m.snapshotByte.or(0)
	if m.snapshotByte.n == 0 {
		read = float64(len(man.Sequences)+1)*m.get.or(float64(priorGet)) + float64(man.Size)*float64(priorSnapshotByte)
	}
	return time.Duration(read) + m.chain(max(0, target-man.Revision))
}

var (
	// errSnapshotCheaper: the snapshot's estimated cost is below the chain's.
	errSnapshotCheaper = errors.New("the stored snapshot is cheaper than the chain of stored deltas")
	// errMissing: a delta needed to bridge a gap is not stored (aged out, lost,
	// or the revisions jump); the snapshot must catch up.
	errMissing = errors.New("stored delta missing")
	// errNeedSnapshot: deltas cannot lead from the served state to the target.
	errNeedSnapshot = errors.New("deltas cannot reach the target; a snapshot is needed")
	// errBehind: the stored snapshot is not newer than the served one yet.
	errBehind = errors.New("the stored snapshot is not newer than the served one yet")
)

func (c *Client) run(ctx context.Context) {
	defer close(c.done)
	defer c.msgs.close()
	defer unsubscribe(c.subs)
	var reports sync.WaitGroup
	reports.Go(func() { c.reportLoop(ctx) })
	defer reports.Wait()
	c.loop.timer = time.NewTimer(time.Hour)
	c.loop.timer.Stop()
	defer c.loop.timer.Stop()

	if c.testBeforeBootstrap != nil {
		c.testBeforeBootstrap()
	}
	live, heartbeat := c.names.Live(), c.names.Heartbeat()
	c.loop.need = &goal{reason: "bootstrap"}
	c.resync(ctx)
	// A reconnect may have lost live messages (PROTOCOL.md §9, reconnection): catch up
	// from the stream once the subscriptions are back. nats.go re-subscribes on its own;
	// its reconnect count is watched rather than its handler, which belongs to the caller.
	reconnects := c.nc.Stats().Reconnects
	watch := time.NewTicker(time.Second)
	defer watch.Stop()
	for {
		var msgs chan struct{}
		if c.snap.Load() != nil {
			// Before the first snapshot, messages wait in the queue: those that
			// arrive while the snapshot is read are applied or ignored after it.
			msgs = c.msgs.ready
		}
		var timer <-chan time.Time
		if c.loop.armed {
			timer = c.loop.timer.C
		}
		select {
		case <-ctx.Done():
			return
		case <-msgs:
			if m := c.msgs.pop(); m != nil {
				switch m.Subject {
				case live:
					c.handleDelta(ctx, m)
				case heartbeat:
					c.handleHeartbeat(ctx, m)
				}
			}
			c.checkDropped(ctx)
		case <-timer:
			c.loop.armed = false
			c.resync(ctx)
		case <-watch.C:
			if n := c.nc.Stats().Reconnects; n != reconnects && c.nc.IsConnected() {
				reconnects = n
				if err := c.nc.FlushTimeout(c.cfg.RequestTimeout); err == nil { // subscriptions confirmed
					c.want(ctx, goal{probe: true, reason: "reconnected"})
				}
			}
		}
	}
}

// verifyLive checks a live or heartbeat message's signature. Before the first
// bootstrap has established trust (no configured keys), nothing can be
// verified: the message only hurries a pending bootstrap and is otherwise
// ignored (handled reports false).
func (c *Client) verifyLive(ctx context.Context, kind string, m *nats.Msg) (handled bool) {
	t := c.trust.Load()
	if t == nil {
		if c.isFallback(c.snap.Load()) {
			c.hurry()
		}
		return false
	}
	if err := t.Verify(kind, m.Header, m.Data); err != nil {
		c.reject(ctx, fmt.Errorf("%w: %s message: %w", ErrRejected, m.Subject, err))
		c.want(ctx, goal{probe: true, reason: "rejected " + kind})
		return false
	}
	return true
}

// handleDelta processes one message from the live subject.
func (c *Client) handleDelta(ctx context.Context, m *nats.Msg) {
	if c.verifyLive(ctx, protocol.KindDelta, m) {
		c.handleVerifiedDelta(ctx, m)
	}
}

// handleVerifiedDelta processes a live message whose signature verified.
func (c *Client) handleVerifiedDelta(ctx context.Context, m *nats.Msg) {
	d, err := protocol.DeltaFromMsg(m)
	if err != nil {
		c.reject(ctx, fmt.Errorf("%w: live message: %w", ErrRejected, err))
		c.want(ctx, goal{probe: true, reason: "rejected live message"})
		return
	}
	c.heard()
	cur := c.snap.Load()
	switch {
	case c.isFallback(cur):
		c.want(ctx, goal{target: d.Revision, content: d.Content(), reason: "replace the fallback"})
		c.hurry() // the registry is there: read its snapshot soon
	case d.Revision <= cur.Revision():
		c.log.DebugContext(ctx, "client: delta already applied", slog.Int64("revision", d.Revision), slog.Int64("served", cur.Revision()))
	case d.Resync:
		c.want(ctx, goal{target: d.Revision, content: d.Content(), hard: true, reason: "resync delta"})
	case d.PrevRevision == cur.Revision():
		// Applied even while a goal is pending: the result is verified against the
		// signed checksum, so a verified result is the registry's content.
		if err := c.applyDelta(d, "live"); err != nil {
			if n := c.loop.need; n != nil && n.hard {
				// The served content is already known to need a snapshot (drift, a
				// resync delta): the delta failing on top of it is expected.
				c.log.DebugContext(ctx, "client: live delta does not apply while a snapshot is awaited", slog.Any("error", err))
				c.want(ctx, goal{target: d.Revision, content: d.Content(), hard: true, reason: "gap"})
				return
			}
			c.reject(ctx, err)
			c.want(ctx, goal{probe: true, reason: "rejected live delta"})
			return
		}
		if n := c.loop.need; n != nil && c.satisfied(n) {
			c.reached(ctx)
		}
	default:
		c.want(ctx, goal{target: d.Revision, content: d.Content(), reason: "gap"})
	}
}

// handleHeartbeat processes one message from the heartbeat subject.
func (c *Client) handleHeartbeat(ctx context.Context, m *nats.Msg) {
	if !c.verifyLive(ctx, protocol.KindHeartbeat, m) {
		return
	}
	h, err := protocol.DecodeHeartbeat(m.Data)
	if err != nil {
		c.reject(ctx, fmt.Errorf("%w: heartbeat: %w", ErrRejected, err))
		c.want(ctx, goal{probe: true, reason: "rejected heartbeat"})
		return
	}
	c.heard()
	c.heartbeatMS.Store(h.IntervalMS)
	cur := c.snap.Load()
	switch {
	case c.isFallback(cur):
		c.want(ctx, goal{target: h.Revision, content: h.Content(), reason: "replace the fallback"})
		c.hurry()
	case h.Revision > cur.Revision():
		c.want(ctx, goal{target: h.Revision, content: h.Content(), reason: "heartbeat ahead"})
	case h.Revision < cur.Revision():
		// An older syncer, or a heartbeat sent before the last delta: nothing to learn.
	case !h.Content().Matches(cur):
		c.want(ctx, goal{target: h.Revision, content: h.Content(), hard: true, reason: "drift"})
	default:
		// The syncer confirms the served state (no resync token is returned:
		// confirmations alternating with news of a gap do not make resyncs more
		// frequent).
		if n := c.loop.need; n != nil && !n.probe && !c.isFallback(cur) {
			c.log.InfoContext(ctx, "client: heartbeat confirms the served revision; resync abandoned",
				slog.Int64("revision", cur.Revision()), slog.Int64("target", n.target), slog.String("reason", n.reason))
			c.reached(ctx)
		}
	}
}

// dropped is how many live and heartbeat messages were dropped so far.
func (c *Client) dropped() int {
	n := c.msgs.droppedCount()
	for _, s := range c.subs {
		if d, err := s.Dropped(); err == nil {
			n += d
		}
	}
	return n
}

// checkDropped notices messages dropped because the buffer was full (by the queue,
// or by the connection when the queue's forwarder fell behind): they may be deltas,
// so catch up with the stream.
func (c *Client) checkDropped(ctx context.Context) {
	if n := c.dropped(); n > c.loop.dropped {
		c.log.WarnContext(ctx, "client: live messages dropped (buffer full); catching up from the stream",
			slog.Int("dropped", n-c.loop.dropped), slog.Int("buffer_size", c.cfg.BufferSize), slog.Int("buffer_bytes", c.cfg.BufferBytes))
		c.loop.dropped = n
		c.want(ctx, goal{probe: true, reason: "dropped messages"})
	}
}

// want records a goal, merging it into the pending one. A new goal is worked
// on at once; a pending one is retried soon.
func (c *Client) want(ctx context.Context, g goal) {
	if n := c.loop.need; n != nil {
		if g.target > n.target || (g.target == n.target && !g.content.IsZero()) {
			n.target, n.content = g.target, g.content
		}
		n.hard = n.hard || g.hard
		n.probe = n.probe || g.probe
		return // retried on schedule: more gap news does not make a lagging snapshot newer
	}
	c.resyncs.Add(1)
	g.since = time.Now()
	c.loop.need = &g
	c.log.InfoContext(ctx, "client: resyncing", slog.String("reason", g.reason),
		slog.Int64("revision", c.Revision()), slog.Int64("target", g.target))
	c.loop.attempt = 0
	if wait := c.takeToken(); wait > 0 {
		c.schedule(wait)
		return
	}
	c.resync(ctx)
}

// takeToken takes a resync token and returns how long to wait before the
// goal's first attempt (0: at once).
func (c *Client) takeToken() time.Duration {
	now := time.Now()
	if c.loop.tokensAt.IsZero() {
		c.loop.tokens = resyncBurst
	} else {
		c.loop.tokens = min(resyncBurst, c.loop.tokens+float64(now.Sub(c.loop.tokensAt))/float64(resyncEvery))
	}
	c.loop.tokensAt = now
	c.loop.tokens--
	if c.loop.tokens >= 0 {
		return 0
	}
	return time.Duration(-c.loop.tokens * float64(resyncEvery))
}

// reached drops the pending goal.
func (c *Client) reached(ctx context.Context) {
	n := c.loop.need
	c.loop.need = nil
	c.loop.timer.Stop()
	c.loop.armed = false
	if n.reason != "bootstrap" {
		c.log.InfoContext(ctx, "client: resynced", slog.String("reason", n.reason), slog.Int64("revision", c.Revision()))
	}
}

// satisfied reports whether the served snapshot meets g.
func (c *Client) satisfied(g *goal) bool {
	cur := c.snap.Load()
	if cur == nil || c.isFallback(cur) || g.probe {
		return false
	}
	return cur.Revision() > g.target ||
		(cur.Revision() == g.target && (g.content.IsZero() || g.content.Matches(cur)))
}

// resync makes one attempt at the pending goal and schedules the next one if
// the goal is not reached.
func (c *Client) resync(ctx context.Context) {
	g := c.loop.need
	if g == nil {
		return
	}
	c.loop.attempt++
	c.loop.lastAttempt = time.Now()
	err := c.tryResync(ctx, g)
	if ctx.Err() != nil {
		return
	}
	if c.snap.Load() == nil {
		c.useFallback(ctx)
	}
	if !c.loop.readyClosed && c.snap.Load() != nil {
		// The first snapshot is served and the deltas stored after it applied
		// (or found missing): Start(WaitBootstrap) may return.
		c.loop.readyClosed = true
		close(c.ready)
	}
	if c.satisfied(g) {
		c.reached(ctx)
		return
	}
	if c.base() != nil && time.Since(g.since) > c.goalTimeout && (errors.Is(err, errMissing) || errors.Is(err, errBehind)) {
		// Neither the stored deltas nor the stored snapshot reach the target: it
		// was announced but is not in the streams. Give it up and keep following.
		c.log.WarnContext(ctx, "client: giving up a resync target the streams do not hold",
			slog.String("reason", g.reason), slog.Int64("revision", c.Revision()), slog.Int64("target", g.target),
			slog.Duration("after", time.Since(g.since)), slog.Any("error", err))
		c.reached(ctx)
		return
	}
	wait := backoff(c.loop.attempt)
	if c.snap.Load() == nil && c.cfg.Fallback != nil {
		if left := time.Until(time.Unix(0, c.startedAt.Load()).Add(c.cfg.FallbackAfter)); left > 0 {
			wait = min(wait, left)
		}
	}
	level := slog.LevelWarn
	if errors.Is(err, errBehind) || (c.base() == nil && c.loop.attempt > 1 && c.loop.attempt%10 != 0) {
		level = slog.LevelDebug // expected while a snapshot lags; repeated while none exists
	}
	c.log.Log(ctx, level, "client: resync incomplete; retrying", slog.String("reason", g.reason),
		slog.Int64("revision", c.Revision()), slog.Int64("target", g.target), slog.Any("error", err),
		slog.Int("attempt", c.loop.attempt), slog.Duration("sleep_duration", wait))
	c.schedule(wait)
}

// tryResync moves towards g: through the stored deltas when the served state
// can be extended, else (or when they are missing) from the stored snapshot,
// followed by the deltas stored after it.
func (c *Client) tryResync(ctx context.Context, g *goal) error {
	var deltaErr error
	if c.base() != nil && !g.hard {
		deltaErr = c.catchUp(ctx, g, true)
		if deltaErr == nil {
			if c.satisfied(g) {
				return nil
			}
			g.hard = true // at the target, with other content than announced
		} else if needsSnapshot(deltaErr) {
			g.hard = true // retries read the snapshot first
		}
	}
	installed, err := c.fromSnapshot(ctx, g)
	if err != nil {
		return errors.Join(deltaErr, err)
	}
	if !installed {
		return errors.Join(deltaErr, errBehind)
	}
	g.hard = false
	if err := c.catchUp(ctx, g, false); err != nil {
		g.hard = needsSnapshot(err)
		return err
	}
	return nil
}

// needsSnapshot reports whether a catch-up failure can only be repaired by a
// newer snapshot (rather than by retrying the same reads).
func needsSnapshot(err error) bool {
	return errors.Is(err, errNeedSnapshot) || errors.Is(err, errMissing) || errors.Is(err, errSnapshotCheaper)
}

// base is the served snapshot when deltas may extend it (not the fallback).
func (c *Client) base() *cache.Snapshot {
	cur := c.snap.Load()
	if cur == nil || c.isFallback(cur) {
		return nil
	}
	return cur
}

// catchUp applies the stored deltas that lead from the served revision to the
// newer of g.target and the stream's newest delta, walking back through
// prev_revision links (so revisions may jump) and applying in order. With
// snapshotOK, it first compares the estimated costs of that chain and of the
// stored snapshot (chooseCatchUp), and returns errSnapshotCheaper when the
// snapshot wins.
func (c *Client) catchUp(ctx context.Context, g *goal, snapshotOK bool) error {
	cur := c.base()
	tip, err := c.lastStored(ctx)
	if err != nil {
		return err
	}
	target := g.target
	if tip != nil && tip.Revision > target {
		target = tip.Revision
		g.target, g.content = tip.Revision, tip.Content()
	}
	if target <= cur.Revision() {
		g.probe = false
		return nil
	}
	if snapshotOK {
		if err := c.chooseCatchUp(ctx, cur, target); err != nil {
			return err
		}
	}
	d := tip
	if d == nil || d.Revision != target {
		if d, err = c.fetch(ctx, target); err != nil {
			return err
		}
	}
	chain, held := []*protocol.Delta{d}, deltaBytes(d)
	for d.PrevRevision > cur.Revision() {
		if len(chain) >= maxChain {
			return fmt.Errorf("%w: more than %d deltas behind", errNeedSnapshot, maxChain)
		}
		if held > c.chainBytes {
			return fmt.Errorf("%w: the %d stored deltas read back to revision %d already hold %d bytes (at most %d)",
				errNeedSnapshot, len(chain), d.Revision, held, c.chainBytes)
		}
		if d, err = c.fetch(ctx, d.PrevRevision); err != nil {
			return err
		}
		chain = append(chain, d)
		held += deltaBytes(d)
	}
	if d.PrevRevision != cur.Revision() {
		return fmt.Errorf("%w: stored delta %d follows revision %d, not the served %d", errNeedSnapshot, d.Revision, d.PrevRevision, cur.Revision())
	}
	slices.Reverse(chain)
	for _, d := range chain {
		if d.Resync {
			return fmt.Errorf("%w: delta %d is a resync delta", errNeedSnapshot, d.Revision)
		}
		if err := c.applyDelta(d, "stored"); err != nil {
			c.rejectStored(ctx, err)
			return fmt.Errorf("%w: %w", errNeedSnapshot, err)
		}
	}
	g.probe = false
	c.log.DebugContext(ctx, "client: caught up from the stream", slog.Int("deltas", len(chain)), slog.Int64("revision", c.Revision()))
	return nil
}

// chooseCatchUp estimates the cost of the chain from cur to target (at most
// target - cur.Revision() deltas: revisions may jump) and, when reading the
// manifest may pay (the chain costs more than the two direct gets any snapshot
// takes), the cost of the stored snapshot followed by the deltas after it; it
// returns errSnapshotCheaper when the snapshot's is below the chain's by
// snapshotAdvantage. PROTOCOL.md §6 states the rule.
func (c *Client) chooseCatchUp(ctx context.Context, cur *cache.Snapshot, target int64) error {
	behind := target - cur.Revision()
	chain := c.loop.cost.chain(behind)
	floor := 2 * time.Duration(c.loop.cost.get.or(float64(priorGet)))
	if chain <= snapshotAdvantage*floor {
		return nil // no snapshot can be cheaper enough: do not read the manifest
	}
	mctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
	m, err := c.reader.Manifest(mctx)
	cancel()
	path, why := pathChain, "the chain is cheaper"
	var snap time.Duration
	switch {
	case err != nil:
		why = "no readable snapshot manifest: " + err.Error()
	case !c.replaces(cur, m.Revision, m.Content()) || m.Revision <= cur.Revision():
		why = "the stored snapshot is not newer than the served revision"
	default:
		snap = c.loop.cost.snapshot(m, target)
		if snap*snapshotAdvantage < chain {
			path, why = pathSnapshot, "the snapshot is cheaper"
		}
	}
	c.catchUps[path].Add(1)
	c.log.InfoContext(ctx, "client: catch-up path chosen", slog.String("path", pathNames[path]), slog.String("why", why),
		slog.Int64("revision", cur.Revision()), slog.Int64("target", target), slog.Int64("deltas_behind", behind),
		slog.Duration("chain_estimate", chain), slog.Duration("snapshot_estimate", snap))
	if path == pathSnapshot {
		return fmt.Errorf("%w: %d deltas behind, estimated %s, the snapshot %s", errSnapshotCheaper, behind, chain, snap)
	}
	return nil
}

// deltaBytes is about what a decoded delta holds in memory.
func deltaBytes(d *protocol.Delta) int {
	n := 512
	for i := range d.Changes {
		ch := &d.Changes[i]
		n += 96 + len(ch.ID) + len(ch.Key) + len(ch.Value)
	}
	return n
}

// lastStored returns the newest stored delta (nil when none is stored).
func (c *Client) lastStored(ctx context.Context) (*protocol.Delta, error) {
	rctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
	defer cancel()
	start := time.Now()
	st, err := c.reader.Last(rctx, c.names.DeltaStream, c.names.DeltaSubjects())
	if err == nil {
		c.loop.cost.get.observe(float64(time.Since(start)))
	}
	if errors.Is(err, protocol.ErrNotFound) || errors.Is(err, protocol.ErrNoStream) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the newest stored delta: %w", err)
	}
	err = c.reader.Trust.Verify(protocol.KindDelta, st.Header, st.Data)
	var d *protocol.Delta
	if err == nil {
		d, err = c.names.DeltaFromStored(st)
	}
	if err != nil {
		err = fmt.Errorf("%w: newest stored delta (%s): %w", ErrRejected, st.Subject, err)
		c.rejectStored(ctx, err)
		return nil, fmt.Errorf("%w: %w", errNeedSnapshot, err)
	}
	return d, nil
}

// fetch reads the stored delta of revision rev.
func (c *Client) fetch(ctx context.Context, rev int64) (*protocol.Delta, error) {
	rctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
	defer cancel()
	start := time.Now()
	d, err := c.reader.Delta(rctx, rev)
	switch {
	case err == nil:
		c.loop.cost.get.observe(float64(time.Since(start)))
		return d, nil
	case errors.Is(err, protocol.ErrNotFound), errors.Is(err, protocol.ErrNoStream):
		return nil, fmt.Errorf("%w: revision %d", errMissing, rev)
	case errors.Is(err, protocol.ErrInvalid):
		err = fmt.Errorf("%w: %w", ErrRejected, err)
		c.rejectStored(ctx, err)
		return nil, fmt.Errorf("%w: %w", errNeedSnapshot, err)
	default:
		return nil, fmt.Errorf("read stored delta %d: %w", rev, err)
	}
}

// fromSnapshot reads the stored snapshot and installs it when it may replace
// the served one: always over nothing or the fallback, else when it is newer or
// holds other content at the same revision (the syncer's content wins). It
// reports whether it installed one.
func (c *Client) fromSnapshot(ctx context.Context, g *goal) (bool, error) {
	if err := c.establishTrust(ctx); err != nil {
		return false, err
	}
	cur := c.snap.Load()
	mctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
	m, err := c.reader.Manifest(mctx)
	cancel()
	if err != nil {
		if errors.Is(err, protocol.ErrInvalid) {
			err = fmt.Errorf("%w: snapshot manifest: %w", ErrRejected, err)
			c.rejectStored(ctx, err)
		}
		return false, fmt.Errorf("read the snapshot manifest: %w", err)
	}
	if !c.replaces(cur, m.Revision, m.Content()) {
		return false, nil
	}
	if maxSize := int64(len(m.Sequences)) * c.nc.MaxPayload(); int64(m.Size) > maxSize {
		// Checked before reading: the reader would allocate m.Size bytes up front.
		err := fmt.Errorf("%w: %w: snapshot manifest %d: size %d does not fit in %d chunks of at most %d bytes",
			ErrRejected, protocol.ErrInvalid, m.Revision, m.Size, len(m.Sequences), c.nc.MaxPayload())
		c.rejectStored(ctx, err)
		return false, err
	}
	key := fmt.Sprint(m.Revision, m.Checksum, m.ChecksumV2, m.SHA256, m.Sequences)
	if key == c.loop.badSnapshot {
		return false, fmt.Errorf("the stored snapshot %d was rejected; waiting for a new one", m.Revision)
	}
	for try := 0; ; try++ {
		sctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout*time.Duration(len(m.Sequences)+1))
		start := time.Now()
		snap, sm, err := c.reader.Snapshot(sctx)
		cancel()
		if errors.Is(err, protocol.ErrSnapshotMoved) && try < snapshotMovedRetries {
			continue
		}
		if err == nil && (sm.Count != snap.Len() || sm.Source != snap.Source()) {
			err = fmt.Errorf("%w: snapshot %d: the document has %d extensions from %q, its manifest says %d from %q",
				protocol.ErrInvalid, snap.Revision(), snap.Len(), snap.Source(), sm.Count, sm.Source)
		}
		if err != nil {
			if errors.Is(err, protocol.ErrInvalid) {
				c.loop.badSnapshot = key
				err = fmt.Errorf("%w: %w", ErrRejected, err)
				c.rejectStored(ctx, err)
			}
			return false, fmt.Errorf("read the snapshot: %w", err)
		}
		if !c.replaces(cur, snap.Revision(), protocol.Content{ChecksumV2: snap.ChecksumV2()}) { // both computed from content
			return false, nil
		}
		changed := cur.Diff(snap)
		if sm.Size > 0 {
			c.loop.cost.snapshotByte.observe(float64(time.Since(start)) / float64(sm.Size))
		}
		c.install(cur, snap, changed)
		c.log.InfoContext(ctx, "client: snapshot installed", slog.Int64("revision", snap.Revision()),
			slog.String("checksum_v2", snap.ChecksumV2()), slog.Int("extensions", snap.Len()),
			slog.String("source", snap.Source()), slog.String("reason", g.reason))
		return true, nil
	}
}

// establishTrust, with no configured trusted keys, reads the public key record
// the syncer stores with its streams and trusts that key from then on (trust on
// first use). With trust established it does nothing.
func (c *Client) establishTrust(ctx context.Context) error {
	if c.reader.Trust != nil {
		return nil
	}
	kctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
	t, err := c.reader.Key(kctx)
	cancel()
	if err != nil {
		if errors.Is(err, protocol.ErrInvalid) {
			err = fmt.Errorf("%w: %w", ErrRejected, err)
			c.rejectStored(ctx, err)
		}
		if errors.Is(err, protocol.ErrNotFound) {
			err = fmt.Errorf("no public key record on %s (is the syncer signing?)", c.names.KeySubject())
		}
		return fmt.Errorf("read the signing key: %w", err)
	}
	c.reader.Trust = t
	c.trust.Store(t)
	c.log.InfoContext(ctx, "client: trusting the registry's signing key (first use)", slog.Any("keys", t.Keys()))
	return nil
}

// replaces reports whether a stored snapshot of revision rev and content sum may
// replace cur.
func (c *Client) replaces(cur *cache.Snapshot, rev int64, sum protocol.Content) bool {
	return cur == nil || c.isFallback(cur) || rev > cur.Revision() || (rev == cur.Revision() && !sum.Matches(cur))
}

// applyDelta applies d to the served snapshot, verifies the result against the
// delta's checksum and count, and installs it. The error wraps ErrRejected.
func (c *Client) applyDelta(d *protocol.Delta, from string) error {
	cur := c.snap.Load()
	start := time.Now()
	next, changed, err := cur.Apply(d.Revision, d.Source, d.Changes)
	if err != nil {
		return fmt.Errorf("%w: %s delta %d: %w", ErrRejected, from, d.Revision, err)
	}
	// The newest checksum the delta carries: v2 costs O(changes), v1 O(registry).
	if want := d.Content(); !want.Matches(next) || next.Len() != d.Count {
		got := protocol.Content{Checksum: next.KnownChecksum()}
		if want.ChecksumV2 != "" {
			got = protocol.Content{ChecksumV2: next.ChecksumV2()}
		}
		return fmt.Errorf("%w: %s delta %d: applied to revision %d it gives %s and %d extensions; the delta says %s and %d",
			ErrRejected, from, d.Revision, cur.Revision(), got, next.Len(), want, d.Count)
	}
	c.loop.cost.apply.observe(float64(time.Since(start)))
	c.install(cur, next, changed)
	c.applied.Add(1)
	if !d.CommittedAt.IsZero() {
		c.metrics.lag.Observe(max(0, time.Since(d.CommittedAt).Seconds()))
	}
	return nil
}

// install serves next and reports the change.
func (c *Client) install(old, next *cache.Snapshot, changed []string) {
	c.snap.Store(next)
	c.report.soon()
	if c.cfg.OnChange != nil {
		c.cfg.OnChange(old, next, changed)
	}
}

// useFallback installs the Fallback snapshot once the first bootstrap has
// failed for FallbackAfter.
func (c *Client) useFallback(ctx context.Context) {
	if c.cfg.Fallback == nil || time.Since(time.Unix(0, c.startedAt.Load())) < c.cfg.FallbackAfter {
		return
	}
	snap, err := c.cfg.Fallback()
	if err == nil && snap == nil {
		err = errors.New("returned no snapshot")
	}
	if err == nil && snap.Source() != protocol.SourceFixtures {
		// Same content and revision, labelled as fixtures.
		snap, _, err = snap.Apply(snap.Revision(), protocol.SourceFixtures, nil)
	}
	if err != nil {
		err = fmt.Errorf("client: fallback: %w", err)
		c.log.ErrorContext(ctx, "client: fallback failed", slog.Any("error", err))
		if c.cfg.OnError != nil {
			c.cfg.OnError(err)
		}
		return
	}
	c.fallback.Store(snap)
	c.install(nil, snap, (*cache.Snapshot)(nil).Diff(snap))
	c.log.WarnContext(ctx, "client: no registry snapshot yet; serving the fallback",
		slog.Int64("revision", snap.Revision()), slog.Int("extensions", snap.Len()), slog.Duration("after", c.cfg.FallbackAfter))
}

// reject counts and reports a refused payload.
// Rejections are logged at most once per rejectLogEvery (a flood of forged
// messages must not flood the logs); the others are counted in the next line.
func (c *Client) reject(ctx context.Context, err error) {
	c.rejections.Add(1)
	c.report.rejected(time.Now(), err)
	if now := time.Now(); now.Sub(c.loop.rejectLogged) >= rejectLogEvery {
		c.log.WarnContext(ctx, "client: payload rejected; keeping the last good snapshot", slog.Any("error", err),
			slog.Int64("revision", c.Revision()), slog.Int("not_logged_before", c.loop.rejectQuiet))
		c.loop.rejectLogged, c.loop.rejectQuiet = now, 0
	} else {
		c.loop.rejectQuiet++
	}
	if c.cfg.OnError != nil {
		c.cfg.OnError(err)
	}
}

// rejectStored rejects a stored payload, once: retries read it again.
func (c *Client) rejectStored(ctx context.Context, err error) {
	if msg := err.Error(); msg != c.loop.badStored {
		c.loop.badStored = msg
		c.reject(ctx, err)
	}
}

func (c *Client) heard() { c.lastHeard.Store(time.Now().UnixNano()) }

// schedule arms the retry timer.
func (c *Client) schedule(d time.Duration) {
	c.loop.timer.Reset(d)
	c.loop.armed = true
	c.loop.due = time.Now().Add(d)
}

// hurry brings the next retry forward (news that the registry is there while
// the fallback is served), keeping attempts at least backoffMin apart.
func (c *Client) hurry() {
	if !c.loop.armed {
		return
	}
	next := c.loop.lastAttempt.Add(backoffMin)
	if next.Before(c.loop.due) {
		c.loop.attempt = 0
		c.schedule(max(0, time.Until(next)))
	}
}

// backoff is the delay before retry attempt+1: backoffMin doubling up to
// backoffMax, with ±20% jitter.
func backoff(attempt int) time.Duration {
	d := backoffMax
	if attempt < 8 {
		d = min(backoffMax, backoffMin<<max(0, attempt-1))
	}
	return d*4/5 + rand.N(d*2/5+1)
}
