package syncer

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/beamline/registry-syncer/cache"
	"github.com/beamline/registry-syncer/listener"
	"github.com/beamline/registry-syncer/protocol"
	"github.com/beamline/registry-syncer/publisher"
)

// lead publishes while this process holds the leadership: LISTEN first, then restore the
// published state from NATS, catch up from the change log, and follow it.
func (s *Syncer) lead(ctx context.Context) error {
	pool, err := s.Pool()
	if err != nil {
		return err
	}
	s.update(func(st *Status) { st.Leader, st.Source = true, SourceDatabase })
	s.lastSeq = 0   // stream sequences seen in an earlier leadership say nothing about this one
	s.pending = nil // nor does a batch read then (the database may have been restored since)
	s.metrics.Leader.Set(1)
	if err := s.ensureStreams(ctx); err != nil {
		return err
	}
	lcfg := s.cfg.Listener
	lis, err := listener.New(lcfg, s.log, nil)
	if err != nil {
		return err
	}
	if err := lis.Start(ctx); err != nil {
		return err
	}
	defer lis.Stop()
	// The first wake-up comes once LISTEN is confirmed: only then is catching up safe
	// (a commit after this point wakes us again).
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-lis.C():
	}
	s.update(func(st *Status) { st.Listening = true })
	if err := s.restore(ctx, pool); err != nil {
		return err
	}
	if err := s.catchUp(ctx, pool, 0); err != nil {
		return err
	}

	reconcile := time.NewTicker(s.cfg.SyncInterval)
	defer reconcile.Stop()
	beat := time.NewTicker(s.cfg.HeartbeatInterval)
	defer beat.Stop()
	var seenReconnects, seenNotifications int64
	// Catching up goes in rounds of about a heartbeat interval; between rounds the loop
	// serves whatever else is due (more wakes it for the next round).
	more := make(chan struct{}, 1)
	follow := func() error {
		again, err := s.catchUpFor(ctx, pool, s.cfg.HeartbeatInterval)
		if again {
			select {
			case more <- struct{}{}:
			default:
			}
		}
		return err
	}
	onBeat := func() {
		s.update(func(st *Status) { st.Listening = lis.Listening() })
		s.heartbeat()
		s.checkStream(ctx)
	}
	for {
		// A due heartbeat goes first: between catch-up rounds, a random pick among the
		// ready cases could pass it over several times.
		select {
		case <-beat.C:
			onBeat()
		default:
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-more:
			if err := follow(); err != nil {
				return err
			}
		case <-lis.C():
			rc, n := lis.Stats()
			s.metrics.ListenerReconnect.Add(float64(rc - seenReconnects))
			s.metrics.Notifications.Add(float64(n - seenNotifications))
			seenReconnects, seenNotifications = rc, n
			s.update(func(st *Status) { st.Listening = lis.Listening() })
			if err := follow(); err != nil {
				return err
			}
		case <-reconcile.C:
			if err := s.reconcile(ctx, pool); err != nil {
				return err
			}
		case done := <-s.force:
			err := s.reconcile(ctx, pool)
			done <- err
			if err != nil {
				return err
			}
		case <-beat.C:
			onBeat()
		}
	}
}

func (s *Syncer) ensureStreams(ctx context.Context) error {
	for attempt := 1; ; attempt++ {
		err := s.pub.EnsureStreams(ctx)
		if err == nil {
			return nil
		}
		d := backoff(attempt)
		s.log.WarnContext(ctx, "syncer: cannot create the streams", "error", err, "attempt", attempt, "sleep_duration", d)
		if !sleep(ctx, d) {
			return ctx.Err()
		}
	}
}

