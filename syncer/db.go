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
	Changes     []cache.Change
}

// querier is what the reads need from a pool, a connection or a transaction.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// changeLogSQL reads the revisions after $1 up to $2 (at most $3) with their changes and
// the counter. Each revision's changes are read through the audit log's xid index (the
// lateral subquery, fenced by OFFSET 0 so that it is not flattened into a join): a plain
// join let the planner hash the whole audit log on every read, 20 ms at 100,000 audit
// rows and growing with the log; see TestChangeLogReadUsesTheIndex.
const changeLogSQL = `
		SELECT c.revision, r.revision, r.committed_at, a.entity, a.extension_id, coalesce(a.entity_key, ''), a.action, a.new_values
		FROM registry_counter c
		LEFT JOIN LATERAL (SELECT revision, xid, committed_at FROM registry_revisions
		      WHERE revision > $1 AND revision <= $2 ORDER BY revision LIMIT $3) r ON true
		LEFT JOIN LATERAL (SELECT seq, entity, extension_id, entity_key, action, new_values FROM extension_audit_log
		      WHERE xid = r.xid OFFSET 0) a ON true
		ORDER BY r.revision, a.seq`

// readRevisions returns up to limit committed revisions after `after` (and not above
// upTo when upTo > 0), each with its changes in commit order, together with the revision
// counter read in the same statement (so in the same snapshot): one round trip tells both
// what to publish and whether that is everything committed so far. It stops early, after
// whole revisions, once their change values reach maxBytes (one larger revision is read
// whole): the caller reads on from the last revision returned.
func readRevisions(ctx context.Context, q querier, after, upTo int64, limit, maxBytes int) ([]revision, int64, error) {
	if upTo <= 0 {
		upTo = 1<<63 - 1
	}
	rows, err := q.Query(ctx, changeLogSQL, after, upTo, limit)
	if err != nil {
		return nil, 0, fmt.Errorf("read change log after revision %d: %w", after, err)
	}
	defer rows.Close()
	var (
		out     []revision
		counter int64
		size    int
	)
	for rows.Next() {
		var (
			rev                     *int64
			at                      *time.Time
			entity, id, key, action *string
			newValues               []byte
		)
		if err := rows.Scan(&counter, &rev, &at, &entity, &id, &key, &action, &newValues); err != nil {
			return nil, 0, fmt.Errorf("read change log: %w", err)
		}
		if rev == nil { // nothing after `after`: the one row carries the counter only
			continue
		}
		if len(out) == 0 || out[len(out)-1].Revision != *rev {
			if size >= maxBytes && len(out) > 0 {
				break // the bound in bytes: the rest in the next read
			}
			out = append(out, revision{Revision: *rev, CommittedAt: *at})
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
		size += 64 + len(ch.ID) + len(ch.Key) + len(ch.Value)
	}
	if err := rows.Err(); err != nil {
		return nil, 0, fmt.Errorf("read change log: %w", err)
	}
	return out, counter, nil
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
	var rev int64
	if err := q.QueryRow(ctx, `SELECT revision FROM registry_counter`).Scan(&rev); err != nil {
		return nil, 0, fmt.Errorf("read revision counter: %w", err)
	}
	exts := []cache.Extension{}
	index := map[string]int{}
	rows, err := q.Query(ctx, `SELECT id, type, subject, timeout_ms, retry, enabled, version, config, metadata, auto_disabled FROM extensions ORDER BY id`)
	if err != nil {
		return nil, 0, fmt.Errorf("read extensions: %w", err)
	}
	for rows.Next() {
		var e cache.Extension
		var cfg, md []byte
		if err := rows.Scan(&e.ID, &e.Type, &e.Subject, &e.TimeoutMS, &e.Retry, &e.Enabled, &e.Version, &cfg, &md, &e.AutoDisabled); err != nil {
			rows.Close()
			return nil, 0, fmt.Errorf("read extensions: %w", err)
		}
		e.Config, e.Metadata = cfg, md
		index[e.ID] = len(exts)
		exts = append(exts, e)
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
