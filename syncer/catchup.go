package syncer

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/beamline/registry-syncer/cache"
	"github.com/beamline/registry-syncer/changelog"
	"github.com/beamline/registry-syncer/leadership"
	"github.com/beamline/registry-syncer/protocol"
	"github.com/beamline/registry-syncer/publisher"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"
)

// catchUp publishes every committed revision after the cursor, up to upTo when positive,
// else up to the last revision committed when it starts. It does not chase commits made
// meanwhile: under a sustained stream of commits it would never return, and the lead loop
// would starve its heartbeats, stream checks, reconciles and forced syncs (the
// notifications of those commits wake the loop again, so nothing is left behind).
func (s *term) catchUp(ctx context.Context, pool *pgxpool.Pool, upTo int64) error {
	_, err := s.catchUpUntil(ctx, pool, upTo, time.Time{})
	return err
}

// catchUpFor is catchUp for at most about budget; more reports that revisions remain.
// The lead loop uses it so that a long backlog (after a NATS outage, a burst the
// publisher trails) does not hold back heartbeats and the rest for its whole length.
func (s *term) catchUpFor(ctx context.Context, pool *pgxpool.Pool, budget time.Duration) (more bool, err error) {
	return s.catchUpUntil(ctx, pool, 0, time.Now().Add(budget))
}

func (s *term) catchUpUntil(ctx context.Context, pool *pgxpool.Pool, upTo int64, deadline time.Time) (more bool, err error) {
	// upTo <= 0: everything committed when this round started. The bound comes from the
	// counter read in the same statement as the first batch (one round trip per wake-up).
	bounded := upTo > 0
	for {
		var (
			revs  []revision
			dbRev int64 = -1
		)
		if !bounded || s.cursor < upTo {
			if s.pendingAfter == s.cursor && len(s.pending) > 0 {
				// The rest of the batch read by the previous round (the change log below
				// the counter never changes).
				revs, s.pending = s.pending, nil
				for bounded && len(revs) > 0 && revs[len(revs)-1].Revision > upTo {
					revs = revs[:len(revs)-1]
				}
			} else {
				revs, dbRev, err = readRevisions(ctx, pool, s.cursor, upTo, s.cfg.Batch, s.cfg.BatchBytes)
				s.metrics.DatabaseUp.Set(boolGauge(err == nil))
				if err != nil {
					return false, err
				}
				if !bounded {
					upTo, bounded = dbRev, true
				}
			}
		}
		if len(revs) == 0 {
			if dbRev < 0 {
				if dbRev, err = changelog.Counter(ctx, pool); err != nil {
					return false, err
				}
			}
			if dbRev < s.cursor {
				// Never "caught up" with a database behind what was published.
				return false, fmt.Errorf("%w: the database's last revision %d is below the published revision %d", errNewTimeline, dbRev, s.cursor)
			}
			s.caughtUpTo(dbRev)
			return false, nil
		}
		s.update(func(st *Status) {
			st.CaughtUp = false
			if dbRev >= 0 {
				st.DatabaseRevision = dbRev // what is to publish, while publishing may be stuck
			}
		})
		s.metrics.noteChangeRows(revs)
		for i := range revs {
			if !deadline.IsZero() && time.Now().After(deadline) {
				if err := s.drain(ctx); err != nil {
					return false, err
				}
				s.pending, s.pendingAfter = revs[i:], s.cursor
				return true, nil
			}
			if err := s.publishRevision(ctx, pool, &revs[i]); err != nil {
				return false, err
			}
		}
		// Every round ends with everything it sent acknowledged and announced: what runs
		// between rounds (heartbeats, stream checks, reconciles) sees the published state.
		if err := s.drain(ctx); err != nil {
			return false, err
		}
		if dbRev >= 0 && len(revs) < s.cfg.Batch && s.cursor >= dbRev {
			// Everything committed as of that read is published; a later commit notifies.
			s.caughtUpTo(dbRev)
			return false, nil
		}
	}
}

func (s *term) caughtUpTo(dbRev int64) {
	if s.cursor >= dbRev {
		s.caughtUpOnce = true
	}
	s.metrics.DatabaseRevision.Set(float64(dbRev))
	s.update(func(st *Status) {
		st.DatabaseRevision, st.CaughtUp = dbRev, s.cursor >= dbRev
		if st.CaughtUp {
			st.Error = ""
		}
	})
}