// loadPublished rebuilds the state routers have: the stored snapshot plus the stored
// deltas after it. It returns nil when nothing was ever published. continuous is false when
// the stored deltas after the snapshot do not chain back to it (or there is no snapshot):
// then the content returned is the snapshot's (or empty) labelled with the last stored
// revision, and it must only serve as the base of a NEW revision above that one — never be
// announced as that revision, since routers may hold different content under it.
func (s *Syncer) loadPublished(ctx context.Context) (state *cache.Snapshot, continuous bool, err error) {
	r := s.pub.Reader()
	var snap *cache.Snapshot
	for attempt := 1; ; attempt++ {
		var err error
		snap, _, err = r.Snapshot(ctx)
		if err == nil {
			break
		}
		if errors.Is(err, protocol.ErrNotFound) || errors.Is(err, protocol.ErrNoStream) {
			snap = nil
			break
		}
		if !errors.Is(err, protocol.ErrSnapshotMoved) && attempt > 5 {
			return nil, false, fmt.Errorf("read published snapshot: %w", err)
		}
		if !sleep(ctx, backoff(attempt)) {
			return nil, false, ctx.Err()
		}
	}
	last, err := s.lastDelta(ctx)
	if err != nil {
		return nil, false, err
	}
	if snap == nil {
		if last != nil {
			s.log.WarnContext(ctx, "syncer: the stream holds deltas but no snapshot", "last_revision", last.Revision)
			empty, err := cache.New(last.Revision, last.Source, nil)
			return empty, false, err
		}
		return nil, false, nil
	}
	if last == nil || last.Revision <= snap.Revision() {
		return snap, true, nil
	}
	broken := func(why string, args ...any) (*cache.Snapshot, bool, error) {
		s.log.WarnContext(ctx, "syncer: stored deltas do not continue the stored snapshot; the next revision will be a full sync",
			append([]any{"why", why, "snapshot", snap.Revision(), "last", last.Revision}, args...)...)
		out, _, err := snap.Apply(last.Revision, last.Source, nil)
		return out, false, err
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
		if err != nil || next.Checksum() != d.Checksum {
			return broken("a stored delta does not apply", "revision", d.Revision, "error", err)
		}
		snap = next
	}
	return snap, true, nil
}

func (s *Syncer) lastDelta(ctx context.Context) (*protocol.Delta, error) {
	d, err := s.pub.LastDelta(ctx)
	if err != nil {
		return nil, fmt.Errorf("read last stored delta: %w", err)
	}
	return d, nil
}

// restore sets the state to continue from: what routers have, and where in the change log
// it corresponds to.
func (s *Syncer) restore(ctx context.Context, pool *pgxpool.Pool) error {
	if s.snap != nil {
		// Still current if nobody published after us (we led before in this process).
		last, err := s.lastDelta(ctx)
		if err != nil {
			return err
		}
		if last == nil || (last.Revision == s.snap.Revision() && last.Checksum == s.snap.Checksum()) {
			if s.snap.Source() == SourceDatabase {
				return nil
			}
		}
	}
	published, continuous, err := s.loadPublished(ctx)
	if err != nil {
		return err
	}
	dbRev, err := counter(ctx, pool)
	if err != nil {
		return err
	}
	s.metrics.DatabaseRevision.Set(float64(dbRev))
	s.update(func(st *Status) { st.DatabaseRevision = dbRev })
	switch {
	case published == nil:
		snap, err := readConsistent(ctx, pool)
		if err != nil {
			return err
		}
		s.setPublished(snap, snap.Revision())
		if err := s.writeSnapshot(ctx, snap); err != nil {
			return err
		}
		s.log.InfoContext(ctx, "syncer: first snapshot published", "revision", snap.Revision(), "extensions", snap.Len())
		return nil
	case continuous && published.Source() == SourceDatabase && published.Revision() <= dbRev:
		var exists bool
		err := pool.QueryRow(ctx, `SELECT $1 = 0 OR EXISTS (SELECT 1 FROM registry_revisions WHERE revision = $1)`, published.Revision()).Scan(&exists)
		if err != nil {
			return fmt.Errorf("look up revision %d: %w", published.Revision(), err)
		}
		if exists {
			s.setPublished(published, published.Revision())
			s.log.InfoContext(ctx, "syncer: continuing from the published revision", "revision", published.Revision(), "database_revision", dbRev)
			return nil
		}
	}
	// The published state came from fixtures, or the database is behind what was
	// published (restored from a backup): move the database to a revision above it.
	s.log.WarnContext(ctx, "syncer: published state does not continue the database's change log; syncing under a new revision",
		"published_revision", published.Revision(), "published_source", published.Source(), "database_revision", dbRev)
	rev, err := s.syncToDB(ctx, pool, published, published.Revision(), true)
	if err != nil {
		return err
	}
	s.setPublished(published, rev-1)
	return nil
}

