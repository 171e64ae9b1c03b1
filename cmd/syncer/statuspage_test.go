package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/beamline/registry-syncer/client"
	"github.com/beamline/registry-syncer/syncer"
	"github.com/beamline/registry-syncer/test/harness"
)

// chromium finds Debian's chromium (make deps installs it); a test that needs it fails
// without it, naming make deps.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("chromium not found: the status page is tested in a real headless browser; run `make deps` (it installs Debian's chromium and chromium-driver)")
	return ""
}

// dumpDOM loads url in headless chromium and returns the DOM it built, serialized.
func dumpDOM(t *testing.T, url string) string {
	t.Helper()
	bin := chromium(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--headless", "--disable-gpu", "--no-sandbox", "--disable-dev-shm-usage",
		"--no-first-run", "--disable-extensions", "--user-data-dir="+t.TempDir(), "--dump-dom", url)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium --dump-dom %s: %v\n%s", url, err, stderr.String())
	}
	return string(out)
}

// byID returns the inner HTML of the element with id, as chromium serialized it (the
// nesting of its own tag name is followed to find its end).
func byID(t *testing.T, dom, id string) string {
	t.Helper()
	m := regexp.MustCompile(`<(\w+)[^>]*\bid="` + regexp.QuoteMeta(id) + `"[^>]*>`).FindStringSubmatchIndex(dom)
	if m == nil {
		t.Fatalf("no element with id %q in the page", id)
	}
	tag := dom[m[2]:m[3]]
	open := regexp.MustCompile(`<` + tag + `\b`)
	closing := "</" + tag + ">"
	depth, i := 1, m[1]
	for depth > 0 {
		c := strings.Index(dom[i:], closing)
		if c < 0 {
			t.Fatalf("element %q is not closed", id)
		}
		if o := open.FindStringIndex(dom[i : i+c]); o != nil {
			depth++
			i += o[1]
			continue
		}
		depth--
		if depth == 0 {
			return strings.TrimSpace(dom[m[1] : i+c])
		}
		i += c + len(closing)
	}
	return ""
}

// text is inner HTML without its tags.
func text(html string) string { return regexp.MustCompile(`<[^>]+>`).ReplaceAllString(html, "") }

