package syncer

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/beamline/registry-syncer/cache"
	"github.com/beamline/registry-syncer/protocol"
	"github.com/jackc/pgx/v5/pgxpool"
)

// loadPublished rebuilds the state routers have: the stored snapshot plus the stored
// deltas after it. It returns nil when nothing was ever published. continuous is false when
// the stored deltas after the snapshot do not chain back to it (or there is no snapshot):
// then the content returned is the snapshot's (or empty) labelled with the last stored
// revision, and it must only serve as the base of a NEW revision above that one — never be
// announced as that revision, since routers may hold different content under it.
//
// o is the identity of the returned revision as published (the last delta's, or the
// manifest's when no delta is newer than the snapshot).
func (s *term) loadPublished(ctx context.Context) (state *cache.Snapshot, o origin, continuous bool, err error) {
	r := s.pub.Reader()
	var (
		snap *cache.Snapshot
		man  *protocol.Manifest
	)
	for attempt := 1; ; attempt++ {
		var err error
		snap, man, err = r.Snapshot(ctx)
		if err == nil {
			break
		}
		if errors.Is(err, protocol.ErrNotFound) || errors.Is(err, protocol.ErrNoStream) {
			snap = nil
			break
		}
		if !errors.Is(err, protocol.ErrSnapshotMoved) && attempt > 5 {
			return nil, o, false, fmt.Errorf("read published snapshot: %w", err)
		}
		if !sleep(ctx, backoff(attempt)) {
			return nil, o, false, ctx.Err()
		}
	}
	last, err := s.lastDelta(ctx)
	if err != nil {
		return nil, o, false, err
	}
	if last != nil {
		o = origin{RegistryID: last.RegistryID, Revision: last.Revision, CommittedAt: last.CommittedAt}
		if last.Source != SourceDatabase {
			o.CommittedAt = time.Time{}
		}
	}
	if snap == nil {
		if last != nil {
			s.log.WarnContext(ctx, "syncer: the stream holds deltas but no snapshot", "last_revision", last.Revision)
			empty, err := cache.New(last.Revision, last.Source, nil)
			return empty, o, false, err
		}
		return nil, o, false, nil
	}
	if last == nil || last.Revision <= snap.Revision() {
		o = origin{RegistryID: man.RegistryID, Revision: snap.Revision()}
		if man.CommittedAt != nil {
			o.CommittedAt = *man.CommittedAt
		}
		return snap, o, true, nil
	}
	broken := func(why string, args ...any) (*cache.Snapshot, origin, bool, error) {
		s.log.WarnContext(ctx, "syncer: stored deltas do not continue the stored snapshot; the next revision will be a full sync",
			append([]any{"why", why, "snapshot", snap.Revision(), "last", last.Revision}, args...)...)
		out, _, err := snap.Apply(last.Revision, last.Source, nil)
		return out, o, false, err
	}
	// Walk back from the last delta to the snapshot through prev links.
	chain := []*protocol.Delta{last}
	for d := last; d.PrevRevision > snap.Revision(); {
		prev, err := r.Delta(ctx, d.PrevRevision)
		if err != nil {
			return broken("missing delta", "missing", d.PrevRevision, "error", err)
		}
		chain = append(chain, prev)
		d = prev
	}
	if chain[len(chain)-1].PrevRevision != snap.Revision() {
		return broken("chain does not reach the snapshot")
	}
	for i := len(chain) - 1; i >= 0; i-- {
		d := chain[i]
		if d.Resync {
			return broken("a resync delta is newer than the stored snapshot", "revision", d.Revision)
		}
		next, _, err := snap.Apply(d.Revision, d.Source, d.Changes)
		if err != nil || !d.Content().Matches(next) {
			return broken("a stored delta does not apply", "revision", d.Revision, "error", err)
		}
		snap = next
	}
	return snap, o, true, nil
}

func (s *term) lastDelta(ctx context.Context) (*protocol.Delta, error) {
	d, err := s.pub.LastDelta(ctx)
	if err != nil {
		return nil, fmt.Errorf("read last stored delta: %w", err)
	}
	return d, nil
}

// restore sets the state to continue from: what routers have, and where in the change log
// it corresponds to. When the published state is not the database's timeline (fixtures
// were published, the stream's chain is broken, or the database went back in time or was
// replaced), it writes a sync revision above every revision ever published that turns the
// published state into the database's content; catch-up publishes it.
func (s *term) restore(ctx context.Context, pool *pgxpool.Pool) error {
	published, pubOrigin, continuous, err := s.loadPublished(ctx)
	if err != nil {
		return err
	}
	if published == nil {
		read, err := readConsistent(ctx, pool)
		if err != nil {
			return err
		}
		snap := read.Snapshot
		db, err := readOrigin(ctx, pool, snap.Revision())
		if err != nil {
			return err
		}
		s.caughtUpTo(db.Counter)
		s.setPublished(snap, snap.Revision(), db.at(snap.Revision()))
		s.adoptInvalid(read)
		if err := s.writeSnapshot(ctx, snap); err != nil {
			return err
		}
		s.log.InfoContext(ctx, "syncer: first snapshot published", "revision", snap.Revision(), "extensions", snap.Len())
		return nil
	}
	s.noteHighWater(published.Revision())
	db, err := readOrigin(ctx, pool, pubOrigin.Revision)
	if err != nil {
		return err
	}
	s.registryID = db.RegistryID
	s.metrics.DatabaseRevision.Set(float64(db.Counter))
	s.update(func(st *Status) { st.DatabaseRevision = db.Counter })
	why := ""
	switch {
	case published.Source() != SourceDatabase:
		why = "the published state came from fixtures"
	case !continuous:
		why = "the stored deltas do not continue the stored snapshot"
	default:
		why = pubOrigin.leftTimeline(db)
		if why == "" {
			s.setPublished(published, published.Revision(), pubOrigin)
			s.log.InfoContext(ctx, "syncer: continuing from the published revision", "revision", published.Revision(), "database_revision", db.Counter)
			return nil
		}
		s.metrics.TimelineChanges.Inc()
		why = "new timeline: " + why
	}
	floor := s.highWater.Load()
	s.log.WarnContext(ctx, "syncer: published state does not continue the database's change log; publishing the database's content under a new revision",
		"why", why, "published_revision", published.Revision(), "published_source", published.Source(),
		"database_revision", db.Counter, "new_revision_above", floor)
	rev, err := s.syncToDB(ctx, pool, published, floor, true)
	if err != nil {
		return err
	}
	// The base of the sync revision, never announced nor written as a snapshot: when the
	// chain was broken it is an older revision's content under the newest label.
	s.snap, s.cursor, s.origin = published, rev-1, pubOrigin
	return nil
}

// noteHighWater raises the highest revision known to be published.
func (s *Syncer) noteHighWater(rev int64) {
	for {
		hw := s.highWater.Load()
		if rev <= hw || s.highWater.CompareAndSwap(hw, rev) {
			return
		}
	}
}