func (s *Syncer) setPublished(snap *cache.Snapshot, cursor int64) {
	s.snap, s.cursor = snap, cursor
	s.latest.Store(snap)
	s.metrics.LastPublished.Set(float64(snap.Revision()))
	s.metrics.Extensions.Set(float64(snap.Len()))
	s.update(func(st *Status) {
		st.Revision, st.Checksum, st.Extensions, st.Source = snap.Revision(), snap.Checksum(), snap.Len(), snap.Source()
	})
	s.kickSnapshotWriter()
}

func (s *Syncer) kickSnapshotWriter() {
	select {
	case s.snapWake <- struct{}{}:
	default:
	}
}

// catchUp publishes every committed revision after the cursor, up to upTo when positive,
// else up to the last revision committed when it starts. It does not chase commits made
// meanwhile: under a sustained stream of commits it would never return, and the lead loop
// would starve its heartbeats, stream checks, reconciles and forced syncs (the
// notifications of those commits wake the loop again, so nothing is left behind).
func (s *Syncer) catchUp(ctx context.Context, pool *pgxpool.Pool, upTo int64) error {
	_, err := s.catchUpUntil(ctx, pool, upTo, time.Time{})
	return err
}

// catchUpFor is catchUp for at most about budget; more reports that revisions remain.
// The lead loop uses it so that a long backlog (after a NATS outage, a burst the
// publisher trails) does not hold back heartbeats and the rest for its whole length.
func (s *Syncer) catchUpFor(ctx context.Context, pool *pgxpool.Pool, budget time.Duration) (more bool, err error) {
	return s.catchUpUntil(ctx, pool, 0, time.Now().Add(budget))
}

func (s *Syncer) catchUpUntil(ctx context.Context, pool *pgxpool.Pool, upTo int64, deadline time.Time) (more bool, err error) {
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
				if dbRev, err = counter(ctx, pool); err != nil {
					return false, err
				}
			}
			s.caughtUpTo(dbRev)
			return false, nil
		}
		s.update(func(st *Status) { st.CaughtUp = false })
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

func (s *Syncer) caughtUpTo(dbRev int64) {
	s.metrics.DatabaseRevision.Set(float64(dbRev))
	s.update(func(st *Status) {
		st.DatabaseRevision, st.CaughtUp = dbRev, s.cursor >= dbRev
		if st.CaughtUp {
			st.Error = ""
		}
	})
}

