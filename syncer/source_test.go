package syncer_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/beamline/registry-syncer/cache"
	"github.com/beamline/registry-syncer/protocol"
	"github.com/beamline/registry-syncer/syncer"
	"github.com/beamline/registry-syncer/test/harness"
)

// announced records, in arrival order on one subscription, the revision and source of
// every heartbeat and live delta.
type announced struct {
	mu   sync.Mutex
	seen []protocol.Heartbeat // Revision and Source of each message
}

func (b *testBundle) recordAnnounced(t *testing.T) *announced {
	t.Helper()
	a := &announced{}
	names := b.names(t)
	// One subscription for both subjects keeps their relative order.
	sub, err := b.nc.Subscribe(b.prefix+".*", func(m *nats.Msg) {
		var hb protocol.Heartbeat
		switch m.Subject {
		case names.Heartbeat():
			if err := json.Unmarshal(m.Data, &hb); err != nil {
				return
			}
		case names.Live():
			d, err := protocol.DeltaFromMsg(m)
			if err != nil {
				return
			}
			hb = protocol.Heartbeat{Revision: d.Revision, Source: d.Source}
		default:
			return
		}
		a.mu.Lock()
		a.seen = append(a.seen, hb)
		a.mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return a
}

func (a *announced) has(f func(protocol.Heartbeat) bool) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.ContainsFunc(a.seen, f)
}

// checkMonotonic verifies that the announced revisions never went backwards.
func (a *announced) checkMonotonic(t *testing.T) []protocol.Heartbeat {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	for i := 1; i < len(a.seen); i++ {
		if a.seen[i].Revision < a.seen[i-1].Revision {
			t.Errorf("announced revision went backwards: %d (%s) after %d (%s)", a.seen[i].Revision, a.seen[i].Source, a.seen[i-1].Revision, a.seen[i-1].Source)
		}
	}
	return slices.Clone(a.seen)
}

// TestAutoSourceSwitchesToTheDatabase starts an auto-source syncer while the database is
// down: it publishes the fixtures first; once the database is up it publishes the
// database's (different) content as one delta of whole aggregates above the fixtures
// revision, and follows the database from then on. Revisions never go backwards.
func TestAutoSourceSwitchesToTheDatabase(t *testing.T) {
	t.Parallel()
	b, pg := setupPrivate(t)
	// The database's content differs from the fixtures: normalize_text changed, mask_pii
	// missing, db_only added. One transaction: database revision 1, the same number as the
	// fixtures revision, with other content.
	b.exec(t,
		`INSERT INTO extensions (id, type, subject, timeout_ms, metadata) VALUES
			('normalize_text', 'pre', 'beamline.ext.pre.normalize_text.v1', 300, '{"version": "v1"}'),
			('pii_guard', 'validator', 'beamline.ext.validate.pii_guard.v1', 200, '{"version": "v1"}'),
			('test_provider', 'provider', 'beamline.provider.test_provider.v1', 5000, '{}'),
			('db_only', 'post', 'beamline.ext.post.db_only.v1', 50, '{}')`)
	pg.Shutdown(harness.StopFast)

	seen := b.recordAnnounced(t)
	r := b.start(t, func(c *syncer.Config) { c.Source = syncer.SourceAuto; c.DatabaseRetry = 200 * time.Millisecond })

	fx, err := syncer.FixtureSnapshot("", 1)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the fixtures published while the database is down", func() (bool, error) {
		snap, err := b.follow(context.Background())
		if err != nil {
			return false, err
		}
		return snap.Source() == syncer.SourceFixtures && snap.Checksum() == fx.Checksum() && snap.Len() == 4, nil
	})
	waitFor(t, 5*time.Second, "a fixtures heartbeat", func() (bool, error) {
		return seen.has(func(h protocol.Heartbeat) bool { return h.Source == syncer.SourceFixtures }), nil
	})
	if st := r.s.Status(); st.Source != syncer.SourceFixtures || !st.Ready {
		t.Errorf("status while serving fixtures: %+v", st)
	}
	fixturesRev := r.s.Status().Revision

	if err := pg.Start(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	got := b.waitConverged(t, 20*time.Second)
	t.Logf("switched from fixtures (revision %d) to the database (revision %d) %s after it came up", fixturesRev, got.Revision(), time.Since(start).Round(time.Millisecond))
	if got.Source() != syncer.SourceDatabase {
		t.Errorf("published source %q after the switch", got.Source())
	}
	switchRev := got.Revision()
	if switchRev <= fixturesRev {
		t.Fatalf("switch revision %d not above the fixtures revision %d", switchRev, fixturesRev)
	}
	deltas := b.checkExactlyOnce(t, switchRev, switchRev, fixturesRev)
	d := deltas[switchRev]
	have := changeList(d.Changes)
	slices.Sort(have)
	// pii_guard and test_provider differ too (metadata, config, retry).
	want := []string{"delete aggregate mask_pii", "put aggregate db_only", "put aggregate normalize_text", "put aggregate pii_guard", "put aggregate test_provider"}
	if !slices.Equal(have, want) {
		t.Errorf("switch delta %d: changes %v, want %v", switchRev, have, want)
	}
	if d.Source != syncer.SourceDatabase {
		t.Errorf("switch delta source %q", d.Source)
	}

	// From then on the database is followed.
	next := b.exec(t, `UPDATE extensions SET enabled = false WHERE id = 'db_only'`)
	got = b.waitConverged(t, 10*time.Second)
	if got.Revision() != next {
		t.Fatalf("published revision %d, committed %d", got.Revision(), next)
	}
	b.checkExactlyOnce(t, switchRev, next, fixturesRev)
	waitFor(t, 5*time.Second, "a database heartbeat at the last revision", func() (bool, error) {
		return seen.has(func(h protocol.Heartbeat) bool { return h.Source == syncer.SourceDatabase && h.Revision == next }), nil
	})
	all := seen.checkMonotonic(t)
	t.Logf("%d heartbeats and live deltas, revisions from %d to %d, never backwards", len(all), all[0].Revision, all[len(all)-1].Revision)
	if st := r.s.Status(); st.Source != syncer.SourceDatabase || st.Revision != next {
		t.Errorf("status after the switch: %+v", st)
	}
	r.stop(t)
}

