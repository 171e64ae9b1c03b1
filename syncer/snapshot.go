package syncer

import (
	"context"
	"time"

	"github.com/beamline/registry-syncer/cache"
	"github.com/beamline/registry-syncer/changelog"
	"github.com/beamline/registry-syncer/publisher"
)

// snapshotWriter writes the newest published state as the durable snapshot, at most once
// per SnapshotInterval: deltas go out at once, snapshot writes coalesce. It runs for one
// term: it stops when the term stops (stop), and a write in flight ends with the lease
// (ctx).
func (s *term) snapshotWriter(ctx context.Context) {
	attempt := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.writerStop:
			return
		case <-s.snapWake:
		}
		snap := s.latest.Load()
		if snap == nil || (snap.Revision() <= s.written.Load() && !s.snapForce.Load()) {
			continue
		}
		if !s.snapForce.Load() {
			// Snapshots replaced within the grace stay readable (slow routers finish their
			// read); while they fill the retention bytes the write waits, so the interval
			// grows with the snapshot's size. A forced write (a repair) does not wait.
			wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			wait, err := s.pub.SnapshotWait(wctx)
			cancel()
			if err != nil {
				s.log.WarnContext(ctx, "syncer: reading the stored snapshots failed; writing without waiting", "error", err)
			}
			if wait > 0 {
				s.log.DebugContext(ctx, "syncer: snapshot write deferred: the snapshots within their grace fill the retention bytes",
					"revision", snap.Revision(), "sleep_duration", wait)
				s.metrics.SnapshotDeferrals.Inc()
				if !s.pauseOrWake(ctx, wait) {
					return
				}
				s.kickSnapshotWriter()
				continue
			}
		}
		// A write in progress is not cut short by a clean stop (stop waits for it): a
		// cancelled write leaves chunks without a manifest, or a manifest with the old
		// snapshots not purged, and logs a failure on every clean stop. Losing the lease
		// does cut it short.
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := s.writeSnapshot(wctx, snap)
		cancel()
		if err != nil {
			attempt++
			wait := backoff(attempt)
			s.log.WarnContext(ctx, "syncer: snapshot write failed, retrying", "revision", snap.Revision(), "error", err, "attempt", attempt, "sleep_duration", wait)
			if !s.pause(ctx, wait) {
				return
			}
			s.kickSnapshotWriter()
			continue
		}
		attempt = 0
		if !s.pause(ctx, s.cfg.SnapshotInterval) {
			return
		}
	}
}

// pause waits d unless ctx ends or the writer is stopped; it reports whether to go on.
func (s *term) pause(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-s.writerStop:
		return false
	case <-t.C:
		return true
	}
}

// pauseOrWake is pause that also ends early when a forced write is asked for (wakes for
// new revisions do not end it); it reports whether to go on.
func (s *term) pauseOrWake(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-s.writerStop:
			return false
		case <-s.snapWake:
			if s.snapForce.Load() {
				return true
			}
		case <-t.C:
			return true
		}
	}
}

// writeSnapshot stores snap as the durable snapshot unless a newer one was written.
func (s *term) writeSnapshot(ctx context.Context, snap *cache.Snapshot) error {
	s.snapMu.Lock()
	defer s.snapMu.Unlock()
	force := s.snapForce.Swap(false)
	if snap.Revision() < s.written.Load() || (snap.Revision() == s.written.Load() && !force) {
		return nil
	}
	start := time.Now()
	var o publisher.Origin
	if lo := s.latestOrigin.Load(); lo != nil && lo.Revision == snap.Revision() && snap.Source() == SourceDatabase {
		o = publisher.Origin{RegistryID: lo.RegistryID, CommittedAt: lo.CommittedAt}
	}
	man, err := s.pub.WriteSnapshotFrom(ctx, snap, force, o)
	if err == nil && man.Revision > snap.Revision() {
		// The stored manifest is ahead of this state. Usually another syncer wrote it: the
		// previous leader, still publishing or just stopped, while this one catches up.
		// Rewriting it with this older state would send the snapshot backwards again and
		// again during the catch-up; this leader reaches that revision soon, and replaces
		// the manifest then if its content differs — so do not record it as written. Only
		// a manifest beyond the database's last revision, which nobody will ever reach (a
		// corrupt or foreign write), is replaced at once: it would keep new routers from
		// bootstrapping until the registry caught up with it.
		if s.latest.Load() != snap {
			return nil
		}
		dbRev := int64(-1)
		if snap.Source() == SourceDatabase {
			pool, err := s.Pool()
			if err == nil {
				dbRev, err = changelog.Counter(ctx, pool)
			}
			if err != nil || man.Revision <= dbRev {
				return nil
			}
		}
		s.log.WarnContext(ctx, "syncer: the stored snapshot manifest is ahead of the published state; rewriting it",
			"stored_revision", man.Revision, "published_revision", snap.Revision(), "database_revision", dbRev)
		man, err = s.pub.WriteSnapshotFrom(ctx, snap, true, o)
	}
	if err != nil {
		if force {
			s.snapForce.Store(true)
		}
		s.metrics.PublishErrors.Inc()
		return err
	}
	s.written.Store(man.Revision)
	s.update(func(st *Status) { st.SnapshotRevision = man.Revision })
	s.publishOK()
	s.metrics.SnapshotWrites.Inc()
	s.metrics.SnapshotRevision.Set(float64(man.Revision))
	s.metrics.SnapshotBytes.Set(float64(man.Size))
	s.log.DebugContext(ctx, "syncer: snapshot written", "revision", man.Revision, "bytes", man.Size, "chunks", len(man.Sequences), "duration", time.Since(start))
	return nil
}
