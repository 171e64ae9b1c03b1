package triggers_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/beamline/registry-syncer/migrations"
	"github.com/beamline/registry-syncer/test/harness"
	"github.com/beamline/registry-syncer/triggers"
)

var namedSeq atomic.Int64

// namedSchema creates and migrates a schema called name (made unique by a numeric
// suffix kept inside its first bytes) and returns its name and URL; the URL's search_path
// quotes the name, as an operator's DATABASE_URL would for such a name.
func namedSchema(t *testing.T, ctx context.Context, name string) (string, string) {
	t.Helper()
	pg := harness.PG(t)
	name = fmt.Sprintf("%d%s", namedSeq.Add(1), name)
	if len(name) > 63 {
		t.Fatalf("schema name %q is %d bytes: PostgreSQL would cut it to 63", name, len(name))
	}
	if err := pg.Exec(ctx, "CREATE SCHEMA "+pgxIdent(name)); err != nil {
		t.Fatalf("create schema %q: %v", name, err)
	}
	t.Cleanup(func() { _ = pg.Exec(context.Background(), "DROP SCHEMA "+pgxIdent(name)+" CASCADE") })
	url := pg.URL("postgres", pgxIdent(name))
	db, err := migrations.Open(url)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := migrations.Up(ctx, db); err != nil {
		t.Fatalf("migrate %q: %v", name, err)
	}
	return name, url
}

// TestChannelMultibyteSchema: a schema name that fits 63 characters but not 63 bytes
// gets a channel that fits; writes commit and the listener, which LISTENs on what
// ChannelQuery returns, hears them.
func TestChannelMultibyteSchema(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t, 60*time.Second)
	name, url := namedSchema(t, ctx, "_régistre_"+strings.Repeat("é", 20)+"…")
	if whole := name + ".registry_revision"; utf8.RuneCountInString(whole) > 63 || len(whole) <= 63 {
		t.Fatalf("test schema %q: want a name that fits 63 characters but not 63 bytes (%d, %d)", name, utf8.RuneCountInString(whole), len(whole))
	}
	conn, ch := listen(t, ctx, url)
	if len(ch) > triggers.MaxChannelBytes || ch != triggers.Channel(name) {
		t.Fatalf("channel %q (%d bytes), want %q", ch, len(ch), triggers.Channel(name))
	}
	if !utf8.ValidString(ch) || !strings.HasPrefix(name, strings.SplitN(ch, ".", 2)[0]) {
		t.Fatalf("channel %q is not a cut of the schema name in whole characters", ch)
	}
	writer := connect(t, ctx, url)
	mustExec(t, ctx, writer, `INSERT INTO extensions (id, type, subject) VALUES ('x', 'pre', 'beamline.ext.pre.x.v1')`)
	mustExec(t, ctx, writer, `UPDATE extensions SET timeout_ms = 250 WHERE id = 'x'`)
	for want := int64(1); want <= 2; want++ {
		if got := nextNotification(t, ctx, conn, ch, notifyWithin); got != want {
			t.Fatalf("notification %d, want %d", got, want)
		}
	}
}

// TestChannelNamesFitAndDiffer: the SQL and Go rules agree, every channel fits 63 bytes
// and is valid UTF-8 (the cut keeps whole characters), and schemas that share their first
// 63 bytes, or differ only after them, get channels of their own.
func TestChannelNamesFitAndDiffer(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t, 120*time.Second)
	seen := map[string]string{}
	for _, n := range []string{
		"_short",
		"_" + strings.Repeat("b", 43), // with the 1- or 2-digit sequence: 63 bytes or one over
		"_" + strings.Repeat("c", 60) + "1",
		"_" + strings.Repeat("c", 60) + "2",
		"_" + strings.Repeat("é", 30) + "x",
		"_" + strings.Repeat("é", 30) + "y",
		"_" + strings.Repeat("a", 25) + "ééééé",
	} {
		name, url := namedSchema(t, ctx, n)
		conn := connect(t, ctx, url)
		ch := queryString(t, ctx, conn, triggers.ChannelQuery)
		switch {
		case ch != triggers.Channel(name):
			t.Errorf("schema %q: SQL channel %q, Go %q", name, ch, triggers.Channel(name))
		case len(ch) > triggers.MaxChannelBytes || !utf8.ValidString(ch):
			t.Errorf("schema %q: channel %q is %d bytes or not UTF-8", name, ch, len(ch))
		case len(name)+len(".registry_revision") <= triggers.MaxChannelBytes && ch != name+".registry_revision":
			t.Errorf("schema %q: channel %q, want the name of earlier versions", name, ch)
		}
		if other, dup := seen[ch]; dup {
			t.Errorf("schemas %q and %q share the channel %q", other, name, ch)
		}
		seen[ch] = name
	}
}

// TestChannelMigration: a schema migrated by an earlier version (registry_channel() cut
// at 63 characters) gets the new definition from migration 4, and its writes commit.
func TestChannelMigration(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t, 60*time.Second)
	name, url := namedSchema(t, ctx, "_ancien_"+strings.Repeat("ü", 25))
	conn := connect(t, ctx, url)
	mustExec(t, ctx, conn, `CREATE OR REPLACE FUNCTION registry_channel() RETURNS text
		LANGUAGE sql STABLE SET search_path FROM CURRENT AS $$
		SELECT left(current_schema() || '.registry_revision', 63) $$`)
	// As if migrated before migration 4 existed (and before every later one).
	mustExec(t, ctx, conn, `DELETE FROM registry_schema_migrations WHERE version_id >= $1`, migrations.ChannelVersion)
	if _, err := conn.Exec(ctx, `INSERT INTO extensions (id, type, subject) VALUES ('x', 'pre', 'beamline.ext.pre.x.v1')`); err == nil || !strings.Contains(err.Error(), "channel name too long") {
		t.Fatalf("with the earlier definition the write gave %v, want channel name too long (the case migration 4 repairs)", err)
	}
	db, err := migrations.Open(url)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	applied, err := migrations.Up(ctx, db)
	if err != nil || len(applied) == 0 || applied[0].Version != migrations.ChannelVersion {
		t.Fatalf("Up applied %v (%v), want migration %d", applied, err, migrations.ChannelVersion)
	}
	ln, ch := listen(t, ctx, url)
	if ch != triggers.Channel(name) {
		t.Fatalf("channel %q, want %q", ch, triggers.Channel(name))
	}
	mustExec(t, ctx, conn, `INSERT INTO extensions (id, type, subject) VALUES ('x', 'pre', 'beamline.ext.pre.x.v1')`)
	if got := nextNotification(t, ctx, ln, ch, notifyWithin); got != 1 {
		t.Fatalf("notification %d, want 1", got)
	}
}
