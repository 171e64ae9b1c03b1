package syncer_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/beamline/registry-syncer/cache"
	"github.com/beamline/registry-syncer/protocol"
	"github.com/beamline/registry-syncer/publisher"
	"github.com/beamline/registry-syncer/syncer"
	"github.com/beamline/registry-syncer/test/harness"
)

type testBundle struct {
	schema *harness.Schema
	nats   *harness.NATS
	nc     *nats.Conn
	reader *protocol.Reader
	prefix string
	// syncerNATS, when set, is the NATS URL syncers started by start connect to (a proxy).
	syncerNATS string
	// pubMod, when set, changes the publisher configuration of the syncers start starts.
	pubMod func(*publisher.Config)
}

func setup(t *testing.T) *testBundle {
	t.Helper()
	return setupOn(t, harness.PG(t))
}

// setupOn makes a bundle with a fresh schema in pg and a NATS server of its own.
func setupOn(t *testing.T, pg *harness.Postgres) *testBundle {
	t.Helper()
	b := &testBundle{schema: pg.NewSchema(t), nats: harness.NewNATS(t, harness.NATSOptions{}), prefix: "test.registry"}
	b.nc = b.nats.Connect(t)
	names, err := protocol.NewNames(b.prefix)
	if err != nil {
		t.Fatal(err)
	}
	b.reader = &protocol.Reader{NC: b.nc, Names: names}
	return b
}

type running struct {
	s       *syncer.Syncer
	metrics *syncer.Metrics
	reg     *prometheus.Registry
	cancel  context.CancelFunc
	done    chan struct{} // closed when Run returned
	err     error
}

// stop cancels the syncer and waits for Run to return.
func (r *running) stop(t *testing.T) {
	t.Helper()
	r.cancel()
	select {
	case <-r.done:
		if r.err != nil {
			t.Errorf("syncer Run: %v", r.err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("syncer did not stop within 30s")
	}
}

func (b *testBundle) start(t *testing.T, mod func(*syncer.Config)) *running {
	t.Helper()
	cfg := syncer.Config{HeartbeatInterval: 100 * time.Millisecond, SnapshotInterval: 50 * time.Millisecond,
		LeaderRetry: 100 * time.Millisecond}
	if b.schema != nil {
		cfg.DatabaseURL = b.schema.URL
	}
	if mod != nil {
		mod(&cfg)
	}
	nc := b.nats.Connect(t, nats.Name("syncer"))
	if b.syncerNATS != "" {
		var err error
		if nc, err = nats.Connect(b.syncerNATS, nats.Name("syncer"), nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond)); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
	}
	reg := prometheus.NewRegistry()
	m := syncer.NewMetrics(reg)
	pcfg := publisher.Config{Prefix: b.prefix}
	if b.pubMod != nil {
		b.pubMod(&pcfg)
	}
	s, err := syncer.New(cfg, nc, pcfg, slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo})), m)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{s: s, metrics: m, reg: reg, cancel: cancel, done: make(chan struct{})}
	go func() { r.err = s.Run(ctx); close(r.done) }()
	t.Cleanup(func() {
		cancel()
		<-r.done
	})
	return r
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// exec runs SQL in one transaction and returns the revision it committed (0 when none).
func (b *testBundle) exec(t *testing.T, stmts ...string) int64 {
	t.Helper()
	ctx := context.Background()
	var xid string
	err := pgx.BeginFunc(ctx, b.schema.Pool, func(tx pgx.Tx) error {
		for _, s := range stmts {
			if _, err := tx.Exec(ctx, s); err != nil {
				return fmt.Errorf("%s: %w", s, err)
			}
		}
		return tx.QueryRow(ctx, `SELECT pg_current_xact_id()::text`).Scan(&xid)
	})
	if err != nil {
		t.Fatal(err)
	}
	var rev int64
	err = b.schema.Pool.QueryRow(ctx, `SELECT coalesce((SELECT revision FROM registry_revisions WHERE xid = $1::xid8), 0)`, xid).Scan(&rev)
	if err != nil {
		t.Fatal(err)
	}
	return rev
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, within time.Duration, what string, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(within)
	var lastErr error
	for {
		ok, err := cond()
		if ok {
			return
		}
		lastErr = err
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s (last error: %v)", within, what, lastErr)
		}
		time.Sleep(10 * time.Millisecond) // poll interval, not a wait for an effect
	}
}

// stored returns every delta in the stream from revision 1 to last, in order.
func (b *testBundle) storedDeltas(t *testing.T, upTo int64) map[int64]*protocol.Delta {
	t.Helper()
	out := map[int64]*protocol.Delta{}
	for r := int64(1); r <= upTo; r++ {
		d, err := b.reader.Delta(context.Background(), r)
		if errors.Is(err, protocol.ErrNotFound) {
			continue
		}
		if err != nil {
			t.Fatalf("read delta %d: %v", r, err)
		}
		out[r] = d
	}
	return out
}

// dbSnapshot reads the registry the way the syncer does, for comparisons.
func (b *testBundle) dbSnapshot(t *testing.T) *cache.Snapshot {
	t.Helper()
	snap, err := syncer.ReadDatabase(context.Background(), b.schema.Pool)
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

// waitConverged waits until the stored snapshot plus stored deltas (what a new router
// would get) equal the database content at the database's current revision.
func (b *testBundle) waitConverged(t *testing.T, within time.Duration) *cache.Snapshot {
	t.Helper()
	var got *cache.Snapshot
	waitFor(t, within, "published state equal to the database", func() (bool, error) {
		db, err := syncer.ReadDatabase(context.Background(), b.schema.Pool)
		if err != nil {
			return false, err // the database may be restarting: retry
		}
		snap, err := b.follow(context.Background())
		if err != nil {
			return false, err
		}
		got = snap
		if snap.Revision() != db.Revision() || snap.Checksum() != db.Checksum() {
			return false, fmt.Errorf("published revision %d checksum %s, database revision %d checksum %s (diff %v)",
				snap.Revision(), snap.Checksum(), db.Revision(), db.Checksum(), snap.Diff(db))
		}
		return true, nil
	})
	return got
}

// follow bootstraps like a router: the stored snapshot, then stored deltas along prev links.
func (b *testBundle) follow(ctx context.Context) (*cache.Snapshot, error) {
	snap, _, err := b.reader.Snapshot(ctx)
	if err != nil {
		return nil, err
	}
	for {
		d, err := b.reader.Delta(ctx, snap.Revision()+1)
		if errors.Is(err, protocol.ErrNotFound) {
			return snap, nil
		}
		if err != nil {
			return nil, err
		}
		if d.PrevRevision != snap.Revision() {
			return nil, fmt.Errorf("delta %d has prev %d, have %d", d.Revision, d.PrevRevision, snap.Revision())
		}
		if d.Resync {
			return nil, fmt.Errorf("resync delta %d newer than the snapshot", d.Revision)
		}
		next, _, err := snap.Apply(d.Revision, d.Source, d.Changes)
		if err != nil {
			return nil, err
		}
		if next.Checksum() != d.Checksum {
			return nil, fmt.Errorf("delta %d: checksum after apply %s, delta says %s", d.Revision, next.Checksum(), d.Checksum)
		}
		snap = next
	}
}
