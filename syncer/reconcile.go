package syncer

import (
	"context"
	"fmt"

	"github.com/beamline/registry-syncer/cache"
	"github.com/jackc/pgx/v5/pgxpool"
)

// reconcile compares a consistent full read of the database with the published state and
// repairs any difference under a new revision.
func (s *term) reconcile(ctx context.Context, pool *pgxpool.Pool) error {
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
		s.adoptInvalid(db)
		if s.snap.Checksum() == db.Checksum() {
			return s.catchUp(ctx, pool, 0)
		}
		drift := db.drift(s.snap)
		if len(drift) == 0 {
			return s.catchUp(ctx, pool, 0)
		}
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
func (s *term) syncToDB(ctx context.Context, pool *pgxpool.Pool, base *cache.Snapshot, floor int64, always bool) (int64, error) {
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
			revs, _, err := readRevisions(ctx, tx, after, locked, s.cfg.Batch, s.cfg.BatchBytes)
			if err != nil {
				return 0, fmt.Errorf("sync: %w", err)
			}
			if len(revs) == 0 {
				break
			}
			for i := range revs {
				r := &revs[i]
				if base, err = applyRevision(ctx, tx, base, r, s.cfg.BatchBytes); err != nil {
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
	ids := db.drift(base)
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

// drift lists the aggregates in which published differs from the valid part of the
// database read (those the database holds invalid are withheld, not drift).
func (db registryRead) drift(published *cache.Snapshot) []string {
	ids := published.Diff(db.Snapshot)
	if len(db.invalid) == 0 {
		return ids
	}
	out := ids[:0]
	for _, id := range ids {
		if _, bad := db.invalid[id]; !bad {
			out = append(out, id)
		}
	}
	return out
}

// adoptInvalid brings the withheld set in line with a full read (at the cursor's
// revision, or later: the shadows then replay the revisions in between, which ends at the
// same content):
// every aggregate the database holds invalid is withheld with the database's version as
// its shadow; a withheld aggregate the database now holds valid and as published (or
// holds no more, as published) is simply released. One the database holds valid but
// different is drift: the repair publishes it whole, and that releases it.
func (s *term) adoptInvalid(db registryRead) {
	changed := false
	for id, bad := range db.invalid {
		a := s.withhold(id, bad.reason, db.Revision())
		raw := cloneAggregate(&bad.raw)
		a.shadow, a.Reason = &raw, bad.reason
		changed = true
	}
	for id := range s.withheld {
		if _, bad := db.invalid[id]; bad {
			continue
		}
		pub, inPub := s.snap.Hash(id)
		cur, inDB := db.Hash(id)
		if inPub == inDB && pub == cur {
			delete(s.withheld, id)
			changed = true
			s.log.Info("syncer: a withheld extension is valid and published as it is", "extension", id)
		}
	}
	if changed {
		s.noteWithheld()
	}
}
