package main

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

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
