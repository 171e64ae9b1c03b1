package syncer

import (
	"context"
	"errors"
	"fmt"
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
				revs, dbRev, err = readRevisions(ctx, pool, s.cursor, upTo, s.cfg.Batch)
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
		for i, r := range revs {
			if !deadline.IsZero() && time.Now().After(deadline) {
				s.pending, s.pendingAfter = revs[i:], s.cursor
				return true, nil
			}
			if err := s.publishRevision(ctx, r); err != nil {
				return false, err
			}
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

func (s *term) publishRevision(ctx context.Context, r revision) error {
	held := len(s.withheld)
	changes, next, err := s.prepare(r.Revision, r.Changes)
	if err != nil {
		// Not one aggregate's fault (prepare withholds those): never publish it.
		s.metrics.ApplyErrors.Inc()
		return fmt.Errorf("revision %d cannot be applied to the published state, not publishing it: %w", r.Revision, err)
	}
	if len(s.withheld) > held {
		s.metrics.ApplyErrors.Inc()
	}
	d := &protocol.Delta{Revision: r.Revision, PrevRevision: s.snap.Revision(), Checksum: next.Checksum(), ChecksumV2: next.ChecksumV2(),
		Count: next.Len(), Source: SourceDatabase, CommittedAt: r.CommittedAt, RegistryID: s.registryID, Changes: changes}
	if err := s.publishDelta(ctx, d, next); err != nil {
		return err
	}
	s.cursor = r.Revision
	s.metrics.Lag.Observe(time.Since(r.CommittedAt).Seconds())
	return nil
}

// publishDelta stores d (retrying until NATS takes it or ctx ends) and makes next the
// published state. A delta too large for one message becomes a snapshot write followed
// by a resync delta.
func (s *term) publishDelta(ctx context.Context, d *protocol.Delta, next *cache.Snapshot) error {
	if estimateDelta(d) > s.pub.MaxDelta() {
		// Certainly too large for one message (a bulk import): do not encode it only to
		// find that out; go straight to the snapshot and a resync delta.
		if err := s.writeSnapshot(ctx, next); err != nil {
			return err
		}
		d = resyncOf(d)
	}
	data, err := publisher.EncodeDelta(d)
	if err != nil {
		return err
	}
	var seq uint64 // where this call stored d (0: it was stored already)
	for attempt := 1; ; attempt++ {
		var stored uint64
		stored, err = s.pub.StoreDelta(ctx, d, data)
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
			break
		}
		if ctx.Err() != nil {
			return ctx.Err() // stopping (or the leadership was lost): not a publish error
		}
		if errors.Is(err, leadership.ErrLost) {
			return err // fenced: the lease may be someone else's now
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
			return ctx.Err()
		}
	}
	if seq > 0 && seq <= s.lastSeq {
		// The stream's sequence went back: it lost deltas it had acknowledged (a NATS crash
		// before its disk sync) and reuses their sequence numbers. Republish what it lost
		// now: with this delta stored on top, checkStream would no longer see the hole.
		lost := s.history.storedFrom(seq)
		s.log.WarnContext(ctx, "syncer: the delta stream went back, it lost acknowledged deltas; republishing them",
			"sequence", seq, "expected_above", s.lastSeq, "candidates", len(lost))
		s.republish(ctx, lost)
	}
	s.lastSeq = max(s.lastSeq, seq)
	s.history.add(&published{delta: d, data: data, seq: seq})
	s.metrics.Revisions.Inc()
	o := origin{RegistryID: d.RegistryID, Revision: d.Revision}
	if d.Source == SourceDatabase {
		o.CommittedAt = d.CommittedAt
	}
	s.setPublished(next, s.cursor, o)
	s.fleetView.Published(d.Revision, d.CommittedAt)
	return nil
}

// resyncOf is d without its changes, telling routers to read the snapshot instead.
func resyncOf(d *protocol.Delta) *protocol.Delta {
	r := *d
	r.Resync, r.Changes = true, []cache.Change{}
	return &r
}

// estimateDelta is a lower bound of d's encoded size.
func estimateDelta(d *protocol.Delta) int {
	n := 256
	for i := range d.Changes {
		c := &d.Changes[i]
		n += 40 + len(c.ID) + len(c.Key) + len(c.Value)
	}
	return n
}
