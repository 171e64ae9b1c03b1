package syncer

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Timelines (DESIGN.md invariant 8). A database can go back in time or be replaced under a
// running syncer: an asynchronous standby promoted after the primary died loses the
// primary's last commits, a dump restored in place rewinds the change log, a re-created
// database starts again at revision 0. Its revision numbers then name other transactions
// than the ones published under them. Every published revision carries its identity — the
// registry id (registry_identity, created by the migration) and the commit time of the
// revision in the change log — and the leader checks, when a term starts and at every
// heartbeat, that the database still holds the revision it published last with that
// identity. When it does not, the database is on a new timeline: its content is published
// as one delta of whole aggregates under a revision above every revision ever published
// (restore), so no revision number ever carries two contents.

// errNewTimeline ends a term whose database left the published timeline; the next term
// publishes the database's content above it.
var errNewTimeline = errors.New("the database is on a new timeline")

// origin identifies a published revision in the database it came from.
type origin struct {
	RegistryID  string    // empty: unknown (published by an older syncer, or fixtures)
	Revision    int64     // the published revision
	CommittedAt time.Time // its commit time in registry_revisions; zero: unknown or revision 0
}

// dbOrigin is what the database says about a revision.
type dbOrigin struct {
	RegistryID  string
	Counter     int64      // the database's last revision
	CommittedAt *time.Time // commit time of the asked revision; nil: no such revision
}

// readOrigin reads the registry id, the revision counter and the commit time of rev, in one
// statement.
func readOrigin(ctx context.Context, q querier, rev int64) (dbOrigin, error) {
	var o dbOrigin
	err := q.QueryRow(ctx, `
		SELECT i.registry_id::text, c.revision, (SELECT committed_at FROM registry_revisions WHERE revision = $1)
		FROM registry_identity i, registry_counter c`, rev).Scan(&o.RegistryID, &o.Counter, &o.CommittedAt)
	if err != nil {
		return o, fmt.Errorf("read the registry identity: %w", err)
	}
	return o, nil
}

// at is the origin of revision rev as db describes it.
func (db dbOrigin) at(rev int64) origin {
	o := origin{RegistryID: db.RegistryID, Revision: rev}
	if db.CommittedAt != nil {
		o.CommittedAt = *db.CommittedAt
	}
	return o
}

// sameInstant compares commit times at PostgreSQL's precision (microseconds).
func sameInstant(a, b time.Time) bool {
	return a.Truncate(time.Microsecond).Equal(b.Truncate(time.Microsecond))
}

// leftTimeline says why the database no longer holds the published revision o as it was
// published, or "" when it does.
func (o origin) leftTimeline(db dbOrigin) string {
	switch {
	case o.RegistryID != "" && db.RegistryID != o.RegistryID:
		return fmt.Sprintf("the registry database was replaced (registry id %s, revision %d was published from %s)", db.RegistryID, o.Revision, o.RegistryID)
	case db.Counter < o.Revision:
		return fmt.Sprintf("the database's last revision %d is below the published revision %d (a restored backup or a promoted standby that lost commits)", db.Counter, o.Revision)
	case o.Revision == 0:
		return ""
	case db.CommittedAt == nil:
		return fmt.Sprintf("the published revision %d is not in the database's change log", o.Revision)
	case !o.CommittedAt.IsZero() && !sameInstant(*db.CommittedAt, o.CommittedAt):
		return fmt.Sprintf("revision %d is another transaction in the database (committed at %s, published one committed at %s)",
			o.Revision, db.CommittedAt.UTC().Format(time.RFC3339Nano), o.CommittedAt.UTC().Format(time.RFC3339Nano))
	}
	return ""
}

// checkTimeline ends the term when the database left the published timeline. A database
// that does not answer is not a new timeline (catch-up reports it).
func (s *term) checkTimeline(ctx context.Context, q querier) error {
	if s.snap == nil || s.snap.Source() != SourceDatabase {
		return nil
	}
	cctx, cancel := context.WithTimeout(ctx, s.cfg.HeartbeatInterval)
	defer cancel()
	db, err := readOrigin(cctx, q, s.origin.Revision)
	s.metrics.DatabaseUp.Set(boolGauge(err == nil))
	if err != nil {
		return nil
	}
	if why := s.origin.leftTimeline(db); why != "" {
		s.update(func(st *Status) { st.CaughtUp, st.DatabaseRevision = false, db.Counter })
		s.log.ErrorContext(ctx, "syncer: the database left the published timeline", "why", why,
			"published_revision", s.origin.Revision, "database_revision", db.Counter)
		return fmt.Errorf("%w: %s", errNewTimeline, why)
	}
	return nil
}
