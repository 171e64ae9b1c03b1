package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/beamline/registry-syncer/syncer"
	"github.com/beamline/registry-syncer/test/harness"
)

// logWatcher is the daemon's stderr: it passes JSON log lines to t.Log, keeps them, and
// reports the admin server's address once it listens.
type logWatcher struct {
	t    *testing.T
	name string
	w    *io.PipeWriter
	addr chan string
	done chan struct{}

	mu    sync.Mutex
	lines []string
}

func newLogWatcher(t *testing.T, name string) *logWatcher {
	r, w := io.Pipe()
	lw := &logWatcher{t: t, name: name, w: w, addr: make(chan string, 1), done: make(chan struct{})}
	go func() {
		defer close(lw.done)
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			lw.mu.Lock()
			lw.lines = append(lw.lines, line)
			lw.mu.Unlock()
			var rec struct {
				Msg  string `json:"msg"`
				Addr string `json:"addr"`
			}
			if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "admin: listening" {
				lw.addr <- rec.Addr
			}
		}
		_, _ = io.Copy(io.Discard, r)
	}()
	return lw
}

func (lw *logWatcher) Write(p []byte) (int, error) { return lw.w.Write(p) }

// close ends the stream (after run returned) and logs what it held.
func (lw *logWatcher) close() string {
	_ = lw.w.Close()
	<-lw.done
	lw.mu.Lock()
	defer lw.mu.Unlock()
	all := strings.Join(lw.lines, "\n")
	lw.t.Logf("%s log:\n%s", lw.name, all)
	return all
}

// daemonProc is one `syncer run` in a goroutine.
type daemonProc struct {
	cancel context.CancelFunc
	done   chan struct{} // closed when run returned
	code   int
	log    *logWatcher
	base   string // http://addr
}

func startDaemon(t *testing.T, name string, env envMap) *daemonProc {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	d := &daemonProc{cancel: cancel, done: make(chan struct{}), log: newLogWatcher(t, name)}
	go func() {
		defer close(d.done)
		d.code = run(ctx, []string{"run"}, env.lookup, io.Discard, d.log)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-d.done:
		case <-time.After(30 * time.Second):
			t.Errorf("%s did not stop within 30s", name)
		}
	})
	select {
	case addr := <-d.log.addr:
		d.base = "http://" + addr
	case <-d.done:
		d.log.close()
		t.Fatalf("%s exited with %d before serving HTTP", name, d.code)
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: no HTTP server within 30s", name)
	}
	return d
}

// stop cancels the daemon (SIGTERM) and returns its exit code and log.
func (d *daemonProc) stop(t *testing.T) (int, string) {
	t.Helper()
	d.cancel()
	select {
	case <-d.done:
		return d.code, d.log.close()
	case <-time.After(30 * time.Second):
		t.Fatal("the daemon did not stop within 30s")
		return 0, ""
	}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// waitStatus polls /readyz (state that becomes true eventually) until ok accepts the
// status it reports.
func waitStatus(t *testing.T, base string, what string, ok func(code int, st syncer.Status) bool) {
	t.Helper()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(30 * time.Second)
	for {
		code, body := get(t, base+"/readyz")
		var st syncer.Status
		if err := json.Unmarshal([]byte(body), &st); err != nil {
			t.Fatalf("/readyz body %q: %v", body, err)
		}
		if ok(code, st) {
			return
		}
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("%s/readyz: not %s within 30s: %d %s", base, what, code, body)
		}
	}
}

func waitReady(t *testing.T, base string) {
	t.Helper()
	waitStatus(t, base, "ready", func(code int, st syncer.Status) bool { return code == http.StatusOK && st.Ready })
}

