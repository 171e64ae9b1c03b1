package syncer_test

import (
	"context"
	"testing"
	"time"

	"github.com/beamline/registry-syncer/protocol"
	"github.com/beamline/registry-syncer/syncer"
	"github.com/beamline/registry-syncer/test/harness"
)

// TestDefaultSigningKey: with no key configured, the first syncer generates one and keeps
// it in the database; its public key is the stored key record, every message is signed by
// it, and the next syncer of the schema (a standby taking over) signs with the same key.
func TestDefaultSigningKey(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	r := b.start(t, nil)
	b.exec(t, `INSERT INTO extensions (id, type, subject, timeout_ms) VALUES ('a', 'pre', 'beamline.ext.pre.a.v1', 100)`)
	b.waitConverged(t, 10*time.Second)

	var seed, pub string
	if err := b.schema.Pool.QueryRow(ctx, `SELECT seed, public_key FROM registry_signing_key`).Scan(&seed, &pub); err != nil {
		t.Fatal(err)
	}
	trust, err := b.reader.Key(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if keys := trust.Keys(); len(keys) != 1 || keys[0] != pub {
		t.Fatalf("key record %v, database key %s", keys, pub)
	}
	// signed checks the newest stored delta and the manifest.
	signed := func(rev int64) {
		t.Helper()
		st, err := b.reader.Last(ctx, b.reader.Names.DeltaStream, b.reader.Names.DeltaSubjects())
		if err != nil {
			t.Fatalf("newest delta (revision %d converged): %v", rev, err)
		}
		if err := trust.Verify(protocol.KindDelta, st.Header, st.Data); err != nil {
			t.Fatalf("stored delta %s: %v", st.Subject, err)
		}
		tr := &protocol.Reader{NC: b.nc, Names: b.reader.Names, Trust: trust}
		if _, err := tr.Manifest(ctx); err != nil {
			t.Fatalf("manifest: %v", err)
		}
	}
	tr := &protocol.Reader{NC: b.nc, Names: b.reader.Names, Trust: trust}
	if _, _, err := tr.Snapshot(ctx); err != nil {
		t.Fatalf("the stored snapshot does not verify: %v", err)
	}
	r.stop(t)

	// The next syncer reads the same key.
	r = b.start(t, nil)
	b.exec(t, `UPDATE extensions SET timeout_ms = 200 WHERE id = 'a'`)
	got := b.waitConverged(t, 10*time.Second)
	signed(got.Revision())
	var rows int
	if err := b.schema.Pool.QueryRow(ctx, `SELECT count(*) FROM registry_signing_key`).Scan(&rows); err != nil || rows != 1 {
		t.Fatalf("%d keys: %v", rows, err)
	}
	r.stop(t)
}

// TestAutoSourceKeepsItsKey: with the auto source and the database down, the syncer
// signs the fixtures with a key of its own; once the database answers, that key is the
// one stored there, so routers that trusted it on first use keep following.
func TestAutoSourceKeepsItsKey(t *testing.T) {
	t.Parallel()
	b, pg := setupPrivate(t)
	ctx := context.Background()
	pg.Shutdown(harness.StopFast)
	r := b.start(t, func(c *syncer.Config) { c.Source = syncer.SourceAuto; c.DatabaseRetry = 200 * time.Millisecond })
	var fixturesKey string
	waitFor(t, 10*time.Second, "the fixtures' key record", func() (bool, error) {
		trust, err := b.reader.Key(ctx)
		if err != nil {
			return false, err
		}
		fixturesKey = trust.Keys()[0]
		return true, nil
	})
	if err := pg.Start(); err != nil {
		t.Fatal(err)
	}
	got := b.waitConverged(t, 20*time.Second)
	if got.Source() != syncer.SourceDatabase {
		t.Fatalf("source %s after the database came up", got.Source())
	}
	var pub string
	if err := b.schema.Pool.QueryRow(ctx, `SELECT public_key FROM registry_signing_key`).Scan(&pub); err != nil {
		t.Fatal(err)
	}
	trust, err := b.reader.Key(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if pub != fixturesKey || trust.Keys()[0] != fixturesKey {
		t.Fatalf("fixtures signed with %s; the database keeps %s, the key record says %s", fixturesKey, pub, trust.Keys()[0])
	}
	tr := &protocol.Reader{NC: b.nc, Names: b.reader.Names, Trust: trust}
	if _, _, err := tr.Snapshot(ctx); err != nil {
		t.Fatalf("the database's snapshot does not verify with the fixtures' key: %v", err)
	}
	r.stop(t)
}