// publishRevision publishes r, page by page when it came with its first page only (a
// huge revision): each page is read from q, applied and dropped. Its changes are kept for
// the delta only while they may fit in one message; once they certainly do not, the
// revision is published as a snapshot and a resync delta, without ever holding or encoding
// the whole delta.
func (s *term) publishRevision(ctx context.Context, q querier, r *revision) error {
	held := len(s.withheld)
	p := s.preparing(r.Revision)
	var (
		changes []cache.Change
		size    = deltaOverhead
		resync  bool
		failed  error // not the page read's: the revision cannot be applied
	)
	err := r.forPages(ctx, q, s.cfg.BatchBytes, s.metrics.noteChangePage, func(page []cache.Change) error {
		out, err := p.page(page)
		if err != nil {
			failed = err
			return err
		}
		if resync {
			return nil
		}
		for i := range out {
			size += changeEstimate(&out[i])
		}
		switch {
		case size > s.pub.MaxDelta():
			resync, changes = true, nil // certainly too large for one message
		case changes == nil:
			changes = out
		default:
			changes = append(slices.Clip(changes), out...)
		}
		return nil
	})
	var rel []cache.Change
	var next *cache.Snapshot
	if err == nil {
		rel, next, err = p.finish()
		failed = err
	}
	if failed != nil {
		// Not one aggregate's fault (prepare withholds those): never publish it.
		s.metrics.ApplyErrors.Inc()
		s.abortPipeline()
		return fmt.Errorf("revision %d cannot be applied to the published state, not publishing it: %w", r.Revision, failed)
	}
	if err != nil {
		s.abortPipeline()
		return err
	}
	if len(s.withheld) > held {
		s.metrics.ApplyErrors.Inc()
	}
	if !resync && len(rel) > 0 {
		changes = append(slices.Clip(changes), rel...)
	}
	if changes == nil {
		changes = []cache.Change{}
	}
	d := &protocol.Delta{Revision: r.Revision, PrevRevision: s.snap.Revision(), Checksum: next.Checksum(), ChecksumV2: next.ChecksumV2(),
		Count: next.Len(), Source: SourceDatabase, CommittedAt: r.CommittedAt, RegistryID: s.registryID, Changes: changes, Resync: resync}
	if resync {
		// After what is in flight: the snapshot of next, then the resync delta.
		return s.publishNow(ctx, d, next, r.Revision)
	}
	return s.submit(ctx, d, next, r.Revision)
}

// Pipelined publishing. A catch-up round sends the store of each delta as soon as it is
// prepared (publisher.BeginDelta), with up to PublishWindow deltas (and PublishWindowBytes
// of payload) in flight, and completes them oldest first: wait for the stream's
// acknowledgement, announce on the live subject, record as published. So deltas are
// stored and announced in revision order, each announced only once stored (PROTOCOL.md
// §7), while the round trip to JetStream is no longer paid once per revision.
//
// While stores are in flight, s.snap and s.cursor are the head (what the next revision
// is prepared on top of); the published state (s.latest, the status, the snapshot
// writer's input, the history) only advances as acknowledgements come in. Every round
// drains the pipeline before it returns, so between rounds s.snap is the published state.

// inflight is a delta whose store was sent and is not yet acknowledged.
type inflight struct {
	w    *publisher.DeltaWrite // nil: sending failed; the retry loop stores it in its turn
	d    *protocol.Delta
	data []byte
	// next is the content after d, kept for the snapshot writer on the newest delta in
	// flight and on one in every keepEvery (nil on the others): each is a copy of the
	// registry, too much to keep one per delta in flight.
	next   *cache.Snapshot
	cursor int64
}

// keepEvery is how often a delta in flight keeps its content (inflight.next): at most
// PublishWindow/keepEvery + 1 registry states are held, and the snapshot writer gets a
// published state at least every keepEvery revisions.
const keepEvery = 32

// submit publishes d, whose content after applying is next, as the change-log revision
// cursor: sent now, completed in order by a later submit or drain.
func (s *term) submit(ctx context.Context, d *protocol.Delta, next *cache.Snapshot, cursor int64) error {
	if s.cfg.PublishWindow <= 1 || estimateDelta(d) > s.pub.MaxDelta() {
		// One at a time (configured so), or certainly too large for one message: that one
		// becomes a snapshot write and a resync delta, after what is in flight.
		return s.publishNow(ctx, d, next, cursor)
	}
	data, err := publisher.EncodeDelta(d)
	if err != nil {
		s.abortPipeline()
		return err
	}
	if len(data) > s.pub.MaxDelta() {
		return s.publishNow(ctx, d, next, cursor)
	}
	f := &inflight{d: d, data: data, next: next, cursor: cursor}
	if f.w, err = s.pub.BeginDelta(d, data); err != nil {
		if errors.Is(err, leadership.ErrLost) {
			s.abortPipeline()
			return err
		}
		f.w = nil
	}
	if len(s.inflight) == 0 {
		s.ackedSnap, s.ackedCursor = s.snap, s.cursor
	} else if prev := s.inflight[len(s.inflight)-1]; prev.cursor%keepEvery != 0 {
		prev.next = nil // no longer the newest
	}
	s.inflight = append(s.inflight, f)
	s.inflightBytes += len(data)
	s.metrics.InFlight.Set(float64(len(s.inflight)))
	s.snap, s.cursor = next, cursor
	for len(s.inflight) > 0 && (len(s.inflight) >= s.cfg.PublishWindow || s.inflightBytes > s.cfg.PublishWindowBytes || s.inflight[0].acked()) {
		if err := s.completeOldest(ctx); err != nil {
			return err
		}
	}
	return nil
}

