package syncer

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/beamline/registry-syncer/cache"
	"github.com/beamline/registry-syncer/changelog"
)

// revision is one committed registry transaction read from the change log.
type revision struct {
	Revision    int64
	CommittedAt time.Time
	// Changes are the revision's changes in commit order; with more, only its first page:
	// the rest follows in the audit log, within xid, after seq lastSeq (forPages).
	Changes []cache.Change
	more    bool
	xid     string
	lastSeq int64
}

// querier is what the reads need from a pool, a connection or a transaction.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// changeLogSQL reads the revisions after $1 up to $2 (at most $3) with their changes (at
// most $4 of each, in seq order) and the counter. Each revision's changes are read through
// the audit log's (xid, seq) index (the lateral subquery, kept apart by its LIMIT so that it is
// not flattened into a join): a plain join let the planner hash the whole audit log on
// every read, 20 ms at 100,000 audit rows and growing with the log; see
// TestChangeLogReadUsesTheIndex.
const changeLogSQL = `
		SELECT c.revision, r.revision, r.committed_at, r.xid::text, a.seq, a.entity, a.extension_id, coalesce(a.entity_key, ''), a.action, a.new_values
		FROM registry_counter c
		LEFT JOIN LATERAL (SELECT revision, xid, committed_at FROM registry_revisions
		      WHERE revision > $1 AND revision <= $2 ORDER BY revision LIMIT $3) r ON true
		LEFT JOIN LATERAL (SELECT seq, entity, extension_id, entity_key, action, new_values FROM extension_audit_log
		      WHERE xid = r.xid ORDER BY seq LIMIT $4) a ON true
		ORDER BY r.revision, a.seq`

// changePageSQL reads the next page of one revision's changes: those of transaction $1
// after seq $2, at most $3, through the (xid, seq) index (TestChangeLogReadUsesTheIndex).
// The keyset is written as a range of (xid, seq) rows, not xid = $1 AND seq > $2, on
// purpose: with xid a constant, ORDER BY seq matches the primary key, and the planner
// walked it from $2, filtering on xid, through every later transaction's rows (to the end
// of the log on the last page).
const changePageSQL = `
		SELECT seq, entity, extension_id, coalesce(entity_key, ''), action, new_values FROM extension_audit_log
		WHERE (xid, seq) > ($1::xid8, $2) AND (xid, seq) < ($1::xid8, 9223372036854775807)
		ORDER BY xid, seq LIMIT $3`

// pageRows is the most change-log rows one read takes of one revision, for a bound of
// maxBytes: every row counts at least 64 bytes (changeBytes), so the bound in bytes is
// reached first unless rows are small; this only keeps the database from sending more rows
// of a huge revision than a page keeps.
func pageRows(maxBytes int) int { return max(16, maxBytes/128) }

// changeBytes is what one change read from the log counts against the bound in bytes.
func changeBytes(ch *cache.Change) int { return 64 + len(ch.ID) + len(ch.Key) + len(ch.Value) }

// readRevisions returns up to limit committed revisions after `after` (and not above
// upTo when upTo > 0), each with its changes in commit order, together with the revision
// counter read in the same statement (so in the same snapshot): one round trip tells both
// what to publish and whether that is everything committed so far. It stops early, after
// whole revisions, once their changes reach maxBytes (changeBytes). A revision whose
// changes alone reach it comes alone, with its first page only (more; forPages reads the
// rest); a later revision that would pass the bound is left for the next read, which goes
// on from the last revision returned.
func readRevisions(ctx context.Context, q querier, after, upTo int64, limit, maxBytes int) ([]revision, int64, error) {
	if upTo <= 0 {
		upTo = 1<<63 - 1
	}
	perRev := pageRows(maxBytes)
	rows, err := q.Query(ctx, changeLogSQL, after, upTo, limit, perRev)
	if err != nil {
		return nil, 0, fmt.Errorf("read change log after revision %d: %w", after, err)
	}
	defer rows.Close()
	var (
		out     []revision
		counter int64
		size    int  // of every change read
		n       int  // changes of the last revision
		stopped bool // by the bound, before the statement's end
	)
	// cut: the last revision may have more changes than were read. Alone, it is a first
	// page; after others, it is left for the next read.
	cut := func() {
		if len(out) == 1 {
			out[0].more = true
			return
		}
		out = out[:len(out)-1]
	}
	for rows.Next() {
		var (
			rev                     *int64
			at                      *time.Time
			xid                     *string
			seq                     *int64
			entity, id, key, action *string
			newValues               []byte
		)
		if err := rows.Scan(&counter, &rev, &at, &xid, &seq, &entity, &id, &key, &action, &newValues); err != nil {
			return nil, 0, fmt.Errorf("read change log: %w", err)
		}
		if rev == nil { // nothing after `after`: the one row carries the counter only
			continue
		}
		if len(out) == 0 || out[len(out)-1].Revision != *rev {
			if len(out) > 0 && n >= perRev {
				cut()
				stopped = true
				break
			}
			out = append(out, revision{Revision: *rev, CommittedAt: *at, xid: *xid})
			n = 0
		}
		if entity == nil { // a revision without changes (registry_sync of nothing)
			continue
		}
		ch, err := changelog.ToChange(*entity, *id, *key, *action, newValues)
		if err != nil {
			return nil, 0, fmt.Errorf("change log revision %d: %w", *rev, err)
		}
		cur := &out[len(out)-1]
		cur.Changes = append(cur.Changes, ch)
		cur.lastSeq = *seq
		size += changeBytes(&ch)
		n++
		if size >= maxBytes {
			cut() // the bound in bytes: the rest in the next read (or page)
			stopped = true
			break
		}
	}
	if err := rows.Err(); err != nil {
		return nil, 0, fmt.Errorf("read change log: %w", err)
	}
	if !stopped && len(out) > 0 && n >= perRev {
		cut() // the statement ended on the last revision's limit
	}
	return out, counter, nil
}