// TestFixturesSource publishes the built-in fixtures with no database: the four default
// extensions as a snapshot (revision 1, source fixtures), no delta. A restart with the same
// fixtures publishes nothing new; a restart with changed fixture files publishes the
// difference as one delta of whole aggregates on top.
func TestFixturesSource(t *testing.T) {
	t.Parallel()
	b := setupNATSOnly(t)
	seen := b.recordAnnounced(t)
	fixtures := func(dir string) func(*syncer.Config) {
		return func(c *syncer.Config) { c.Source, c.DatabaseURL, c.FixturesDir = syncer.SourceFixtures, "", dir }
	}
	r := b.start(t, fixtures(""))
	var snap *cache.Snapshot
	waitFor(t, 10*time.Second, "the fixture snapshot", func() (bool, error) {
		var err error
		snap, _, err = b.reader.Snapshot(context.Background())
		return err == nil, err
	})
	want, err := syncer.FixtureSnapshot("", 1)
	if err != nil {
		t.Fatal(err)
	}
	ids := []string{}
	for _, e := range snap.All() {
		ids = append(ids, e.ID)
	}
	if snap.Revision() != 1 || snap.Source() != syncer.SourceFixtures || snap.Checksum() != want.Checksum() ||
		!slices.Equal(ids, []string{"mask_pii", "normalize_text", "pii_guard", "test_provider"}) {
		t.Fatalf("fixture snapshot: revision %d source %s ids %v checksum %s (want %s)", snap.Revision(), snap.Source(), ids, snap.Checksum(), want.Checksum())
	}
	if e, _ := snap.Get("normalize_text"); e.TimeoutMS != 100 || e.Type != "pre" || e.Subject != "beamline.ext.pre.normalize_text.v1" {
		t.Errorf("normalize_text: %+v", e)
	}
	if e, _ := snap.Get("test_provider"); e.TimeoutMS != 5000 || e.Retry != 1 {
		t.Errorf("test_provider: %+v", e)
	}
	waitFor(t, 5*time.Second, "ready", func() (bool, error) { return r.s.Status().Ready, nil })
	if st := r.s.Status(); st.Source != syncer.SourceFixtures || st.Revision != 1 || st.Extensions != 4 {
		t.Errorf("status: %+v", st)
	}
	waitFor(t, 5*time.Second, "a fixtures heartbeat", func() (bool, error) {
		return seen.has(func(h protocol.Heartbeat) bool { return h.Source == syncer.SourceFixtures && h.Revision == 1 }), nil
	})
	// A forced sync reloads the same fixtures: nothing new.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.s.ForceSync(ctx); err != nil {
		t.Fatal(err)
	}
	r.stop(t)
	b.checkNoDeltas(t)

	// Same fixtures again: nothing new.
	r = b.start(t, fixtures(""))
	waitFor(t, 10*time.Second, "ready", func() (bool, error) { return r.s.Status().Ready, nil })
	r.stop(t)
	b.checkNoDeltas(t)

	// Changed fixtures: one delta on top of revision 1.
	dir := t.TempDir()
	for _, e := range snap.All() {
		if e.ID == "mask_pii" {
			continue
		}
		doc := map[string]any{"id": e.ID, "type": e.Type, "subject": e.Subject, "timeout_ms": e.TimeoutMS, "retry": e.Retry, "enabled": e.Enabled}
		if e.ID == "pii_guard" {
			doc["timeout_ms"] = 250
		}
		writeJSON(t, filepath.Join(dir, e.ID+".json"), doc)
	}
	r = b.start(t, fixtures(dir))
	var got *cache.Snapshot
	waitFor(t, 10*time.Second, "the changed fixtures published", func() (bool, error) {
		var err error
		got, err = b.follow(context.Background())
		return err == nil && got.Revision() == 2, err
	})
	deltas := b.checkExactlyOnce(t, 2, 2, 1)
	have := changeList(deltas[2].Changes)
	// normalize_text and test_provider changed too: the files above have no metadata.
	if !slices.Equal(have, []string{"delete aggregate mask_pii", "put aggregate normalize_text", "put aggregate pii_guard", "put aggregate test_provider"}) {
		t.Errorf("fixtures delta: %v", have)
	}
	wantDir, err := syncer.FixtureSnapshot(dir, 2)
	if err != nil {
		t.Fatal(err)
	}
	if got.Checksum() != wantDir.Checksum() || got.Source() != syncer.SourceFixtures {
		t.Errorf("published %s (%s), fixture dir is %s", got.Checksum(), got.Source(), wantDir.Checksum())
	}
	seen.checkMonotonic(t)
	r.stop(t)
}

// setupNATSOnly is a bundle without a database.
func setupNATSOnly(t *testing.T) *testBundle {
	t.Helper()
	b := &testBundle{nats: harness.NewNATS(t, harness.NATSOptions{}), prefix: "test.registry"}
	b.nc = b.nats.Connect(t)
	b.reader = &protocol.Reader{NC: b.nc, Names: b.names(t)}
	return b
}

func (b *testBundle) checkNoDeltas(t *testing.T) {
	t.Helper()
	info, err := b.deltaStream(t).Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 0 {
		t.Errorf("the delta stream holds %d messages, want none", info.State.Msgs)
	}
}

func writeJSON(t *testing.T, path string, v any) {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}