func (f *inflight) acked() bool { return f.w != nil && f.w.Acked() }

// publishNow publishes d after everything in flight, synchronously.
func (s *term) publishNow(ctx context.Context, d *protocol.Delta, next *cache.Snapshot, cursor int64) error {
	if err := s.drain(ctx); err != nil {
		return err
	}
	if err := s.publishDelta(ctx, d, next); err != nil {
		return err
	}
	s.cursor = cursor
	s.metrics.Lag.Observe(time.Since(d.CommittedAt).Seconds())
	return nil
}

// drain completes every delta in flight, oldest first.
func (s *term) drain(ctx context.Context) error {
	for len(s.inflight) > 0 {
		if err := s.completeOldest(ctx); err != nil {
			return err
		}
	}
	return nil
}

// completeOldest waits for the oldest delta in flight to be stored (storing it again, with
// the retry loop, when its asynchronous store failed), announces it and records it as
// published.
func (s *term) completeOldest(ctx context.Context) error {
	f := s.inflight[0]
	s.inflight[0] = nil
	s.inflight = s.inflight[1:]
	s.inflightBytes -= len(f.data)
	s.metrics.InFlight.Set(float64(len(s.inflight)))
	d, data := f.d, f.data
	var (
		seq uint64
		err = errors.New("not sent")
	)
	if f.w != nil {
		seq, err = f.w.Finish(ctx)
	}
	// Stores sent after this one may be stored already: a store of it now lands after
	// them, so its sequence says nothing about the stream going back.
	ordered := true
	if err != nil {
		if ctx.Err() != nil || errors.Is(err, leadership.ErrLost) {
			s.abortPipeline()
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		}
		if f.w != nil {
			s.metrics.PublishErrors.Inc()
			s.log.WarnContext(ctx, "syncer: pipelined publish failed, storing the delta again", "revision", d.Revision, "error", err, "in_flight", len(s.inflight))
		}
		ordered = len(s.inflight) == 0
		if d, data, seq, err = s.storeDelta(ctx, d, data, f.next); err != nil {
			// (With f.next nil, a delta that became too large for the server since it was
			// sent — a smaller max_payload after a reconnect — ends here too: the next term
			// publishes it from the change log.)
			s.abortPipeline()
			return err
		}
	} else {
		s.publishOK()
	}
	s.recordPublished(ctx, d, data, seq, ordered, f.next)
	if f.next != nil {
		s.ackedSnap, s.ackedCursor = f.next, f.cursor
	}
	s.metrics.Lag.Observe(time.Since(d.CommittedAt).Seconds())
	return nil
}

// abortPipeline drops the deltas in flight (their stores may still land: stored, never
// announced, the content of their revisions all the same) and goes back to the newest
// published state whose content is kept. The term ends after it.
func (s *term) abortPipeline() {
	if len(s.inflight) == 0 {
		return
	}
	clear(s.inflight)
	s.inflight, s.inflightBytes = s.inflight[:0], 0
	s.metrics.InFlight.Set(0)
	s.snap, s.cursor = s.ackedSnap, s.ackedCursor
}

// publishDelta stores d (retrying until NATS takes it or ctx ends) and makes next the
// published state. A delta too large for one message becomes a snapshot write followed
// by a resync delta. Nothing may be in flight (drain).
func (s *term) publishDelta(ctx context.Context, d *protocol.Delta, next *cache.Snapshot) error {
	if d.Resync || estimateDelta(d) > s.pub.MaxDelta() {
		// Certainly too large for one message (a bulk import; publishRevision marks one it
		// stopped keeping the changes of): do not encode it only to find that out; go
		// straight to the snapshot and a resync delta.
		if err := s.writeSnapshot(ctx, next); err != nil {
			return err
		}
		d = resyncOf(d)
	}
	data, err := publisher.EncodeDelta(d)
	if err != nil {
		return err
	}
	d, data, seq, err := s.storeDelta(ctx, d, data, next)
	if err != nil {
		return err
	}
	s.recordPublished(ctx, d, data, seq, true, next)
	s.snap = next
	return nil
}