func TestRunDaemon(t *testing.T) {
	t.Parallel()
	schema := harness.PG(t).NewSchema(t)
	nats := harness.NewNATS(t, harness.NATSOptions{})
	const (
		dbPassword = "db-password-never-logged"
		token      = "admin-token-never-logged"
	)
	u, err := url.Parse(schema.URL)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(u.User.Username(), dbPassword) // trust authentication ignores it
	env := envMap{
		"EXTENSION_REGISTRY_DATABASE_URL":       u.String(),
		"EXTENSION_REGISTRY_NATS_URL":           nats.URL(),
		"EXTENSION_REGISTRY_HTTP_ADDR":          "127.0.0.1:0",
		"EXTENSION_REGISTRY_ADMIN_TOKEN":        token,
		"EXTENSION_REGISTRY_SUBJECT_PREFIX":     "test.cli",
		"EXTENSION_REGISTRY_HEARTBEAT_INTERVAL": "100ms",
		"EXTENSION_REGISTRY_SNAPSHOT_INTERVAL":  "20ms",
		"EXTENSION_REGISTRY_LEADER_RETRY":       "50ms",
		"EXTENSION_REGISTRY_LOG_FORMAT":         "json",
		"EXTENSION_REGISTRY_LOG_LEVEL":          "debug",
	}

	a := startDaemon(t, "leader", env)
	waitReady(t, a.base)

	req, _ := http.NewRequest(http.MethodPost, a.base+"/admin/sync", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"ready": true`) {
		t.Fatalf("POST /admin/sync: %d %s", resp.StatusCode, body)
	}

	code, metrics := get(t, a.base+"/metrics")
	for _, want := range []string{"registry_syncer_leader 1", "registry_syncer_nats_up 1", "go_goroutines", "process_cpu_seconds_total", "registry_syncer_build_info{"} {
		if code != http.StatusOK || !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}

	// A second syncer waits on standby, and takes over when the first shuts down: the
	// first released the leadership on its way out.
	// A healthy standby is ready (it can do its role: take over), so a rolling update of
	// two replicas proceeds; the role tells it from the leader.
	b := startDaemon(t, "standby", env)
	waitStatus(t, b.base, "a ready standby", func(code int, st syncer.Status) bool {
		return code == http.StatusOK && st.Ready && st.Role == syncer.RoleStandby && !st.Leader
	})
	if _, metrics := get(t, b.base+"/metrics"); !strings.Contains(metrics, "registry_syncer_leader 0") {
		t.Error("standby /metrics lacks registry_syncer_leader 0")
	}
	aAddr := strings.TrimPrefix(a.base, "http://")
	code, log := a.stop(t)
	if code != exitOK {
		t.Fatalf("leader exit %d, want 0", code)
	}
	if _, err := net.Dial("tcp", aAddr); err == nil {
		t.Error("the leader's HTTP server still accepts connections after exit")
	}
	// Ready at once: the snapshot the first one wrote is current.
	waitReady(t, b.base)
	// It publishes what changes from now on.
	if _, err := schema.Pool.Exec(context.Background(), `INSERT INTO extensions (id, type, subject, timeout_ms)
		VALUES ('after_takeover', 'pre', 'beamline.ext.pre.after_takeover.v1', 100)`); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, b.base, "ready with the new extension", func(code int, st syncer.Status) bool {
		return code == http.StatusOK && st.Ready && st.Extensions == 1 && st.SnapshotRevision == st.Revision
	})
	codeB, logB := b.stop(t)
	if codeB != exitOK {
		t.Fatalf("standby exit %d, want 0", codeB)
	}

	for _, l := range []string{log, logB} {
		for _, secret := range []string{dbPassword, token} {
			if strings.Contains(l, secret) {
				t.Errorf("log shows secret %q", secret)
			}
		}
		// The shutdown order: the syncer stops, then NATS drains, then HTTP stops.
		last := -1
		for _, msg := range []string{"syncer: stopped", "nats: drained and closed", "admin: stopped", "syncer: shutdown complete"} {
			i := strings.Index(l, `"msg":"`+msg+`"`)
			if i < 0 || i < last {
				t.Errorf("shutdown message %q missing or out of order", msg)
			}
			last = i
		}
	}
}

// TestRunNATSUnreachable: run fails at once, naming the servers without credentials.
func TestRunNATSUnreachable(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	// NATS down at start is an outage, not a configuration error: run keeps retrying
	// until it is stopped. Bounded: stop it after 3 s and expect a clean exit.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	r := runCLI(t, ctx, envMap{
		"EXTENSION_REGISTRY_NATS_URL":  "nats://user:nats-secret-pw@" + addr,
		"EXTENSION_REGISTRY_HTTP_ADDR": "",
		"EXTENSION_REGISTRY_SOURCE":    "fixtures",
	}, "run")
	if r.code != 0 || !strings.Contains(r.stderr, "nats: not connected yet") || !strings.Contains(r.stderr, "nats://user:xxxxx@"+addr) {
		t.Fatalf("exit %d, want 0 after logging the redacted server as unreachable; stderr:\n%s", r.code, r.stderr)
	}
	if strings.Contains(r.stderr, "nats-secret-pw") {
		t.Error("the NATS password was printed")
	}
}

// TestRunPortInUse: run fails at once when its HTTP port is taken.
func TestRunPortInUse(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	nats := harness.NewNATS(t, harness.NATSOptions{})
	r := runCLI(t, context.Background(), envMap{
		"EXTENSION_REGISTRY_NATS_URL":  nats.URL(),
		"EXTENSION_REGISTRY_HTTP_ADDR": l.Addr().String(),
	}, "run")
	if r.code != exitError || !strings.Contains(r.stderr, "syncer: admin: listen on "+l.Addr().String()) {
		t.Fatalf("exit %d, want 1 naming the address", r.code)
	}
}
