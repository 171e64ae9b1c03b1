package triggers_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/beamline/registry-syncer/test/harness"
	"github.com/beamline/registry-syncer/triggers"
)

// db is what a pool, a connection and a transaction have in common.
type db interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// newSchema is a freshly migrated registry in a schema of its own.
func newSchema(t *testing.T) *harness.Schema {
	t.Helper()
	return harness.PG(t).NewSchema(t)
}

// testCtx bounds a test's database work, so a lock wait that never ends fails the test
// instead of hanging the package.
func testCtx(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

// connect opens a dedicated connection to the schema (LISTEN, session settings), closed
// when the test ends.
func connect(t *testing.T, ctx context.Context, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

func pgxIdent(name string) string { return pgx.Identifier{name}.Sanitize() }

func mustExec(t *testing.T, ctx context.Context, q db, sql string, args ...any) pgconn.CommandTag {
	t.Helper()
	tag, err := q.Exec(ctx, sql, args...)
	if err != nil {
		t.Fatalf("%s: %v", oneLine(sql), err)
	}
	return tag
}

func queryInt(t *testing.T, ctx context.Context, q db, sql string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := q.QueryRow(ctx, sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", oneLine(sql), err)
	}
	return n
}

func queryString(t *testing.T, ctx context.Context, q db, sql string, args ...any) string {
	t.Helper()
	var s string
	if err := q.QueryRow(ctx, sql, args...).Scan(&s); err != nil {
		t.Fatalf("%s: %v", oneLine(sql), err)
	}
	return s
}

func oneLine(sql string) string {
	s := strings.Join(strings.Fields(sql), " ")
	if len(s) > 120 {
		s = s[:120] + "…"
	}
	return s
}

// counter is the last assigned revision.
func counter(t *testing.T, ctx context.Context, q db) int64 {
	t.Helper()
	return queryInt(t, ctx, q, `SELECT revision FROM registry_counter`)
}

// listen subscribes a dedicated connection to the registry channel of the schema at url
// and returns the connection and the channel name.
func listen(t *testing.T, ctx context.Context, url string) (*pgx.Conn, string) {
	t.Helper()
	conn := connect(t, ctx, url)
	ch := queryString(t, ctx, conn, triggers.ChannelQuery)
	mustExec(t, ctx, conn, "LISTEN "+pgx.Identifier{ch}.Sanitize())
	return conn, ch
}

// nextNotification waits (bounded) for the next notification on conn and returns its
// revision, checking the channel.
func nextNotification(t *testing.T, ctx context.Context, conn *pgx.Conn, ch string, within time.Duration) int64 {
	t.Helper()
	wctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	n, err := conn.WaitForNotification(wctx)
	if err != nil {
		t.Fatalf("no notification on %s within %s: %v", ch, within, err)
	}
	if n.Channel != ch {
		t.Fatalf("notification on channel %q, want %q (payload %q)", n.Channel, ch, n.Payload)
	}
	rev, err := strconv.ParseInt(n.Payload, 10, 64)
	if err != nil {
		t.Fatalf("notification payload %q is not a revision: %v", n.Payload, err)
	}
	return rev
}

// expectNoNotification checks that nothing arrives on conn within a short bounded wait.
// Callers use it only after an ordering event (a later transaction's notification has
// already been received), so it checks for strays, it does not wait for an effect.
func expectNoNotification(t *testing.T, ctx context.Context, conn *pgx.Conn, within time.Duration) {
	t.Helper()
	wctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	n, err := conn.WaitForNotification(wctx)
	if err == nil {
		t.Fatalf("unexpected notification on %s: %q", n.Channel, n.Payload)
	}
	if !errors.Is(err, context.DeadlineExceeded) && !pgconn.Timeout(err) {
		t.Fatalf("wait for notification: %v", err)
	}
}

// pgError asserts that err is a PostgreSQL error and returns it.
func pgError(t *testing.T, err error) *pgconn.PgError {
	t.Helper()
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		t.Fatalf("want a PostgreSQL error, got %v", err)
	}
	return pe
}

// change is one row of registry_change_log.
type change struct {
	Revision    int64
	Seq         int64
	ExtensionID string
	Entity      string
	EntityKey   *string
	Action      string
	Old, New    map[string]any
	ChangedBy   string
}

func (c change) String() string {
	k := ""
	if c.EntityKey != nil {
		k = "/" + *c.EntityKey
	}
	return fmt.Sprintf("rev %d seq %d %s %s%s %s", c.Revision, c.Seq, c.Entity, c.ExtensionID, k, c.Action)
}

// changeLog reads registry_change_log above revision after, in replay order.
func changeLog(t *testing.T, ctx context.Context, q db, after int64) []change {
	t.Helper()
	rows, err := q.Query(ctx, `SELECT revision, seq, extension_id, entity, entity_key, action,
		old_values, new_values, changed_by
		FROM registry_change_log WHERE revision > $1 ORDER BY revision, seq`, after)
	if err != nil {
		t.Fatalf("read change log: %v", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (change, error) {
		var c change
		err := r.Scan(&c.Revision, &c.Seq, &c.ExtensionID, &c.Entity, &c.EntityKey, &c.Action, &c.Old, &c.New, &c.ChangedBy)
		return c, err
	})
	if err != nil {
		t.Fatalf("read change log: %v", err)
	}
	return out
}

// registry is the content of the three registry tables, each row as its to_jsonb object.
// Instance rows leave out last_health_check: health probes are not registry changes.
type registry struct {
	Extensions map[string]map[string]any
	Versions   map[[2]string]map[string]any
	Instances  map[[2]string]map[string]any
}

func newRegistry() *registry {
	return &registry{
		Extensions: map[string]map[string]any{},
		Versions:   map[[2]string]map[string]any{},
		Instances:  map[[2]string]map[string]any{},
	}
}

func instanceRow(m map[string]any) map[string]any {
	if m == nil {
		return nil
	}
	out := make(map[string]any, len(m))
	for k, v := range m {
		if k != "last_health_check" {
			out[k] = v
		}
	}
	return out
}

// readRegistry reads the current content of the registry tables.
func readRegistry(t *testing.T, ctx context.Context, q db) *registry {
	t.Helper()
	r := newRegistry()
	read := func(sql string, put func(map[string]any)) {
		rows, err := q.Query(ctx, sql)
		if err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		objs, err := pgx.CollectRows(rows, pgx.RowTo[map[string]any])
		if err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		for _, o := range objs {
			put(o)
		}
	}
	read(`SELECT to_jsonb(e) FROM extensions e`, func(m map[string]any) { r.Extensions[m["id"].(string)] = m })
	read(`SELECT to_jsonb(v) FROM extension_versions v`, func(m map[string]any) {
		r.Versions[[2]string{m["id"].(string), m["version"].(string)}] = m
	})
	read(`SELECT to_jsonb(i) FROM extension_instances i`, func(m map[string]any) {
		r.Instances[[2]string{m["extension_id"].(string), m["instance_id"].(string)}] = instanceRow(m)
	})
	return r
}

// replay applies change-log entries to r, checking that every update and delete starts
// from the state the log itself produced (old_values = replayed row).
func (r *registry) replay(t *testing.T, log []change) {
	t.Helper()
	for _, c := range log {
		switch c.Entity {
		case "extension":
			applyRow(t, c, r.Extensions, c.ExtensionID, c.Old, c.New)
		case "version":
			applyRow(t, c, r.Versions, [2]string{c.ExtensionID, *c.EntityKey}, c.Old, c.New)
		case "instance":
			applyRow(t, c, r.Instances, [2]string{c.ExtensionID, *c.EntityKey}, instanceRow(c.Old), instanceRow(c.New))
		case "aggregate":
			r.applyAggregate(t, c)
		default:
			t.Fatalf("%s: unknown entity", c)
		}
	}
}

func applyRow[K comparable](t *testing.T, c change, m map[K]map[string]any, key K, old, new map[string]any) {
	t.Helper()
	cur, exists := m[key]
	switch c.Action {
	case "create":
		if exists {
			t.Fatalf("%s: create of a row that exists", c)
		}
		if old != nil || new == nil {
			t.Fatalf("%s: create wants new_values only", c)
		}
		m[key] = new
	case "update", "enable", "disable":
		if !exists {
			t.Fatalf("%s: update of a missing row", c)
		}
		if !reflect.DeepEqual(cur, old) {
			t.Fatalf("%s: old_values differ from the replayed row:\n old_values %v\n replayed   %v", c, old, cur)
		}
		if wantEnabled := c.Action == "enable"; c.Action != "update" && new["enabled"] != wantEnabled {
			t.Fatalf("%s: enabled is %v", c, new["enabled"])
		}
		m[key] = new
	case "delete":
		if !exists {
			t.Fatalf("%s: delete of a missing row", c)
		}
		if !reflect.DeepEqual(cur, old) || new != nil {
			t.Fatalf("%s: old_values differ from the replayed row:\n old_values %v\n replayed   %v", c, old, cur)
		}
		delete(m, key)
	default:
		t.Fatalf("%s: unexpected action", c)
	}
}

// applyAggregate replaces everything known about one extension with a 'sync' entry.
func (r *registry) applyAggregate(t *testing.T, c change) {
	t.Helper()
	if c.Action != "sync" {
		t.Fatalf("%s: aggregate entries are sync entries", c)
	}
	delete(r.Extensions, c.ExtensionID)
	for k := range r.Versions {
		if k[0] == c.ExtensionID {
			delete(r.Versions, k)
		}
	}
	for k := range r.Instances {
		if k[0] == c.ExtensionID {
			delete(r.Instances, k)
		}
	}
	if c.New == nil {
		return
	}
	ext := map[string]any{}
	for k, v := range c.New {
		if k != "versions" && k != "instances" {
			ext[k] = v
		}
	}
	r.Extensions[c.ExtensionID] = ext
	for _, v := range c.New["versions"].([]any) {
		m := v.(map[string]any)
		r.Versions[[2]string{c.ExtensionID, m["version"].(string)}] = m
	}
	for _, v := range c.New["instances"].([]any) {
		m := v.(map[string]any)
		r.Instances[[2]string{c.ExtensionID, m["instance_id"].(string)}] = instanceRow(m)
	}
}

// diff describes how got differs from want (empty when equal).
func (r *registry) diff(got *registry) string {
	var b strings.Builder
	diffMap(&b, "extension", r.Extensions, got.Extensions)
	diffMap(&b, "version", r.Versions, got.Versions)
	diffMap(&b, "instance", r.Instances, got.Instances)
	return b.String()
}

func diffMap[K comparable](b *strings.Builder, what string, want, got map[K]map[string]any) {
	var lines []string
	for k, w := range want {
		g, ok := got[k]
		switch {
		case !ok:
			lines = append(lines, fmt.Sprintf("%s %v: missing, want %v", what, k, w))
		case !reflect.DeepEqual(w, g):
			lines = append(lines, fmt.Sprintf("%s %v:\n  got  %v\n  want %v", what, k, g, w))
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			lines = append(lines, fmt.Sprintf("%s %v: unexpected %v", what, k, g))
		}
	}
	sort.Strings(lines)
	for i, l := range lines {
		if i == 10 {
			fmt.Fprintf(b, "… and %d more\n", len(lines)-i)
			break
		}
		b.WriteString(l + "\n")
	}
}

// jsonOf decodes a JSON document the way pgx decodes jsonb, for comparisons.
func jsonOf(t *testing.T, s string) any {
	t.Helper()
	var v any
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("decode %s: %v", s, err)
	}
	return v
}
