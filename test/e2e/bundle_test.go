package e2e

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/beamline/registry-syncer/cache"
	"github.com/beamline/registry-syncer/protocol"
	"github.com/beamline/registry-syncer/test/harness"
)

// testBundle is one test's world: a migrated schema of its own, a NATS server of its own
// (in-process, or real nats-server processes: setupOn), and a subject prefix.
type testBundle struct {
	schema *harness.Schema
	nats   *harness.NATS // the in-process server (nil with setupOn)
	url    string        // NATS URL(s) of the test's server, comma-separated for a cluster
	prefix string
	names  protocol.Names
	nc     *nats.Conn // the test's own connection: forged messages, stream reads
	js     jetstream.JetStream
	reader *protocol.Reader
	seq    atomic.Int64 // names processes and routers
}

func setup(t *testing.T, prefix string) *testBundle {
	t.Helper()
	srv := harness.NewNATS(t, harness.NATSOptions{})
	b := setupOn(t, prefix, srv.URL())
	b.nats = srv
	return b
}

// setupOn is setup on the NATS server(s) at url, which the test started.
func setupOn(t *testing.T, prefix, url string) *testBundle {
	t.Helper()
	pg := harness.PG(t)
	recordCluster(pg)
	b := &testBundle{schema: pg.NewSchema(t), url: url, prefix: prefix}
	var err error
	if b.names, err = protocol.NewNames(prefix); err != nil {
		t.Fatal(err)
	}
	b.nc, err = nats.Connect(url, nats.Name("e2e-test"), nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond))
	if err != nil {
		t.Fatalf("connect nats: %v", err)
	}
	t.Cleanup(b.nc.Close)
	if b.js, err = jetstream.New(b.nc); err != nil {
		t.Fatal(err)
	}
	b.reader = &protocol.Reader{NC: b.nc, Names: b.names}
	return b
}

// vars is the configuration of syncer processes, with overrides.
func (b *testBundle) vars(overrides ...string) map[string]string {
	v := map[string]string{
		"EXTENSION_REGISTRY_DATABASE_URL":          b.schema.URL,
		"EXTENSION_REGISTRY_NATS_URL":              b.url,
		"EXTENSION_REGISTRY_SUBJECT_PREFIX":        b.prefix,
		"EXTENSION_REGISTRY_HTTP_ADDR":             "127.0.0.1:0", // port 0: the log line "admin: listening" tells the port
		"EXTENSION_REGISTRY_ADMIN_TOKEN":           "e2e-admin-token-0123456789",
		"EXTENSION_REGISTRY_SYNC_INTERVAL_SECONDS": "60",
		"EXTENSION_REGISTRY_HEARTBEAT_INTERVAL":    "250ms",
		"EXTENSION_REGISTRY_SNAPSHOT_INTERVAL":     "200ms",
		"EXTENSION_REGISTRY_LEADER_RETRY":          "1s",
		"EXTENSION_REGISTRY_LOG_LEVEL":             "info",
		"EXTENSION_REGISTRY_LOG_FORMAT":            "json",
	}
	for i := 0; i+1 < len(overrides); i += 2 {
		v["EXTENSION_REGISTRY_"+overrides[i]] = overrides[i+1]
	}
	return v
}

// startSyncer starts a `syncer run` process and waits until its HTTP server listens
// (not until it is ready: a standby never is).
func (b *testBundle) startSyncer(t *testing.T, overrides ...string) *syncerProc {
	t.Helper()
	name := fmt.Sprintf("syncer-%d", b.seq.Add(1))
	p := startProc(t, name, b.vars(overrides...), "run")
	_, l := p.stderr.waitFor(t, 0, 30*time.Second, name+" HTTP address", logMsg("admin: listening"))
	addr, _ := jsonLog(l.text)["addr"].(string)
	if addr == "" {
		t.Fatalf("%s: no address in %q", name, l.text)
	}
	return &syncerProc{proc: p, addr: addr}
}