func (s *Syncer) publishRevision(ctx context.Context, r revision) error {
	next, _, err := s.snap.Apply(r.Revision, SourceDatabase, r.Changes)
	if err != nil {
		// Never publish what a router could not apply; stop here and let an operator see it.
		s.metrics.ApplyErrors.Inc()
		return fmt.Errorf("revision %d cannot be applied to the published state, not publishing it: %w", r.Revision, err)
	}
	d := &protocol.Delta{Revision: r.Revision, PrevRevision: s.snap.Revision(), Checksum: next.Checksum(),
		Count: next.Len(), Source: SourceDatabase, CommittedAt: r.CommittedAt, Changes: r.Changes}
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
func (s *Syncer) publishDelta(ctx context.Context, d *protocol.Delta, next *cache.Snapshot) error {
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
			break
		}
		if ctx.Err() != nil {
			return ctx.Err() // stopping (or the leadership was lost): not a publish error
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
	s.setPublished(next, s.cursor)
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

// reconcile compares a consistent full read of the database with the published state and
// repairs any difference under a new revision.
func (s *Syncer) reconcile(ctx context.Context, pool *pgxpool.Pool) error {
	s.metrics.ReconcileRuns.Inc()
	// A repair is postponed when writers commit between the read and the revision lock;
	// try a few times before leaving it to the next reconcile.
	for attempt := 1; attempt <= 5; attempt++ {
		db, err := readConsistent(ctx, pool)
		if err != nil {
			return fmt.Errorf("reconcile: %w", err)
		}
		if err := s.catchUp(ctx, pool, db.Revision()); err != nil {
			return err
		}
		if s.cursor != db.Revision() {
			// Cannot happen while revisions only come from the change log; never wedge on it.
			s.log.WarnContext(ctx, "syncer: reconcile skipped: published state and database read are at different revisions",
				"cursor", s.cursor, "database_revision", db.Revision())
			return nil
		}
		if s.snap.Checksum() == db.Checksum() {
			return s.catchUp(ctx, pool, 0)
		}
		drift := s.snap.Diff(db)
		if err := s.catchUp(ctx, pool, 0); err != nil {
			return err
		}
		s.log.WarnContext(ctx, "syncer: reconcile found drift between the published state and the database; repairing",
			"revision", db.Revision(), "extensions", len(drift), "ids", head(drift, 20), "attempt", attempt)
		rev, err := s.syncToDB(ctx, pool, nil, 0, false)
		if err != nil {
			return err
		}
		if rev > 0 {
			s.metrics.DriftExtensions.Add(float64(len(drift)))
			s.metrics.ReconcileRepairs.Inc()
			return s.catchUp(ctx, pool, 0)
		}
	}
	s.log.WarnContext(ctx, "syncer: drift repair postponed to the next reconcile: writers kept committing")
	return nil
}

func head(ids []string, n int) []string {
	if len(ids) > n {
		return ids[:n]
	}
	return ids
}

// syncToDB writes a 'sync' revision that turns base (the published state; nil means the
// current one after catching up) into the database's content, under the revision lock so
// that nothing commits between the read and the new revision. The revision is above floor.
// Without always, nothing is written when there is no difference (returns 0).
func (s *Syncer) syncToDB(ctx context.Context, pool *pgxpool.Pool, base *cache.Snapshot, floor int64, always bool) (int64, error) {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("sync: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	var locked int64
	if err := tx.QueryRow(ctx, `SELECT revision FROM registry_counter FOR UPDATE`).Scan(&locked); err != nil {
		return 0, fmt.Errorf("sync: take the revision lock: %w", err)
	}
	if base == nil {
		// The repair is computed against the published state as it will be at the locked
		// revision: the revisions committed since the caller caught up are applied here in
		// memory only (publishing under the lock would hold every registry writer's COMMIT
		// hostage to NATS); catchUp publishes them after the commit.
		base = s.snap
		for after := s.cursor; after < locked; {
			revs, _, err := readRevisions(ctx, tx, after, locked, s.cfg.Batch)
			if err != nil {
				return 0, fmt.Errorf("sync: %w", err)
			}
			if len(revs) == 0 {
				break
			}
			for _, r := range revs {
				if base, _, err = base.Apply(r.Revision, SourceDatabase, r.Changes); err != nil {
					return 0, fmt.Errorf("sync: revision %d: %w", r.Revision, err)
				}
				after = r.Revision
			}
		}
	}
	db, err := readFull(ctx, tx, SourceDatabase)
	if err != nil {
		return 0, fmt.Errorf("sync: %w", err)
	}
	ids := base.Diff(db)
	if len(ids) == 0 && !always {
		return 0, nil
	}
	var xid string
	if _, err := tx.Exec(ctx, `SELECT registry_sync($1::text[], $2)`, ids, floor); err != nil {
		return 0, fmt.Errorf("sync: registry_sync: %w", err)
	}
	if err := tx.QueryRow(ctx, `SELECT pg_current_xact_id()::text`).Scan(&xid); err != nil {
		return 0, fmt.Errorf("sync: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("sync: commit: %w", err)
	}
	var rev int64
	if err := pool.QueryRow(ctx, `SELECT revision FROM registry_revisions WHERE xid = $1::xid8`, xid).Scan(&rev); err != nil {
		return 0, fmt.Errorf("sync: read the new revision: %w", err)
	}
	s.log.InfoContext(ctx, "syncer: wrote a sync revision", "revision", rev, "extensions", len(ids), "floor", floor)
	return rev, nil
}

func (s *Syncer) heartbeat() {
	snap := s.snap
	if snap == nil {
		return
	}
	err := s.pub.Heartbeat(&protocol.Heartbeat{Revision: snap.Revision(), Checksum: snap.Checksum(), Source: snap.Source(),
		Time: time.Now().UTC(), IntervalMS: s.cfg.HeartbeatInterval.Milliseconds(), Syncer: s.cfg.InstanceID})
	if err != nil {
		s.metrics.PublishErrors.Inc()
	}
}

// checkStream finds what the stream lost (a NATS crash can lose acknowledged messages that
// were not yet synced to disk, or the stream can be deleted) and republishes it.
func (s *Syncer) checkStream(ctx context.Context) {
	if s.snap == nil {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	last, err := s.pub.LastDelta(cctx)
	if err != nil {
		if !errors.Is(err, protocol.ErrNoStream) && !isStreamMissing(err) {
			return
		}
		if err := s.pub.EnsureStreams(cctx); err != nil {
			return
		}
		last = nil
	}
	if m, err := s.pub.Reader().Manifest(cctx); errors.Is(err, protocol.ErrNotFound) || errors.Is(err, protocol.ErrNoStream) || (err == nil && m.Revision < s.written.Load()) {
		s.log.WarnContext(ctx, "syncer: the stored snapshot is missing or older than written; rewriting it")
		s.snapForce.Store(true)
		s.kickSnapshotWriter()
	}
	// Which of the deltas we published are gone. A stream loses a tail (a crash loses what
	// it had not synced), so the retained history is stored up to some point and missing
	// after it: check the newest (one direct get when nothing was lost), else search for
	// that point (a few gets even for a long loss). Not "the delta at the stream's last
	// sequence": the stream keeps its last sequence when its tail is deleted, and a
	// republished delta may be stored after a newer one. An empty stream lost all.
	r := s.pub.Reader()
	stored := func(i int) (bool, error) {
		_, err := r.Delta(cctx, s.history.at(i).delta.Revision)
		if errors.Is(err, protocol.ErrNotFound) {
			return false, nil
		}
		return err == nil, err
	}
	i := s.history.len()
	if last == nil {
		i = 0
	} else if i > 0 {
		ok, err := stored(i - 1)
		if err != nil {
			return // NATS does not answer: next time
		}
		if !ok {
			lo, hi := 0, i-1 // the first missing one is in [lo, hi]
			for lo < hi {
				mid := (lo + hi) / 2
				ok, err := stored(mid)
				if err != nil {
					return
				}
				if ok {
					lo = mid + 1
				} else {
					hi = mid
				}
			}
			i = lo
		}
	}
	missing := s.history.from(i)
	if len(missing) == 0 {
		return
	}
	if i == 0 && missing[0].delta.PrevRevision > 0 {
		if _, err := r.Delta(cctx, missing[0].delta.PrevRevision); errors.Is(err, protocol.ErrNotFound) {
			s.log.ErrorContext(ctx, "syncer: the stream lost deltas older than the retained history; routers behind will re-bootstrap from the snapshot",
				"history_from", missing[0].delta.Revision)
			s.snapForce.Store(true)
			s.kickSnapshotWriter()
		}
	}
	s.log.WarnContext(ctx, "syncer: the stream lacks published deltas; republishing them",
		"from", missing[0].delta.Revision, "published", s.snap.Revision(), "count", len(missing))
	s.republish(ctx, missing)
}

// republish stores again, oldest first, those of ps that the stream lacks, with the same
// content, and announces them.
func (s *Syncer) republish(ctx context.Context, ps []*published) {
	for _, p := range ps {
		seq, err := s.pub.StoreDelta(ctx, p.delta, p.data)
		if err != nil {
			s.metrics.PublishErrors.Inc()
			s.log.WarnContext(ctx, "syncer: republish failed", "revision", p.delta.Revision, "error", err)
			return
		}
		if seq > 0 {
			p.seq = seq
			s.lastSeq = max(s.lastSeq, seq)
			s.metrics.Republished.Inc()
		}
	}
}

func isStreamMissing(err error) bool { return errors.Is(err, jetstream.ErrStreamNotFound) }
