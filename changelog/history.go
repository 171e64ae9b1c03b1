package changelog

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/beamline/registry-syncer/cache"
)

// Querier is what the reads need from a pool, a connection or a transaction.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Entry is one row change of the change log, with the revision it was committed in.
type Entry struct {
	Revision    int64     `json:"revision"`
	CommittedAt time.Time `json:"committed_at"`
	ChangedBy   string    `json:"changed_by"`
	ExtensionID string    `json:"extension_id"`
	Entity      string    `json:"entity"` // extension, version, instance or aggregate
	Key         string    `json:"key,omitempty"`
	Action      string    `json:"action"` // create, update, delete, enable, disable, sync
	// Fields lists the fields whose value changed (updates), sorted.
	Fields []string `json:"fields,omitempty"`
}

// bookkeeping fields differ on every update and say nothing about the content.
var bookkeeping = map[string]bool{"created_at": true, "updated_at": true, "created_by": true, "updated_by": true}

// HistoryFilter selects change-log entries.
type HistoryFilter struct {
	ID    string    // one extension (empty: all)
	Since time.Time // committed at or after (zero: from the start)
	Limit int       // the newest Limit entries (0: all)
}

// History returns the change-log entries that match f, oldest first.
func History(ctx context.Context, q Querier, f HistoryFilter) ([]Entry, error) {
	limit := int64(f.Limit)
	if limit <= 0 {
		limit = 1<<62 - 1
	}
	rows, err := q.Query(ctx, `
		SELECT * FROM (
			SELECT r.revision, r.committed_at, a.changed_by, a.extension_id, a.entity, coalesce(a.entity_key, ''),
			       a.action, a.old_values, a.new_values, a.seq
			FROM extension_audit_log a JOIN registry_revisions r ON r.xid = a.xid
			WHERE ($1 = '' OR a.extension_id = $1) AND r.committed_at >= $2
			ORDER BY r.revision DESC, a.seq DESC
			LIMIT $3) newest
		ORDER BY revision, seq`, f.ID, f.Since, limit)
	if err != nil {
		return nil, fmt.Errorf("read the change log: %w", err)
	}
	defer rows.Close()
	var out []Entry
	for rows.Next() {
		var e Entry
		var oldV, newV []byte
		var seq int64
		if err := rows.Scan(&e.Revision, &e.CommittedAt, &e.ChangedBy, &e.ExtensionID, &e.Entity, &e.Key, &e.Action, &oldV, &newV, &seq); err != nil {
			return nil, fmt.Errorf("read the change log: %w", err)
		}
		if len(oldV) > 0 && len(newV) > 0 {
			e.Fields = changedFields(oldV, newV)
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read the change log: %w", err)
	}
	return out, nil
}

// changedFields lists the top-level keys whose values differ between two JSON objects.
func changedFields(a, b []byte) []string {
	var x, y map[string]json.RawMessage
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return nil
	}
	var out []string
	for k, v := range y {
		if !bookkeeping[k] && !bytes.Equal(compact(v), compact(x[k])) {
			out = append(out, k)
		}
	}
	for k := range x {
		if _, ok := y[k]; !ok && !bookkeeping[k] {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

func compact(v []byte) []byte {
	var b bytes.Buffer
	if json.Compact(&b, v) != nil {
		return v
	}
	return b.Bytes()
}

// AggregateAt returns extension id's aggregate as it was at revision rev, replayed from the
// change log (nil: it did not exist then). Nothing is validated: it is what the database
// held.
func AggregateAt(ctx context.Context, q Querier, id string, rev int64) (*cache.Extension, error) {
	rows, err := q.Query(ctx, `
		SELECT r.revision, a.entity, coalesce(a.entity_key, ''), a.action, a.new_values
		FROM extension_audit_log a JOIN registry_revisions r ON r.xid = a.xid
		WHERE a.extension_id = $1 AND r.revision <= $2
		ORDER BY r.revision, a.seq`, id, rev)
	if err != nil {
		return nil, fmt.Errorf("read the change log of %q: %w", id, err)
	}
	defer rows.Close()
	var e *cache.Extension
	for rows.Next() {
		var (
			r                   int64
			entity, key, action string
			newValues           []byte
		)
		if err := rows.Scan(&r, &entity, &key, &action, &newValues); err != nil {
			return nil, fmt.Errorf("read the change log of %q: %w", id, err)
		}
		c, err := ToChange(entity, id, key, action, newValues)
		if err != nil {
			return nil, fmt.Errorf("change log revision %d: %w", r, err)
		}
		if err := Replay(&e, c); err != nil {
			return nil, fmt.Errorf("change log revision %d: %w", r, err)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read the change log of %q: %w", id, err)
	}
	if e != nil {
		normalizeAggregate(e)
	}
	return e, nil
}

// Counter reads the last committed revision.
func Counter(ctx context.Context, q Querier) (int64, error) {
	var rev int64
	if err := q.QueryRow(ctx, `SELECT revision FROM registry_counter`).Scan(&rev); err != nil {
		return 0, fmt.Errorf("read revision counter: %w", err)
	}
	return rev, nil
}

// AggregateDiff is one extension that differs between two revisions.
type AggregateDiff struct {
	ID     string           `json:"id"`
	Before *cache.Extension `json:"before"` // nil: absent at the first revision
	After  *cache.Extension `json:"after"`  // nil: absent at the second revision
	Lines  []string         `json:"changes"`
}

// Diff returns the extensions whose aggregate differs between revisions a and b, sorted
// by id.
func Diff(ctx context.Context, q Querier, a, b int64) ([]AggregateDiff, error) {
	lo, hi := min(a, b), max(a, b)
	rows, err := q.Query(ctx, `
		SELECT DISTINCT a.extension_id
		FROM extension_audit_log a JOIN registry_revisions r ON r.xid = a.xid
		WHERE r.revision > $1 AND r.revision <= $2 ORDER BY 1`, lo, hi)
	if err != nil {
		return nil, fmt.Errorf("read the change log between revisions %d and %d: %w", lo, hi, err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("read the change log between revisions %d and %d: %w", lo, hi, err)
	}
	var out []AggregateDiff
	for _, id := range ids {
		before, err := AggregateAt(ctx, q, id, a)
		if err != nil {
			return nil, err
		}
		after, err := AggregateAt(ctx, q, id, b)
		if err != nil {
			return nil, err
		}
		if lines := Describe(before, after); len(lines) > 0 {
			out = append(out, AggregateDiff{ID: id, Before: before, After: after, Lines: lines})
		}
	}
	return out, nil
}

// ErrNoRevision is returned for a revision the database never had.
var ErrNoRevision = errors.New("no such revision")

// CheckRevision returns ErrNoRevision unless 0 <= rev <= the last committed revision.
func CheckRevision(ctx context.Context, q Querier, rev int64) error {
	last, err := Counter(ctx, q)
	if err != nil {
		return err
	}
	if rev < 0 || rev > last {
		return fmt.Errorf("%w: revision %d (the database is at %d)", ErrNoRevision, rev, last)
	}
	return nil
}

// normalizeAggregate puts JSON fields and child order in the form comparisons expect.
func normalizeAggregate(e *cache.Extension) {
	e.Config, e.Metadata = compactObject(e.Config), compactObject(e.Metadata)
	for i := range e.Versions {
		v := &e.Versions[i]
		v.Config, v.Metadata, v.RoutingRules = compactObject(v.Config), compactObject(v.Metadata), compactObject(v.RoutingRules)
	}
	slices.SortFunc(e.Versions, func(x, y cache.Version) int { return strings.Compare(x.Version, y.Version) })
	slices.SortFunc(e.Instances, func(x, y cache.Instance) int { return strings.Compare(x.InstanceID, y.InstanceID) })
	if e.Versions == nil {
		e.Versions = []cache.Version{}
	}
	if e.Instances == nil {
		e.Instances = []cache.Instance{}
	}
}

func compactObject(raw json.RawMessage) json.RawMessage {
	if len(raw) == 0 || string(raw) == "null" {
		return json.RawMessage("{}")
	}
	return compact(raw)
}

// Describe lists, one line each, how after differs from before (nil: absent).
func Describe(before, after *cache.Extension) []string {
	switch {
	case before == nil && after == nil:
		return nil
	case before == nil:
		return []string{fmt.Sprintf("created (%s, %s)", after.Type, after.Subject)}
	case after == nil:
		return []string{"deleted"}
	}
	var lines []string
	field := func(name string, a, b any) {
		x, _ := json.Marshal(a)
		y, _ := json.Marshal(b)
		if !bytes.Equal(compact(x), compact(y)) {
			lines = append(lines, fmt.Sprintf("%s: %s -> %s", name, x, y))
		}
	}
	field("type", before.Type, after.Type)
	field("subject", before.Subject, after.Subject)
	field("timeout_ms", before.TimeoutMS, after.TimeoutMS)
	field("retry", before.Retry, after.Retry)
	field("enabled", before.Enabled, after.Enabled)
	field("auto_disabled", before.AutoDisabled, after.AutoDisabled)
	field("version", before.Version, after.Version)
	field("config", before.Config, after.Config)
	field("metadata", before.Metadata, after.Metadata)
	children(&lines, "version", "versions", before.Versions, after.Versions, func(v cache.Version) string { return v.Version },
		func(v cache.Version) string { return v.Subject }, field)
	children(&lines, "instance", "instances", before.Instances, after.Instances, func(in cache.Instance) string { return in.InstanceID },
		func(in cache.Instance) string { return fmt.Sprintf("%s, weight %d", in.Subject, in.Weight) }, field)
	return lines
}

// children describes the children (versions or instances) added, removed or changed,
// matched by key.
func children[T any](lines *[]string, kind, plural string, before, after []T, key func(T) string, summary func(T) string,
	field func(name string, a, b any)) {
	bm, am := map[string]T{}, map[string]T{}
	for _, x := range before {
		bm[key(x)] = x
	}
	for _, x := range after {
		am[key(x)] = x
	}
	for _, k := range unionKeys(bm, am) {
		x, inB := bm[k]
		y, inA := am[k]
		switch {
		case !inB:
			*lines = append(*lines, fmt.Sprintf("%s %s added (%s)", kind, k, summary(y)))
		case !inA:
			*lines = append(*lines, fmt.Sprintf("%s %s removed", kind, k))
		default:
			field(plural+"["+k+"]", x, y)
		}
	}
}

func unionKeys[V any](a, b map[string]V) []string {
	var out []string
	for k := range a {
		out = append(out, k)
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}