// TestStatusPageInBrowser loads GET / of a real running syncer (private PostgreSQL and
// NATS) with a router reporting, in headless chromium, and checks what it shows: health,
// database and published revision, the router, recent revisions with author and changed
// ids, the withheld extension; values are escaped and the page runs no script.
func TestStatusPageInBrowser(t *testing.T) {
	t.Parallel()
	chromium(t) // fail first, and clearly, without a browser
	schema := harness.PG(t).NewSchema(t)
	schema.UndoRules(t) // so that a row routers refuse can be written, and be withheld
	ns := harness.NewNATS(t, harness.NATSOptions{})
	const prefix = "test.page"
	d := startDaemon(t, "syncer", daemonEnv(schema, ns.URL(), prefix, nil))
	waitReady(t, d.base)

	ctx := context.Background()
	const author = `alice <script>document.title="pwned"</script> & "bob"`
	tx, err := schema.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		fmt.Sprintf(`SET LOCAL registry.changed_by = '%s'`, strings.ReplaceAll(author, "'", "''")),
		`INSERT INTO extensions (id, type, subject, timeout_ms) VALUES ('page_ext', 'pre', 'beamline.ext.pre.page_ext.v1', 100)`,
		`INSERT INTO extensions (id, type, subject, timeout_ms) VALUES ('page_ext_two', 'validator', 'beamline.ext.validate.page_ext_two.v1', 200)`,
	} {
		if _, err := tx.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := schema.Pool.Exec(ctx, "INSERT INTO extensions (id, type, subject) VALUES ('bad_ext', 'pre', 'beamline.ext.pre.bad\u00a0ext.v1')"); err != nil {
		t.Fatal(err)
	}

	// One router, reporting.
	nc := ns.Connect(t)
	router, err := client.New(nc, client.Config{Prefix: prefix, RouterID: "router-page-1", ReportInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := router.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(router.Stop)

	var st syncer.Status
	waitStatus(t, d.base, "publishing with bad_ext withheld", func(_ int, s syncer.Status) bool {
		st = s
		return s.Leader && s.Extensions == 2 && len(s.Withheld) == 1 && s.Revision == s.DatabaseRevision
	})
	eventually(t, 30*time.Second, "router-page-1 reporting the published revision", func() bool {
		code, body := get(t, d.base+"/admin/routers")
		var fs struct {
			Routers []struct {
				RouterID string `json:"router_id"`
				Revision int64  `json:"revision"`
			} `json:"routers"`
		}
		if code != http.StatusOK || json.Unmarshal([]byte(body), &fs) != nil {
			return false
		}
		for _, r := range fs.Routers {
			if r.RouterID == "router-page-1" && r.Revision == st.Revision {
				return true
			}
		}
		return false
	})

	dom := dumpDOM(t, d.base+"/")
	t.Logf("DOM (%d bytes):\n%s", len(dom), dom)
	if os.Getenv("STATUS_PAGE_DUMP") != "" {
		_ = os.WriteFile(os.Getenv("STATUS_PAGE_DUMP"), []byte(dom), 0o644)
	}

	// Health: withholding makes the leader not ready, and says why.
	if got := text(byID(t, dom, "ready")); !strings.HasPrefix(got, "not ready") || !strings.Contains(got, "withholding 1 invalid extension(s)") || !strings.Contains(got, "bad_ext") {
		t.Errorf("ready: %q, want not ready, withholding bad_ext", got)
	}
	for id, want := range map[string]string{
		"role":               "leader",
		"database-up":        "up",
		"nats-connected":     "connected",
		"database-revision":  fmt.Sprint(st.DatabaseRevision),
		"published-revision": fmt.Sprint(st.Revision),
		"extensions":         "2",
		"checksum":           st.Checksum,
	} {
		if got := text(byID(t, dom, id)); !strings.HasPrefix(got, want) {
			t.Errorf("#%s: %q, want %q", id, got, want)
		}
	}
	// The withheld extension.
	if got := byID(t, dom, "withheld"); !strings.Contains(got, "bad_ext") || !strings.Contains(got, "subject") {
		t.Errorf("withheld table: %q, want bad_ext and its reason", got)
	}
	// The router and its revision.
	routers := byID(t, dom, "routers")
	row := regexp.MustCompile(`(?s)<tr data-router="router-page-1">(.*?)</tr>`).FindStringSubmatch(routers)
	if row == nil {
		t.Fatalf("routers table has no router-page-1: %s", routers)
	}
	if cells := regexp.MustCompile(`<td>(.*?)</td>`).FindAllStringSubmatch(row[1], -1); len(cells) < 4 ||
		cells[1][1] != fmt.Sprint(st.Revision) || cells[2][1] != "0" || cells[3][1] != "ready" {
		t.Errorf("router-page-1 row %q: want revision %d, 0 behind, state ready", row[1], st.Revision)
	}
	// Recent revisions: the author (escaped: shown as text, never run) and the changed ids.
	revs := byID(t, dom, "revisions")
	var authorRow string
	for _, m := range regexp.MustCompile(`(?s)<tr data-revision="\d+">.*?</tr>`).FindAllString(revs, -1) {
		if strings.Contains(m, `<code class="changed-id">page_ext</code>`) {
			authorRow = m
		}
	}
	if authorRow == "" {
		t.Fatalf("no revision lists page_ext: %s", revs)
	}
	if !strings.Contains(authorRow, `<code class="changed-id">page_ext_two</code>`) {
		t.Errorf("the revision of page_ext does not list page_ext_two (one transaction): %s", authorRow)
	}
	if want := `<span class="author">alice &lt;script&gt;document.title="pwned"&lt;/script&gt; &amp; "bob"</span>`; !strings.Contains(authorRow, want) {
		t.Errorf("author not shown as escaped text: %s", authorRow)
	}
	if !strings.Contains(revs, `<code class="changed-id">bad_ext</code>`) {
		t.Errorf("the revision that wrote bad_ext is missing")
	}
	if strings.Contains(strings.ToLower(dom), "<script") || strings.Contains(dom, "pwned</title>") {
		t.Errorf("the page holds a script element or it ran")
	}
}
