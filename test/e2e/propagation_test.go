package e2e

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/beamline/registry-syncer/cache"
)

// convergeWithin bounds how long a committed change may take to reach every router.
const convergeWithin = 5 * time.Second

// change is one committed SQL change and what a router must show after it.
type change struct {
	name  string
	stmts []string
	check func(t *testing.T, r *router) // on every router, once it serves the revision
}

// lookup returns the enabled extension id from r, failing the test if it is not served.
func lookup(t *testing.T, r *router, id string) *cache.Extension {
	t.Helper()
	e, ok := r.c.Lookup(id)
	if !ok {
		t.Fatalf("%s: Lookup(%q) found nothing at revision %d", r.name, id, r.c.Revision())
	}
	return e
}

func instance(t *testing.T, r *router, id, instanceID string) cache.Instance {
	t.Helper()
	for _, in := range lookup(t, r, id).Instances {
		if in.InstanceID == instanceID {
			return in
		}
	}
	t.Fatalf("%s: %s has no instance %s", r.name, id, instanceID)
	return cache.Instance{}
}

// TestPropagation commits every kind of registry change, one transaction at a time, and
// checks that every router (client package, each on its own NATS connection) and a
// `syncer watch --json` process reach the database's content, with the same revision and
// checksum, within convergeWithin; the multi-table transaction arrives as one revision.
// It logs the convergence time of each change (commit to install, max over the routers
// and the watcher).
func TestPropagation(t *testing.T) {
	t.Parallel()
	b := setup(t, "e2e.propagation")
	b.seedDefaults(t)
	s := b.startSyncer(t)
	s.waitReady(t, 30*time.Second)
	base := b.storedSnapshot(t)
	if n, err := b.nats.ConsumerCount(); err != nil || n != 0 {
		t.Fatalf("JetStream consumers after the syncer started: %d (%v), want 0", n, err)
	}

	f := b.startFleet(t, 5, true)
	start := time.Now()
	boot := f.converge(t, b.db(t), start, 30*time.Second)
	t.Logf("bootstrap of 5 routers and the watcher: %s", boot)

	const id = "geo_enrich"
	changes := []change{
		{name: "insert extension", stmts: []string{
			`INSERT INTO extensions (id, type, subject, timeout_ms) VALUES ('geo_enrich', 'pre', 'beamline.ext.pre.geo_enrich.v1', 120)`,
		}, check: func(t *testing.T, r *router) {
			if e := lookup(t, r, id); e.TimeoutMS != 120 || e.Type != "pre" || !e.Enabled {
				t.Errorf("%s: %s = %+v", r.name, id, e)
			}
		}},
		{name: "update extension", stmts: []string{
			`UPDATE extensions SET timeout_ms = 300, retry = 2, config = '{"lang": "en", "max": 0.5}' WHERE id = 'geo_enrich'`,
		}, check: func(t *testing.T, r *router) {
			if e := lookup(t, r, id); e.TimeoutMS != 300 || e.Retry != 2 || string(e.Config) != `{"lang":"en","max":0.5}` {
				t.Errorf("%s: %s timeout %d retry %d config %s", r.name, id, e.TimeoutMS, e.Retry, e.Config)
			}
		}},
		{name: "insert instances", stmts: []string{
			`INSERT INTO extension_instances (extension_id, instance_id, subject, weight, health_status) VALUES
				('geo_enrich', 'i1', 'beamline.ext.pre.geo_enrich.v1.i1', 50, 'healthy'),
				('geo_enrich', 'i2', 'beamline.ext.pre.geo_enrich.v1.i2', 50, 'healthy')`,
		}, check: func(t *testing.T, r *router) {
			if n := len(lookup(t, r, id).Instances); n != 2 {
				t.Errorf("%s: %d instances, want 2", r.name, n)
			}
		}},
		{name: "instance weight", stmts: []string{
			`UPDATE extension_instances SET weight = 80 WHERE extension_id = 'geo_enrich' AND instance_id = 'i1'`,
		}, check: func(t *testing.T, r *router) {
			if in := instance(t, r, id, "i1"); in.Weight != 80 {
				t.Errorf("%s: i1 weight %d, want 80", r.name, in.Weight)
			}
		}},
		{name: "instance health", stmts: []string{
			`UPDATE extension_instances SET health_status = 'unhealthy', last_health_check = now() WHERE extension_id = 'geo_enrich' AND instance_id = 'i2'`,
		}, check: func(t *testing.T, r *router) {
			if in := instance(t, r, id, "i2"); in.HealthStatus != "unhealthy" {
				t.Errorf("%s: i2 health %q, want unhealthy", r.name, in.HealthStatus)
			}
		}},
		{name: "disable", stmts: []string{
			`UPDATE extensions SET enabled = false WHERE id = 'geo_enrich'`,
		}, check: func(t *testing.T, r *router) {
			if _, ok := r.c.Lookup(id); ok {
				t.Errorf("%s: Lookup returns the disabled %s", r.name, id)
			}
			if e, ok := r.c.Snapshot().Get(id); !ok || e.Enabled {
				t.Errorf("%s: Snapshot().Get(%q) = %v, %v; want it present and disabled", r.name, id, e, ok)
			}
			for _, e := range r.c.ByType("pre") {
				if e.ID == id {
					t.Errorf("%s: ByType(pre) returns the disabled %s", r.name, id)
				}
			}
		}},
		{name: "enable", stmts: []string{
			`UPDATE extensions SET enabled = true WHERE id = 'geo_enrich'`,
		}, check: func(t *testing.T, r *router) {
			if !slices.ContainsFunc(r.c.ByType("pre"), func(e *cache.Extension) bool { return e.ID == id }) {
				t.Errorf("%s: ByType(pre) lacks the enabled %s", r.name, id)
			}
		}},
		{name: "version with tenant routing", stmts: []string{
			`INSERT INTO extension_versions (id, version, subject, timeout_ms, routing_rules)
				VALUES ('geo_enrich', 'v2', 'beamline.ext.pre.geo_enrich.v2', 200, '{"tenant_id": ["t1", "t2"]}')`,
		}, check: func(t *testing.T, r *router) {
			e := lookup(t, r, id)
			if v := e.SelectVersion(map[string]string{"tenant_id": "t1"}); v.Version != "v2" || v.Subject != "beamline.ext.pre.geo_enrich.v2" || v.TimeoutMS != 200 {
				t.Errorf("%s: tenant t1 gets %+v, want v2", r.name, v)
			}
			if v := e.SelectVersion(map[string]string{"tenant_id": "t3"}); v.Version != "v1" {
				t.Errorf("%s: tenant t3 gets %s, want the v1 default", r.name, v.Version)
			}
		}},
		{name: "version bump", stmts: []string{
			`UPDATE extensions SET version = 'v2', subject = 'beamline.ext.pre.geo_enrich.v2' WHERE id = 'geo_enrich'`,
		}, check: func(t *testing.T, r *router) {
			if e := lookup(t, r, id); e.Version != "v2" || e.Subject != "beamline.ext.pre.geo_enrich.v2" {
				t.Errorf("%s: %s at %s %s, want v2", r.name, id, e.Version, e.Subject)
			}
			// The previous definition is kept as version v1 (without routing rules).
			var kept []string
			for _, v := range lookup(t, r, id).Versions {
				kept = append(kept, v.Version)
			}
			if strings.Join(kept, ",") != "v1,v2" {
				t.Errorf("%s: %s versions %v, want [v1 v2]", r.name, id, kept)
			}
			if v := lookup(t, r, id).SelectVersion(map[string]string{"tenant_id": "t9"}); v.Version != "v2" {
				t.Errorf("%s: tenant t9 gets %s, want the v2 default", r.name, v.Version)
			}
		}},
		{name: "multi-table transaction", stmts: []string{
			`INSERT INTO extensions (id, type, subject, timeout_ms, retry) VALUES ('fraud_check', 'validator', 'beamline.ext.validate.fraud_check.v1', 400, 1)`,
			`INSERT INTO extension_versions (id, version, subject, timeout_ms, routing_rules)
				VALUES ('fraud_check', 'v2', 'beamline.ext.validate.fraud_check.v2', 450, '{"environment": "prod", "tenant_id": "t1"}')`,
			`INSERT INTO extension_instances (extension_id, instance_id, subject, weight, health_status)
				VALUES ('fraud_check', 'a', 'beamline.ext.validate.fraud_check.v1.a', 100, 'degraded')`,
			`UPDATE extension_instances SET health_status = 'healthy' WHERE extension_id = 'geo_enrich' AND instance_id = 'i2'`,
			`DELETE FROM extension_instances WHERE extension_id = 'geo_enrich' AND instance_id = 'i1'`,
			`UPDATE extensions SET timeout_ms = 150 WHERE id = 'normalize_text'`,
		}, check: func(t *testing.T, r *router) {
			fc := lookup(t, r, "fraud_check")
			if len(fc.Versions) != 1 || len(fc.Instances) != 1 {
				t.Errorf("%s: fraud_check has %d versions and %d instances, want 1 and 1", r.name, len(fc.Versions), len(fc.Instances))
			}
			if v := fc.SelectVersion(map[string]string{"environment": "prod", "tenant_id": "t1"}); v.Version != "v2" {
				t.Errorf("%s: fraud_check for prod/t1 gets %s, want v2", r.name, v.Version)
			}
			if ins := lookup(t, r, id).Instances; len(ins) != 1 || ins[0].InstanceID != "i2" || ins[0].HealthStatus != "healthy" {
				t.Errorf("%s: %s instances %+v, want only a healthy i2", r.name, id, ins)
			}
			if e := lookup(t, r, "normalize_text"); e.TimeoutMS != 150 {
				t.Errorf("%s: normalize_text timeout %d, want 150", r.name, e.TimeoutMS)
			}
		}},
		{name: "delete version", stmts: []string{
			`DELETE FROM extension_versions WHERE id = 'geo_enrich' AND version = 'v2'`,
		}, check: func(t *testing.T, r *router) {
			if vs := lookup(t, r, id).Versions; len(vs) != 1 || vs[0].Version != "v1" {
				t.Errorf("%s: %s versions %+v, want only v1", r.name, id, vs)
			}
		}},
		{name: "delete extension", stmts: []string{
			`DELETE FROM extensions WHERE id = 'geo_enrich'`,
		}, check: func(t *testing.T, r *router) {
			if _, ok := r.c.Snapshot().Get(id); ok {
				t.Errorf("%s: %s still served after its deletion", r.name, id)
			}
		}},
	}

	type result struct {
		name string
		rev  int64
		c    convergence
	}
	var results []result
	prev := b.db(t).Revision()
	for _, ch := range changes {
		marks := make([]int, len(f.routers))
		for i, r := range f.routers {
			marks[i] = r.installCount()
		}
		rev, at := b.commit(t, ch.stmts...)
		if rev != prev+1 {
			t.Fatalf("%s: committed revision %d, want %d (one revision per transaction)", ch.name, rev, prev+1)
		}
		prev = rev
		want := b.db(t)
		if want.Revision() != rev {
			t.Fatalf("%s: the database is at revision %d after committing %d", ch.name, want.Revision(), rev)
		}
		c := f.converge(t, want, at, convergeWithin)
		results = append(results, result{ch.name, rev, c})
		t.Logf("%-28s revision %3d: %s", ch.name, rev, c)
		for i, r := range f.routers {
			ch.check(t, r)
			// Atomic revisions: the transaction is one install, never seen half-applied.
			ins := r.installsSince(marks[i])
			if len(ins) != 1 || ins[0].rev != rev {
				t.Errorf("%s: %s: installs %v since the previous revision, want exactly revision %d", r.name, ch.name, revs(ins), rev)
			}
		}
		if ch.name == "multi-table transaction" {
			for _, r := range f.routers {
				in, _ := r.installedAt(want)
				for _, id := range []string{"fraud_check", "geo_enrich", "normalize_text"} {
					if !slices.Contains(in.changed, id) {
						t.Errorf("%s: the install of revision %d reports changed %v, lacking %s", r.name, rev, in.changed, id)
					}
				}
			}
			evs := f.watch.all(t)
			if last := evs[len(evs)-1]; strings.Join(last.Changed, ",") != "fraud_check,geo_enrich,normalize_text" {
				t.Errorf("watch printed changed %v for revision %d, want [fraud_check geo_enrich normalize_text]", last.Changed, rev)
			}
		}
	}

	// The watcher printed one line per revision, in order, after its bootstrap line.
	evs := f.watch.all(t)
	for i := 1; i < len(evs); i++ {
		if evs[i].Revision != evs[i-1].Revision+1 {
			t.Errorf("watch printed revision %d after %d", evs[i].Revision, evs[i-1].Revision)
		}
	}
	for _, r := range f.routers {
		if n := r.rejected.Load(); n != 0 {
			t.Errorf("%s rejected %d payloads of a healthy syncer: %v", r.name, n, r.errors())
		}
	}
	if n := f.watch.rejections(); n != 0 {
		t.Errorf("the watcher rejected %d payloads of a healthy syncer", n)
	}
	if n, err := b.nats.ConsumerCount(); err != nil || n != 0 {
		t.Errorf("JetStream consumers with 5 routers and a watcher: %d (%v), want 0", n, err)
	}

	var sb strings.Builder
	var worst time.Duration
	for _, r := range results {
		fmt.Fprintf(&sb, "\n  %-28s rev %3d  %8s  (%s)", r.name, r.rev, r.c.max.Round(10*time.Microsecond), r.c.slowest)
		worst = max(worst, r.c.max)
	}
	t.Logf("convergence, commit to install, max over 5 routers and the watcher:%s\n  worst: %s", sb.String(), worst.Round(10*time.Microsecond))
	b.checkHistory(t, base, b.db(t))
}

func revs(ins []install) []int64 {
	out := make([]int64, len(ins))
	for i, in := range ins {
		out[i] = in.rev
	}
	return out
}

// TestClientsCreateNoConsumers checks that routers follow the registry without a
// JetStream consumer each: the server's consumer count is 0 before and after 20 routers
// and a watcher bootstrap and follow a change.
func TestClientsCreateNoConsumers(t *testing.T) {
	t.Parallel()
	b := setup(t, "e2e.consumers")
	b.seedDefaults(t)
	s := b.startSyncer(t)
	s.waitReady(t, 30*time.Second)
	before, err := b.nats.ConsumerCount()
	if err != nil {
		t.Fatal(err)
	}
	f := b.startFleet(t, 20, true)
	f.converge(t, b.db(t), time.Now(), 30*time.Second)
	_, at := b.commit(t, `UPDATE extensions SET retry = 2 WHERE id = 'test_provider'`)
	f.converge(t, b.db(t), at, convergeWithin)
	after, err := b.nats.ConsumerCount()
	if err != nil {
		t.Fatal(err)
	}
	if before != 0 || after != 0 {
		t.Errorf("JetStream consumers: %d before the routers, %d with 20 routers and a watcher; want 0 and 0", before, after)
	}
}