// storeDelta stores d, retrying until NATS takes it or ctx ends; a delta too large for
// one message becomes a snapshot write of next and a resync delta (returned instead).
// seq is where this call stored it (0: it was stored already).
func (s *term) storeDelta(ctx context.Context, d *protocol.Delta, data []byte, next *cache.Snapshot) (*protocol.Delta, []byte, uint64, error) {
	var seq uint64
	for attempt := 1; ; attempt++ {
		stored, err := s.pub.StoreDelta(ctx, d, data)
		if errors.Is(err, publisher.ErrTooLarge) && next == nil {
			return nil, nil, 0, fmt.Errorf("delta %d no longer fits in one message, and its content is not kept to write it as a snapshot: %w", d.Revision, err)
		}
		if errors.Is(err, publisher.ErrTooLarge) {
			if err = s.writeSnapshot(ctx, next); err == nil {
				d = resyncOf(d)
				if data, err = publisher.EncodeDelta(d); err == nil {
					stored, err = s.pub.StoreDelta(ctx, d, data)
				}
			}
		}
		seq = max(seq, stored)
		if err == nil {
			s.publishOK()
			return d, data, seq, nil
		}
		if ctx.Err() != nil {
			return nil, nil, 0, ctx.Err() // stopping (or the leadership was lost): not a publish error
		}
		if errors.Is(err, leadership.ErrLost) {
			return nil, nil, 0, err // fenced: the lease may be someone else's now
		}
		s.metrics.PublishErrors.Inc()
		if errors.Is(err, jetstream.ErrNoStreamResponse) || isStreamMissing(err) {
			// The stream is gone (deleted, or lost with the server's store). Only
			// checkStream recreates it, and it runs on this goroutine: run it now, so that
			// the stream is recreated and what it lost is republished before this delta.
			s.checkStream(ctx)
		}
		wait := backoff(attempt)
		s.log.WarnContext(ctx, "syncer: publish failed, retrying", "revision", d.Revision, "error", err, "attempt", attempt, "sleep_duration", wait)
		if !sleep(ctx, wait) {
			return nil, nil, 0, ctx.Err()
		}
	}
}

// recordPublished records d, stored at seq (0: stored already) and announced, as
// published: next is the content after it. ordered says that no store sent after d's was stored before it.
func (s *term) recordPublished(ctx context.Context, d *protocol.Delta, data []byte, seq uint64, ordered bool, next *cache.Snapshot) {
	if ordered && seq > 0 && seq <= s.lastSeq {
		// The stream's sequence went back: it lost deltas it had acknowledged (a NATS crash
		// before its disk sync) and reuses their sequence numbers. Republish what it lost
		// now: with this delta stored on top, checkStream would no longer see the hole.
		lost := s.history.storedFrom(seq)
		s.log.WarnContext(ctx, "syncer: the delta stream went back, it lost acknowledged deltas; republishing them",
			"sequence", seq, "expected_above", s.lastSeq, "candidates", len(lost))
		s.republish(ctx, lost)
	}
	if ordered {
		s.lastSeq = max(s.lastSeq, seq)
	}
	s.history.add(&published{delta: d, data: data, seq: seq})
	s.metrics.HistoryDeltas.Set(float64(s.history.len()))
	s.metrics.HistoryBytes.Set(float64(s.history.bytes))
	s.metrics.Revisions.Inc()
	o := origin{RegistryID: d.RegistryID, Revision: d.Revision}
	if d.Source == SourceDatabase {
		o.CommittedAt = d.CommittedAt
	}
	s.announced(stateOf(d), next, o)
	s.fleetView.Published(d.Revision, d.CommittedAt)
}

// resyncOf is d without its changes, telling routers to read the snapshot instead.
func resyncOf(d *protocol.Delta) *protocol.Delta {
	r := *d
	r.Resync, r.Changes = true, []cache.Change{}
	return &r
}

// estimateDelta is a lower bound of d's encoded size.
func estimateDelta(d *protocol.Delta) int {
	n := deltaOverhead
	for i := range d.Changes {
		n += changeEstimate(&d.Changes[i])
	}
	return n
}

// deltaOverhead and changeEstimate make estimateDelta: lower bounds of a delta's encoded
// size without its changes, and of one change's.
const deltaOverhead = 256

func changeEstimate(c *cache.Change) int { return 40 + len(c.ID) + len(c.Key) + len(c.Value) }
