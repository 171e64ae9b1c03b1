package admin_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/beamline/registry-syncer/admin"
	"github.com/beamline/registry-syncer/changelog"
	"github.com/beamline/registry-syncer/protocol"
	"github.com/beamline/registry-syncer/syncer"
)

// TestStatusPage: GET / renders the status, the fleet and the recent revisions grouped
// by revision, newest first, every value escaped, under a policy that loads nothing.
func TestStatusPage(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	b := setup(t, func(c *admin.Config) {
		c.Routers = func() (*protocol.FleetStatus, error) {
			return &protocol.FleetStatus{PublishedRevision: 7, Routers: []protocol.RouterStatus{
				{RouterID: `r<1>`, Revision: 6, Lag: 1, State: "ready", StateSince: at, LastRejection: &protocol.Rejection{At: at, Reason: `bad "sig" <x>`}},
			}}, nil
		}
		c.History = func(_ context.Context, limit int) ([]changelog.Entry, error) {
			if limit <= 0 {
				return nil, errors.New("no limit")
			}
			return []changelog.Entry{
				{Revision: 6, CommittedAt: at, ChangedBy: "carol", ExtensionID: "a", Entity: "extension", Action: "create"},
				{Revision: 7, CommittedAt: at, ChangedBy: "<img src=x>", ExtensionID: "b", Entity: "version", Key: "v2", Action: "update", Fields: []string{"subject"}},
				{Revision: 7, CommittedAt: at, ChangedBy: "dave", ExtensionID: "c", Entity: "extension", Action: "delete"},
			}, nil
		}
	})
	b.status.Store(&syncer.Status{Role: "leader", Leader: true, Revision: 7, DatabaseRevision: 7, Checksum: "abc", Ready: false,
		Reason: "leader: <withholding>", Withheld: []syncer.Withheld{{ID: "w<1>", Reason: "subject & more", Since: 5}}})
	resp, err := http.Get(b.base + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") {
		t.Errorf("Content-Security-Policy %q", csp)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/html; charset=utf-8" {
		t.Errorf("Content-Type %q", ct)
	}
	code, body := do(t, http.MethodGet, b.base+"/", "")
	if code != http.StatusOK {
		t.Fatalf("GET /: %d", code)
	}
	for _, want := range []string{
		`<code>r&lt;1&gt;</code>`, `bad &#34;sig&#34; &lt;x&gt;`, `leader: &lt;withholding&gt;`,
		`<code>w&lt;1&gt;</code>`, `subject &amp; more`, `<span class="author">&lt;img src=x&gt;</span>, <span class="author">dave</span>`,
		`update version <code class="changed-id">b</code> v2 (subject)<br>delete extension <code class="changed-id">c</code>`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %s", want)
		}
	}
	if i, j := strings.Index(body, `data-revision="7"`), strings.Index(body, `data-revision="6"`); i < 0 || j < 0 || i > j {
		t.Errorf("revisions not newest first")
	}
	if strings.Contains(body, "<img") || strings.Contains(body, "<script") {
		t.Errorf("unescaped markup in the page")
	}
	if code, _ := do(t, http.MethodGet, b.base+"/nope", ""); code != http.StatusNotFound {
		t.Errorf("GET /nope: %d, want 404", code)
	}
}

// TestStatusPageStandby: a standby has no fleet view and says where it is.
func TestStatusPageStandby(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *admin.Config) {
		c.Routers = func() (*protocol.FleetStatus, error) { return nil, syncer.ErrNotLeader }
	})
	b.status.Store(&syncer.Status{Role: "standby", Ready: true})
	code, body := do(t, http.MethodGet, b.base+"/", "")
	if code != http.StatusOK || !strings.Contains(body, `id="routers-unavailable"`) || !strings.Contains(body, "the leading syncer keeps the fleet view") {
		t.Errorf("standby page: %d\n%s", code, body)
	}
}
