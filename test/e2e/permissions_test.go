package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/beamline/registry-syncer/protocol"
	"github.com/beamline/registry-syncer/test/harness"
)

// TestLeastPrivilege runs a syncer, routers and a watcher with exactly the NATS
// permissions PROTOCOL.md §10 lists (protocol.Names.SyncerPermissions and
// RouterPermissions), and a forger allowed to publish on the live and heartbeat subjects:
// everything works, and what the forger sends is refused.
func TestLeastPrivilege(t *testing.T) {
	t.Parallel()
	const prefix = "e2e.perms"
	names, err := protocol.NewNames(prefix)
	if err != nil {
		t.Fatal(err)
	}
	user := func(name string, p protocol.Permissions) *server.User {
		u := &server.User{Username: name, Password: name + "-secret-pw"}
		if p.Publish != nil || p.Subscribe != nil {
			u.Permissions = &server.Permissions{
				Publish:   &server.SubjectPermission{Allow: p.Publish},
				Subscribe: &server.SubjectPermission{Allow: p.Subscribe},
			}
		}
		return u
	}
	syncerPerms, routerPerms := names.SyncerPermissions(), names.RouterPermissions()
	t.Logf("syncer: publish %v, subscribe %v", syncerPerms.Publish, syncerPerms.Subscribe)
	t.Logf("router: publish %v, subscribe %v", routerPerms.Publish, routerPerms.Subscribe)
	users := []*server.User{
		user("syncer", syncerPerms),
		user("router", routerPerms),
		user("forger", protocol.Permissions{Publish: []string{names.Live(), names.Heartbeat()}, Subscribe: []string{"nothing"}}),
		user("test", protocol.Permissions{}), // the test itself: everything
	}
	pg := harness.PG(t)
	recordCluster(pg)
	b := &testBundle{schema: pg.NewSchema(t), prefix: prefix, names: names}
	b.nats = harness.NewNATS(t, harness.NATSOptions{Configure: func(o *server.Options) { o.Users = users }})
	b.url = b.nats.URL()
	b.nc = b.nats.Connect(t, nats.UserInfo("test", "test-secret-pw"))
	if b.js, err = jetstream.New(b.nc); err != nil {
		t.Fatal(err)
	}
	b.reader = &protocol.Reader{NC: b.nc, Names: names}

	b.seedDefaults(t)
	s := b.startSyncer(t, "NATS_USER", "syncer", "NATS_PASSWORD", "syncer-secret-pw")
	s.waitReady(t, 30*time.Second)
	url := fmt.Sprintf("nats://router:router-secret-pw@127.0.0.1:%d", b.nats.Port)
	f := &fleet{}
	for range 2 {
		f.routers = append(f.routers, b.startRouter(t, url))
	}
	f.watch = &watcher{proc: startProc(t, fmt.Sprintf("watch-%d", b.seq.Add(1)), map[string]string{
		"EXTENSION_REGISTRY_NATS_URL":       b.nats.URL(),
		"EXTENSION_REGISTRY_NATS_USER":      "router",
		"EXTENSION_REGISTRY_NATS_PASSWORD":  "router-secret-pw",
		"EXTENSION_REGISTRY_SUBJECT_PREFIX": prefix,
		"EXTENSION_REGISTRY_LOG_FORMAT":     "json",
	}, "watch", "--json", "--timeout", "60s")}
	good := b.db(t)
	f.converge(t, good, time.Now(), 30*time.Second)

	// A change goes through (delta, snapshot, heartbeat), and the forger is refused.
	_, at := b.commit(t, `UPDATE extensions SET timeout_ms = 321 WHERE id = 'mask_pii'`)
	good = b.db(t)
	t.Logf("a revision under least privilege: %s", f.converge(t, good, at, convergeWithin))
	b.waitStoredSnapshot(t, good, 10*time.Second)

	forger, err := nats.Connect(b.nats.URL(), nats.UserInfo("forger", "forger-secret-pw"))
	if err != nil {
		t.Fatal(err)
	}
	defer forger.Close()
	if err := forger.Publish(names.Live(), []byte(`{"revision":9223372036854775807,"prev_revision":1}`)); err != nil {
		t.Fatal(err)
	}
	if err := forger.Flush(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the routers reject the forger's message", func() error {
		for _, r := range f.routers {
			if r.rejected.Load() == 0 {
				return fmt.Errorf("%s: no rejection", r.name)
			}
		}
		return nil
	})
	_, at = b.commit(t, `UPDATE extensions SET timeout_ms = 322 WHERE id = 'mask_pii'`)
	good = b.db(t)
	t.Logf("the next revision after the forger's message: %s", f.converge(t, good, at, convergeWithin))

	// A router restarting now bootstraps under the same permissions.
	late := b.startRouter(t, url)
	f.routers = append(f.routers, late)
	f.converge(t, good, time.Now(), 10*time.Second)

	// Nobody was refused anything they needed.
	violation := func(l string) bool { return strings.Contains(strings.ToLower(l), "permissions violation") }
	for _, p := range []*proc{s.proc, f.watch.proc} {
		if n := p.stderr.count(violation); n > 0 {
			t.Errorf("%s: %d permission violations:\n%s", p.name, n, p.stderr.tail(20))
		}
	}
	for _, r := range f.routers {
		if n := r.log.count(violation); n > 0 {
			t.Errorf("%s: %d permission violations", r.name, n)
		}
	}
}