// readPage reads the changes of transaction xid after seq `after`, in commit order, until
// they reach maxBytes (changeBytes) or pageRows(maxBytes) rows; more says that the
// transaction may have changes after last.
func readPage(ctx context.Context, q querier, rev int64, xid string, after int64, maxBytes int) (changes []cache.Change, last int64, more bool, err error) {
	limit := pageRows(maxBytes)
	rows, err := q.Query(ctx, changePageSQL, xid, after, limit)
	if err != nil {
		return nil, 0, false, fmt.Errorf("read change log revision %d after seq %d: %w", rev, after, err)
	}
	defer rows.Close()
	size := 0
	last = after
	for rows.Next() {
		var (
			entity, id, key, action string
			newValues               []byte
		)
		if err := rows.Scan(&last, &entity, &id, &key, &action, &newValues); err != nil {
			return nil, 0, false, fmt.Errorf("read change log revision %d: %w", rev, err)
		}
		ch, err := changelog.ToChange(entity, id, key, action, newValues)
		if err != nil {
			return nil, 0, false, fmt.Errorf("change log revision %d: %w", rev, err)
		}
		changes = append(changes, ch)
		if size += changeBytes(&ch); size >= maxBytes {
			return changes, last, true, nil
		}
	}
	if err := rows.Err(); err != nil {
		return nil, 0, false, fmt.Errorf("read change log revision %d: %w", rev, err)
	}
	return changes, last, len(changes) >= limit, nil
}

// forPages calls fn with r's changes page by page, in commit order: r.Changes, then (with
// r.more) the following pages of at most maxBytes each, read from q as fn is done with the
// previous one. A page is not kept after fn returns (r.Changes is dropped too), so a huge
// revision is never held whole. rows, when not nil, is told the size of each page read.
func (r *revision) forPages(ctx context.Context, q querier, maxBytes int, rows func(int), fn func(page []cache.Change) error) error {
	page, after, more := r.Changes, r.lastSeq, r.more
	if more {
		r.Changes = nil
	}
	for {
		if err := fn(page); err != nil {
			return err
		}
		if !more {
			return nil
		}
		page = nil
		var err error
		if page, after, more, err = readPage(ctx, q, r.Revision, r.xid, after, maxBytes); err != nil {
			return err
		}
		if rows != nil {
			rows(len(page))
		}
	}
}

// applyRevision applies r, page by page, to base: the state after it.
func applyRevision(ctx context.Context, q querier, base *cache.Snapshot, r *revision, maxBytes int) (*cache.Snapshot, error) {
	err := r.forPages(ctx, q, maxBytes, nil, func(page []cache.Change) error {
		var err error
		base, _, err = base.Apply(r.Revision, SourceDatabase, page)
		return err
	})
	return base, err
}

// registryRead is the whole registry at one revision: the snapshot of every valid
// aggregate, and the aggregates that do not validate (left out of the snapshot).
type registryRead struct {
	*cache.Snapshot
	invalid map[string]invalidAggregate
}

// invalidAggregate is an aggregate the database holds and the router side refuses.
type invalidAggregate struct {
	reason string
	raw    cache.Extension
}

