package e2e

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/beamline/registry-syncer/protocol"
	"github.com/beamline/registry-syncer/test/harness"
)

// TestCore runs the core of the registry against every real nats-server binary of the
// matrix (2.9 through the newest release), one subtest per version: routers and a watcher
// started before the first change (before any syncer or stream exists) bootstrap and
// follow; `watch --dump --once` prints the registry; a transaction touching an extension,
// a version and an instance is applied as one revision; a router cut off while revisions
// pass notices the gap and heals; a router joining while no syncer runs bootstraps from
// the streams; a restarted syncer catches up with what was committed meanwhile; the delta
// stream holds every revision once, in order.
func TestCore(t *testing.T) {
	t.Parallel()
	for _, bin := range harness.Servers(t) {
		t.Run(bin.Name(), func(t *testing.T) {
			t.Parallel()
			testCore(t, bin)
		})
	}
}

func testCore(t *testing.T, bin harness.ServerBinary) {
	srv := harness.NewNATSProc(t, bin, harness.NATSProcOptions{})
	b := setupOn(t, "e2e.core", srv.URL())
	began := time.Now()

	// Before the first change: nothing is published yet, not even the streams.
	f := b.startFleet(t, 2, true)
	px := startProxy(t, srv.Addr())
	cut := b.startRouter(t, px.url())
	f.routers = append(f.routers, cut)

	s1 := b.startSyncer(t)
	s1.waitReady(t, 30*time.Second)
	base := b.storedSnapshot(t)
	b.seedDefaults(t)
	c := f.converge(t, b.db(t), began, 30*time.Second)
	t.Logf("nats-server %s: routers and watcher started before the first change serve revision %d (%s)", bin.Version, b.db(t).Revision(), c)

	dump := runCLI(t, map[string]string{
		"EXTENSION_REGISTRY_NATS_URL":       b.url,
		"EXTENSION_REGISTRY_SUBJECT_PREFIX": b.prefix,
	}, "watch", "--dump", "--once")
	if dump.code != 0 || !strings.Contains(dump.stdout, "normalize_text") {
		t.Fatalf("watch --dump --once: exit %d\n%s%s", dump.code, dump.stdout, dump.stderr)
	}

	// One transaction over three tables: one revision, installed at once.
	rev, at := b.commit(t,
		`INSERT INTO extensions (id, type, subject, timeout_ms, retry) VALUES ('core_check', 'validator', 'beamline.ext.validate.core_check.v1', 400, 1)`,
		`INSERT INTO extension_versions (id, version, subject, timeout_ms, routing_rules)
			VALUES ('core_check', 'v2', 'beamline.ext.validate.core_check.v2', 450, '{"tenant_id": "t1"}')`,
		`INSERT INTO extension_instances (extension_id, instance_id, subject, weight, health_status)
			VALUES ('pii_guard', 'a', 'beamline.ext.validate.pii_guard.v1.a', 100, 'degraded')`,
		`UPDATE extensions SET timeout_ms = 150 WHERE id = 'normalize_text'`,
	)
	want := b.db(t)
	c = f.converge(t, want, at, convergeWithin)
	t.Logf("multi-table revision %d served everywhere %s after the commit", rev, c.max.Round(time.Millisecond))
	for _, r := range f.routers {
		installs := r.installsSince(0)
		for i, in := range installs {
			if in.rev != rev {
				continue
			}
			if i == 0 || installs[i-1].rev != rev-1 {
				t.Errorf("%s: revision %d installed after %v, want right after %d", r.name, rev, installs[max(0, i-1)].rev, rev-1)
			}
			if strings.Join(in.changed, ",") != "core_check,normalize_text,pii_guard" {
				t.Errorf("%s: revision %d changed %v, want all three aggregates at once", r.name, rev, in.changed)
			}
		}
		e := lookup(t, r, "core_check")
		if v := e.SelectVersion(map[string]string{"tenant_id": "t1"}); len(e.Versions) != 1 || v.Version != "v2" {
			t.Errorf("%s: core_check versions %+v", r.name, e.Versions)
		}
		if in := instance(t, r, "pii_guard", "a"); in.Weight != 100 || in.HealthStatus != "degraded" {
			t.Errorf("%s: pii_guard instance a %+v", r.name, in)
		}
	}

	// A gap: one router misses 20 revisions, then notices (heartbeat ahead) and heals.
	before := b.db(t)
	resyncs := cut.metric(t, "registry_client_resyncs_total")
	px.setCut(true)
	eventually(t, 10*time.Second, "the cut router disconnected", func() error {
		if st := cut.nc.Status(); st == nats.CONNECTED {
			return fmt.Errorf("%s: %s", cut.name, st)
		}
		return nil
	})
	for i := range 20 {
		b.commit(t, fmt.Sprintf(`UPDATE extensions SET metadata = '{"n": %d}' WHERE id = 'mask_pii'`, i))
	}
	missed := b.db(t)
	others := &fleet{routers: f.routers[:len(f.routers)-1], watch: f.watch}
	others.converge(t, missed, time.Now(), 10*time.Second)
	if err := cut.serves(before); err != nil {
		t.Fatalf("the cut router moved while cut off: %v", err)
	}
	restored := time.Now()
	px.setCut(false)
	c = (&fleet{routers: []*router{cut}}).converge(t, missed, restored, 10*time.Second)
	if got := cut.metric(t, "registry_client_resyncs_total"); got <= resyncs {
		t.Errorf("resyncs_total %v after the gap, was %v: the gap was not detected", got, resyncs)
	}
	t.Logf("gap of %d revisions healed %s after the router could reconnect", missed.Revision()-before.Revision(), c.max.Round(time.Millisecond))

	// No syncer: a late joiner bootstraps from the streams; a change committed meanwhile
	// waits for the next syncer.
	s1.stop(t)
	published := b.db(t)
	_, at = b.commit(t, `INSERT INTO extensions (id, type, subject, timeout_ms) VALUES ('late_one', 'post', 'beamline.ext.post.late_one.v1', 50)`)
	start := time.Now()
	late := b.startRouter(t, b.url)
	eventually(t, 10*time.Second, "the late joiner bootstrapped with no syncer running", func() error { return late.serves(published) })
	t.Logf("late joiner with no syncer: revision %d served %s after its start", published.Revision(), time.Since(start).Round(time.Millisecond))

	// A restarted syncer catches up.
	s2 := b.startSyncer(t)
	s2.waitReady(t, 30*time.Second)
	f.routers = append(f.routers, late)
	c = f.converge(t, b.db(t), at, 30*time.Second)
	t.Logf("restarted syncer: the revision committed while none ran is served %s after its commit", c.max.Round(time.Millisecond))
	_, at = b.commit(t, `UPDATE extensions SET enabled = false WHERE id = 'late_one'`)
	want = b.db(t)
	f.converge(t, want, at, convergeWithin)
	b.waitStoredSnapshot(t, want, 10*time.Second)
	b.checkHistory(t, base, want)
	for _, r := range f.routers {
		if n := r.rejected.Load(); n != 0 {
			t.Errorf("%s rejected %d payloads: %v", r.name, n, r.errors())
		}
	}
	if n := f.watch.rejections(); n != 0 {
		t.Errorf("the watcher rejected %d payloads", n)
	}
	t.Logf("nats-server %s: core done in %s", bin.Version, time.Since(began).Round(time.Millisecond))
}

