package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/beamline/registry-syncer/syncer"
	"github.com/beamline/registry-syncer/test/harness"
)

// TestConfigSubjectPrefixLimits: a prefix that cannot work is refused at start, naming
// the variable and the limit.
func TestConfigSubjectPrefixLimits(t *testing.T) {
	t.Parallel()
	const key = "EXTENSION_REGISTRY_SUBJECT_PREFIX"
	for _, c := range []struct {
		prefix string
		want   string // "" accepted
	}{
		{strings.Repeat("a", 122), ""},
		{strings.Repeat("B", 122), ""},
		{"beamline-registry", ""},
		{strings.Repeat("a", 123), key + ": must be at most 122 characters, so that its stream names fit JetStream's limit of 255 (got 123 characters)"},
		{strings.Repeat("a.", 150) + "a", key + ": must be at most 122 characters"},
		{"régistre", key + ": must be dot-separated tokens of ASCII letters"},
		{"a..b", key + ": must be dot-separated tokens"},
		{"a.>", key + ": must be dot-separated tokens"},
		{"a b", key + ": must be dot-separated tokens"},
	} {
		_, err := loadConfig(envMap{key: c.prefix}.lookup)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%.30q refused: %v", c.prefix, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%.30q: got %v, want %q", c.prefix, err, c.want)
		}
	}
}

// TestFixturesImportFIFO: `fixtures import` of a directory holding a named pipe called
// *.json exits at once naming the file (it used to block in open for ever, deaf to
// SIGTERM), and a cancelled context (SIGTERM) stops an import.
func TestFixturesImportFIFO(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "a.json"), []byte(`{"id": "a", "type": "pre", "subject": "beamline.ext.pre.a.v1"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(dir, "pipe.json"), 0o644); err != nil {
		t.Fatal(err)
	}
	env := schemaEnv(t, newSchema(t))
	done := make(chan result, 1)
	go func() { done <- runCLI(t, context.Background(), env, "fixtures", "import", dir) }()
	select {
	case r := <-done:
		if r.code != exitError || !strings.Contains(r.stderr, filepath.Join(dir, "pipe.json")+": it is a named pipe (FIFO)") {
			t.Fatalf("exit %d, want 1 naming pipe.json as a named pipe", r.code)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("fixtures import blocked on a named pipe")
	}

	if err := os.Remove(filepath.Join(dir, "pipe.json")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if r := runCLI(t, ctx, env, "fixtures", "import", dir); r.code == exitOK || !strings.Contains(r.stderr, "context canceled") {
		t.Fatalf("fixtures import with a cancelled context: exit %d", r.code)
	}
}

// TestRunCollidingPrefixes: two syncers whose prefixes earlier versions mapped to the
// same streams (beamline.registry and beamline-registry) run on one NATS server; both
// become ready, and the first keeps publishing after the second started.
func TestRunCollidingPrefixes(t *testing.T) {
	t.Parallel()
	nats := harness.NewNATS(t, harness.NATSOptions{})
	first := harness.PG(t).NewSchema(t)
	second := harness.PG(t).NewSchema(t)
	a := startDaemon(t, "beamline.registry", daemonEnv(first, nats.URL(), "beamline.registry", nil))
	waitReady(t, a.base)
	b := startDaemon(t, "beamline-registry", daemonEnv(second, nats.URL(), "beamline-registry", nil))
	waitReady(t, b.base)
	insertExtension(t, first, "after_second")
	waitStatus(t, a.base, "publishing after the second syncer started", func(code int, st syncer.Status) bool {
		return code == http.StatusOK && st.Ready && st.Extensions == 1 && st.SnapshotRevision == st.Revision
	})
	insertExtension(t, second, "in_second")
	waitStatus(t, b.base, "the second publishing", func(code int, st syncer.Status) bool {
		return code == http.StatusOK && st.Ready && st.Extensions == 1 && st.SnapshotRevision == st.Revision
	})
	for _, d := range []*daemonProc{a, b} {
		if code, _ := d.stop(t); code != exitOK {
			t.Fatalf("exit %d", code)
		}
	}
}

// TestRunMultibyteSchema: a schema whose name fits 63 characters but not 63 bytes (with
// .registry_revision) migrates with `syncer migrate`, takes writes, and the syncer hears
// them by NOTIFY: the change is published long before the periodic reconcile.
func TestRunMultibyteSchema(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	pg := harness.PG(t)
	name := fmt.Sprintf("régistre_%s_%d", strings.Repeat("é", 20), schemaSeq.Add(1))
	if len(name+".registry_revision") <= 63 || len(name) > 63 {
		t.Fatalf("schema %q: want a name of at most 63 bytes whose channel would be longer", name)
	}
	if err := pg.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pg.Exec(context.Background(), "DROP SCHEMA "+pgx.Identifier{name}.Sanitize()+" CASCADE") })
	url := pg.URL("postgres", pgx.Identifier{name}.Sanitize())
	nats := harness.NewNATS(t, harness.NATSOptions{})
	env := envMap{
		"EXTENSION_REGISTRY_DATABASE_URL":          url,
		"EXTENSION_REGISTRY_NATS_URL":              nats.URL(),
		"EXTENSION_REGISTRY_HTTP_ADDR":             "127.0.0.1:0",
		"EXTENSION_REGISTRY_SUBJECT_PREFIX":        "test.multibyte",
		"EXTENSION_REGISTRY_SYNC_INTERVAL_SECONDS": "3600",
		"EXTENSION_REGISTRY_LEADER_RETRY":          "50ms",
		"EXTENSION_REGISTRY_LOG_FORMAT":            "json",
	}
	if r := runCLI(t, ctx, env, "migrate"); r.code != exitOK {
		t.Fatalf("migrate: exit %d", r.code)
	}
	d := startDaemon(t, "multibyte", env)
	waitReady(t, d.base)
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, `INSERT INTO extensions (id, type, subject) VALUES ('x', 'pre', 'beamline.ext.pre.x.v1')`); err != nil {
		t.Fatalf("a write in the multibyte schema: %v", err)
	}
	// waitStatus gives up after 30 s; the reconcile runs every hour.
	waitStatus(t, d.base, "publishing the write", func(code int, st syncer.Status) bool {
		return code == http.StatusOK && st.Ready && st.Extensions == 1 && st.SnapshotRevision == st.Revision
	})
	if code, _ := d.stop(t); code != exitOK {
		t.Fatalf("exit %d", code)
	}
}
