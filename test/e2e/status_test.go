package e2e

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/beamline/registry-syncer/protocol"
)

// TestStatusAndWait: routers report what they applied; the real `syncer status` and
// `syncer wait` answer from the leading syncer over NATS (no database access), and a
// router that stops reporting is shown gone.
func TestStatusAndWait(t *testing.T) {
	t.Parallel()
	b := setup(t, "e2e.status")
	b.seedDefaults(t)
	s := b.startSyncer(t)
	s.waitReady(t, 30*time.Second)
	routers := []*router{b.startRouter(t, b.nats.URL()), b.startRouter(t, b.nats.URL()), b.startRouter(t, b.nats.URL())}
	rev, at := b.commit(t, `UPDATE extensions SET retry = 1 WHERE id = 'pii_guard'`)
	vars := b.vars()

	res := runCLI(t, vars, "wait", "--current", "--all", "--timeout", "20s")
	if res.code != 0 {
		t.Fatalf("wait --current --all: exit %d\n%s\n%s", res.code, res.stdout, res.stderr)
	}
	t.Logf("wait --current --all returned %s after the commit: %s", time.Since(at).Round(time.Millisecond), strings.TrimSpace(res.stdout))
	for _, r := range routers {
		if r.c.Revision() < rev {
			t.Errorf("wait returned while a router is at %d < %d", r.c.Revision(), rev)
		}
	}

	res = runCLI(t, vars, "status", "--json")
	if res.code != 0 {
		t.Fatalf("status --json: exit %d\n%s", res.code, res.stderr)
	}
	var st protocol.FleetStatus
	if err := json.Unmarshal([]byte(res.stdout), &st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, res.stdout)
	}
	if st.DatabaseRevision != rev || st.PublishedRevision != rev || len(st.Routers) != 3 {
		t.Fatalf("status: database %d published %d, %d routers; want %d, %d, 3", st.DatabaseRevision, st.PublishedRevision, len(st.Routers), rev, rev)
	}
	for _, r := range st.Routers {
		if r.Revision != rev || r.State != protocol.RouterReady || r.Lag != 0 {
			t.Errorf("router %+v", r)
		}
	}
	resp, err := http.Get("http://" + s.addr + "/admin/routers")
	if err != nil {
		t.Fatal(err)
	}
	var viaHTTP protocol.FleetStatus
	err = json.NewDecoder(resp.Body).Decode(&viaHTTP)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || len(viaHTTP.Routers) != 3 {
		t.Errorf("GET /admin/routers: %d %+v %v", resp.StatusCode, viaHTTP, err)
	}
	res = runCLI(t, vars, "status")
	if res.code != 0 || !strings.Contains(res.stdout, "ROUTER") || strings.Count(res.stdout, "ready") != 3 {
		t.Errorf("status: exit %d\n%s\n%s", res.code, res.stdout, res.stderr)
	}

	// A revision nobody has: exit 1 naming the laggards.
	res = runCLI(t, vars, "wait", "--revision", "999999", "--routers", "2", "--timeout", "1s")
	if res.code != 1 || !strings.Contains(res.stderr, "behind:") || !strings.Contains(res.stderr, "at "+itoa(rev)) {
		t.Errorf("wait for a future revision: exit %d\n%s", res.code, res.stderr)
	}
	res = runCLI(t, vars, "wait", "--current")
	if res.code != 0 {
		t.Errorf("wait --current (all by default): exit %d\n%s", res.code, res.stderr)
	}
	// Usage errors.
	if res := runCLI(t, vars, "wait", "--revision", "3", "--current"); res.code != 2 {
		t.Errorf("wait with both --revision and --current: exit %d", res.code)
	}
}

func itoa(n int64) string {
	data, _ := json.Marshal(n)
	return string(data)
}