// TestWatchRefusesServerWithoutJetStream: `syncer watch` against a real server started
// without JetStream (every binary of the matrix) exits non-zero at once, saying that
// JetStream is missing, instead of retrying until its timeout.
func TestWatchRefusesServerWithoutJetStream(t *testing.T) {
	t.Parallel()
	for _, bin := range harness.Servers(t) {
		t.Run(bin.Name(), func(t *testing.T) {
			t.Parallel()
			srv := harness.NewNATSProc(t, bin, harness.NATSProcOptions{NoJetStream: true})
			for _, args := range [][]string{{"watch", "--json", "--timeout", "60s"}, {"watch", "--dump", "--once", "--timeout", "60s"}} {
				start := time.Now()
				r := runCLI(t, map[string]string{"EXTENSION_REGISTRY_NATS_URL": srv.URL()}, args...)
				took := time.Since(start)
				if r.code == 0 || !strings.Contains(r.stderr, "JetStream not enabled") || !strings.Contains(r.stderr, bin.Version) {
					t.Fatalf("syncer %s: exit %d after %s\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, took, r.stdout, r.stderr)
				}
				if took > 10*time.Second {
					t.Errorf("syncer %s took %s to refuse", strings.Join(args, " "), took)
				}
				t.Logf("syncer %s: exit %d after %s: %s", strings.Join(args, " "), r.code, took.Round(time.Millisecond), strings.TrimSpace(r.stderr))
			}
		})
	}
}

// TestRestartOverBrokenSnapshot: a syncer before this release, on nats-server 2.9 to 2.11,
// left a manifest whose chunks its own purge had deleted. A syncer started over that
// stream must not wait forever for the snapshot to become readable: it publishes a full
// sync, and routers bootstrap.
func TestRestartOverBrokenSnapshot(t *testing.T) {
	t.Parallel()
	bin := harness.Servers(t)[1] // 2.10: an affected release
	srv := harness.NewNATSProc(t, bin, harness.NATSProcOptions{})
	b := setupOn(t, "e2e.broken", srv.URL())
	b.seedDefaults(t)
	s1 := b.startSyncer(t)
	s1.waitReady(t, 30*time.Second)
	b.waitStoredSnapshot(t, b.db(t), 10*time.Second)
	s1.stop(t)

	// What the old purge did: every chunk gone, the manifest left.
	st, err := b.js.Stream(t.Context(), b.names.SnapshotStream)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Purge(t.Context(), jetstream.WithPurgeSubject(b.names.ChunkSubjects())); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.reader.Snapshot(t.Context()); !errors.Is(err, protocol.ErrSnapshotMoved) {
		t.Fatalf("stored snapshot after the purge: %v, want it unreadable", err)
	}
	_, at := b.commit(t, `UPDATE extensions SET retry = 2 WHERE id = 'mask_pii'`)

	s2 := b.startSyncer(t)
	s2.waitReady(t, 30*time.Second)
	f := b.startFleet(t, 2, true)
	c := f.converge(t, b.db(t), at, 30*time.Second)
	t.Logf("over a broken snapshot: a new syncer and fresh routers serve revision %d %s after the commit", b.db(t).Revision(), c.max.Round(time.Millisecond))
}