// seedDefaults imports the default fixtures with `syncer fixtures import` (one revision).
func (b *testBundle) seedDefaults(t *testing.T) {
	t.Helper()
	r := runCLI(t, b.vars(), "fixtures", "import")
	if r.code != 0 {
		t.Fatalf("syncer fixtures import: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}

// commit runs stmts in one transaction and returns the revision it committed and the
// time the COMMIT was sent.
func (b *testBundle) commit(t *testing.T, stmts ...string) (int64, time.Time) {
	t.Helper()
	rev, at, err := commitOn(context.Background(), b.schema.Pool, stmts...)
	if err != nil {
		t.Fatal(err)
	}
	return rev, at
}

func commitOn(ctx context.Context, pool *pgxpool.Pool, stmts ...string) (int64, time.Time, error) {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return 0, time.Time{}, err
	}
	defer func() { _ = tx.Rollback(ctx) }() // a no-op after Commit
	for _, s := range stmts {
		if _, err := tx.Exec(ctx, s); err != nil {
			return 0, time.Time{}, fmt.Errorf("%s: %w", s, err)
		}
	}
	var xid string
	if err := tx.QueryRow(ctx, `SELECT pg_current_xact_id()::text`).Scan(&xid); err != nil {
		return 0, time.Time{}, err
	}
	at := time.Now()
	if err := tx.Commit(ctx); err != nil {
		return 0, time.Time{}, err
	}
	var rev int64
	err = pool.QueryRow(ctx, `SELECT coalesce((SELECT revision FROM registry_revisions WHERE xid = $1::xid8), 0)`, xid).Scan(&rev)
	return rev, at, err
}

// db reads the registry at one revision, the way a router must see it.
func (b *testBundle) db(t *testing.T) *cache.Snapshot {
	t.Helper()
	snap, err := readDB(context.Background(), b.schema.Pool)
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

// readDB reads extensions, versions and instances in one REPEATABLE READ transaction
// with the revision counter, and builds the snapshot the syncer must publish for it.
func readDB(ctx context.Context, pool *pgxpool.Pool) (*cache.Snapshot, error) {
	var snap *cache.Snapshot
	err := pgx.BeginTxFunc(ctx, pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		var rev int64
		if err := tx.QueryRow(ctx, `SELECT revision FROM registry_counter`).Scan(&rev); err != nil {
			return err
		}
		exts := []cache.Extension{}
		index := map[string]int{}
		var e cache.Extension
		var cfg, md []byte
		rows, _ := tx.Query(ctx, `SELECT id, type, subject, timeout_ms, retry, enabled, version, config, metadata, auto_disabled FROM extensions ORDER BY id`)
		_, err := pgx.ForEachRow(rows, []any{&e.ID, &e.Type, &e.Subject, &e.TimeoutMS, &e.Retry, &e.Enabled, &e.Version, &cfg, &md, &e.AutoDisabled}, func() error {
			x := e
			x.Config, x.Metadata = append([]byte(nil), cfg...), append([]byte(nil), md...)
			index[x.ID] = len(exts)
			exts = append(exts, x)
			return nil
		})
		if err != nil {
			return fmt.Errorf("read extensions: %w", err)
		}
		var id string
		var v cache.Version
		var rr []byte
		rows, _ = tx.Query(ctx, `SELECT id, version, subject, timeout_ms, retry, enabled, config, metadata, routing_rules FROM extension_versions ORDER BY id, version`)
		_, err = pgx.ForEachRow(rows, []any{&id, &v.Version, &v.Subject, &v.TimeoutMS, &v.Retry, &v.Enabled, &cfg, &md, &rr}, func() error {
			x := cache.Version{Version: v.Version, Subject: v.Subject, TimeoutMS: v.TimeoutMS, Retry: v.Retry, Enabled: v.Enabled,
				Config: append([]byte(nil), cfg...), Metadata: append([]byte(nil), md...), RoutingRules: append([]byte(nil), rr...)}
			exts[index[id]].Versions = append(exts[index[id]].Versions, x)
			return nil
		})
		if err != nil {
			return fmt.Errorf("read extension_versions: %w", err)
		}
		var in cache.Instance
		rows, _ = tx.Query(ctx, `SELECT extension_id, instance_id, subject, weight, enabled, health_status FROM extension_instances ORDER BY extension_id, instance_id`)
		_, err = pgx.ForEachRow(rows, []any{&id, &in.InstanceID, &in.Subject, &in.Weight, &in.Enabled, &in.HealthStatus}, func() error {
			exts[index[id]].Instances = append(exts[index[id]].Instances, in)
			return nil
		})
		if err != nil {
			return fmt.Errorf("read extension_instances: %w", err)
		}
		snap, err = cache.New(rev, protocol.SourceDatabase, exts)
		return err
	})
	return snap, err
}

// waitStoredSnapshot waits until the snapshot in the stream is want (same revision and
// checksum).
func (b *testBundle) waitStoredSnapshot(t *testing.T, want *cache.Snapshot, within time.Duration) {
	t.Helper()
	eventually(t, within, fmt.Sprintf("stored snapshot at revision %d", want.Revision()), func() error {
		snap, _, err := b.reader.Snapshot(context.Background())
		if err != nil {
			return err
		}
		if snap.Revision() != want.Revision() || snap.Checksum() != want.Checksum() {
			return fmt.Errorf("stored snapshot: revision %d checksum %.12s; want %d %.12s",
				snap.Revision(), snap.Checksum(), want.Revision(), want.Checksum())
		}
		return nil
	})
}

// storedSnapshot reads the snapshot in the stream.
func (b *testBundle) storedSnapshot(t *testing.T) *cache.Snapshot {
	t.Helper()
	snap, _, err := b.reader.Snapshot(context.Background())
	if err != nil {
		t.Fatalf("read the stored snapshot: %v", err)
	}
	return snap
}

// checkHistory checks the delta stream against the database at want, from base (the
// first snapshot the syncer published: revisions committed before a syncer ever ran are
// in it, not in deltas): every revision base+1..want.Revision() stored exactly once, in
// revision order (stream sequences increase), each naming the one before as
// prev_revision; and applying them all to base verifies every delta's checksum and count
// and ends at want's content.
func (b *testBundle) checkHistory(t *testing.T, base, want *cache.Snapshot) {
	t.Helper()
	ctx := context.Background()
	first, last := base.Revision()+1, want.Revision()
	stream, err := b.js.Stream(ctx, b.names.DeltaStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(ctx, jetstream.WithSubjectFilter(b.names.DeltaSubjects()))
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != uint64(last-first+1) {
		t.Errorf("delta stream holds %d messages, want one per revision %d..%d: %d", info.State.Msgs, first, last, last-first+1)
	}
	for subject, n := range info.State.Subjects {
		rev, err := strconv.ParseInt(strings.TrimPrefix(subject, b.prefix+".delta."), 10, 64)
		if err != nil || rev < first || rev > last {
			t.Errorf("delta stream: unexpected subject %s (%d messages)", subject, n)
		} else if n != 1 {
			t.Errorf("delta stream: %s stored %d times, want once", subject, n)
		}
	}
	snap := base
	var prevSeq uint64
	for rev := first; rev <= last; rev++ {
		st, err := b.reader.Last(ctx, b.names.DeltaStream, b.names.DeltaSubject(rev))
		if errors.Is(err, protocol.ErrNotFound) {
			t.Fatalf("revision %d is not in the delta stream", rev)
		}
		if err != nil {
			t.Fatal(err)
		}
		d, err := protocol.DecodeDelta(st.Data)
		if err != nil {
			t.Fatalf("stored delta %d: %v", rev, err)
		}
		if d.Revision != rev || d.PrevRevision != rev-1 {
			t.Fatalf("stored delta on %s: revision %d prev %d, want %d prev %d", st.Subject, d.Revision, d.PrevRevision, rev, rev-1)
		}
		if st.Sequence <= prevSeq {
			t.Errorf("delta %d stored at sequence %d, after the delta of revision %d (sequence %d): out of order", rev, st.Sequence, rev-1, prevSeq)
		}
		prevSeq = st.Sequence
		if d.Resync {
			t.Fatalf("delta %d is a resync delta", rev)
		}
		next, _, err := snap.Apply(d.Revision, d.Source, d.Changes)
		if err != nil {
			t.Fatalf("apply stored delta %d: %v", rev, err)
		}
		if next.Checksum() != d.Checksum || next.Len() != d.Count {
			t.Fatalf("stored delta %d: applied, checksum %s count %d; the delta says %s %d", rev, next.Checksum(), next.Len(), d.Checksum, d.Count)
		}
		snap = next
	}
	if snap.Checksum() != want.Checksum() {
		t.Errorf("the stored deltas end at checksum %s, the database at revision %d has %s (differing: %v)",
			snap.Checksum(), last, want.Checksum(), snap.Diff(want))
	}
}