// readFull reads the whole registry in one snapshot of q (a REPEATABLE READ transaction,
// or any transaction that holds the revision lock) and returns it with its revision.
// Aggregates that do not validate are returned apart, never an error: one row must not
// stop publishing.
func readFull(ctx context.Context, q querier, source string) (registryRead, error) {
	exts, rev, err := readRows(ctx, q)
	if err != nil {
		return registryRead{}, err
	}
	snap, bad, err := splitInvalid(rev, source, exts)
	if err != nil {
		return registryRead{}, fmt.Errorf("registry at revision %d: %w", rev, err)
	}
	out := registryRead{Snapshot: snap}
	if len(bad) > 0 {
		out.invalid = make(map[string]invalidAggregate, len(bad))
		for _, e := range exts {
			if reason, ok := bad[e.ID]; ok {
				out.invalid[e.ID] = invalidAggregate{reason: reason, raw: e}
			}
		}
	}
	return out, nil
}

// readRows reads every aggregate as the tables hold it, with the revision counter.
func readRows(ctx context.Context, q querier) ([]cache.Extension, int64, error) {
	// The count sizes the slice and the index once: grown by append, the slice of 100,000
	// extensions (19 MB) allocated 110 MB on the way and held up to twice itself, at the
	// peak of a reconcile (BENCHMARKS.md).
	var (
		rev int64
		n   int
	)
	if err := q.QueryRow(ctx, `SELECT revision, (SELECT count(*) FROM extensions) FROM registry_counter`).Scan(&rev, &n); err != nil {
		return nil, 0, fmt.Errorf("read revision counter: %w", err)
	}
	exts := make([]cache.Extension, 0, n)
	index := make(map[string]int, n)
	rows, err := q.Query(ctx, `SELECT id, type, subject, timeout_ms, retry, enabled, version, config, metadata, auto_disabled FROM extensions ORDER BY id`)
	if err != nil {
		return nil, 0, fmt.Errorf("read extensions: %w", err)
	}
	for rows.Next() {
		exts = append(exts, cache.Extension{}) // scanned in place: no copy per row
		e := &exts[len(exts)-1]
		var cfg, md []byte
		if err := rows.Scan(&e.ID, &e.Type, &e.Subject, &e.TimeoutMS, &e.Retry, &e.Enabled, &e.Version, &cfg, &md, &e.AutoDisabled); err != nil {
			rows.Close()
			return nil, 0, fmt.Errorf("read extensions: %w", err)
		}
		e.Config, e.Metadata = cfg, md
		index[e.ID] = len(exts) - 1
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, 0, fmt.Errorf("read extensions: %w", err)
	}
	rows, err = q.Query(ctx, `SELECT id, version, subject, timeout_ms, retry, enabled, config, metadata, routing_rules FROM extension_versions ORDER BY id, version`)
	if err != nil {
		return nil, 0, fmt.Errorf("read extension_versions: %w", err)
	}
	for rows.Next() {
		var id string
		var v cache.Version
		var cfg, md, rr []byte
		if err := rows.Scan(&id, &v.Version, &v.Subject, &v.TimeoutMS, &v.Retry, &v.Enabled, &cfg, &md, &rr); err != nil {
			rows.Close()
			return nil, 0, fmt.Errorf("read extension_versions: %w", err)
		}
		v.Config, v.Metadata, v.RoutingRules = cfg, md, rr
		if i, ok := index[id]; ok {
			exts[i].Versions = append(exts[i].Versions, v)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, 0, fmt.Errorf("read extension_versions: %w", err)
	}
	rows, err = q.Query(ctx, `SELECT extension_id, instance_id, subject, weight, enabled, health_status FROM extension_instances ORDER BY extension_id, instance_id`)
	if err != nil {
		return nil, 0, fmt.Errorf("read extension_instances: %w", err)
	}
	for rows.Next() {
		var id string
		var in cache.Instance
		if err := rows.Scan(&id, &in.InstanceID, &in.Subject, &in.Weight, &in.Enabled, &in.HealthStatus); err != nil {
			rows.Close()
			return nil, 0, fmt.Errorf("read extension_instances: %w", err)
		}
		if i, ok := index[id]; ok {
			exts[i].Instances = append(exts[i].Instances, in)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, 0, fmt.Errorf("read extension_instances: %w", err)
	}
	return exts, rev, nil
}

// readConsistent reads the whole registry in a read-only REPEATABLE READ transaction.
func readConsistent(ctx context.Context, pool *pgxpool.Pool) (registryRead, error) {
	var r registryRead
	err := pgx.BeginTxFunc(ctx, pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		var err error
		r, err = readFull(ctx, tx, SourceDatabase)
		return err
	})
	return r, err
}
