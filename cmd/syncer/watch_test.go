package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/beamline/registry-syncer/syncer"
	"github.com/beamline/registry-syncer/test/harness"
)

// lockedBuffer is an output stream a test reads while a command writes it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// lines are the complete lines written so far.
func (b *lockedBuffer) lines() []string {
	s := b.String()
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return strings.Split(s[:i], "\n")
	}
	return nil
}

// TestWatchJSONMarksBootstrap: the first line of watch --json is the bootstrap
// ("bootstrap": true), the revisions applied after it are not, and every line keeps the
// fields DESIGN.md requires.
func TestWatchJSONMarksBootstrap(t *testing.T) {
	t.Parallel()
	schema := harness.PG(t).NewSchema(t)
	ns := harness.NewNATS(t, harness.NATSOptions{})
	d := startDaemon(t, "syncer", daemonEnv(schema, ns.URL(), "test.watchjson", nil))
	insertExtension(t, schema, "first_ext")
	waitStatus(t, d.base, "published", func(code int, st syncer.Status) bool {
		return code == http.StatusOK && st.Extensions == 1 && st.SnapshotRevision == st.Revision
	})

	ctx, cancel := context.WithCancel(context.Background())
	var stdout, stderr lockedBuffer
	done := make(chan int, 1)
	env := envMap{"EXTENSION_REGISTRY_NATS_URL": ns.URL(), "EXTENSION_REGISTRY_SUBJECT_PREFIX": "test.watchjson"}
	go func() { done <- run(ctx, []string{"watch", "--json"}, env.lookup, &stdout, &stderr) }()
	defer func() {
		cancel()
		if code := <-done; code != exitOK {
			t.Errorf("watch exit %d; stderr %s", code, stderr.String())
		}
	}()
	eventually(t, 30*time.Second, "the bootstrap line", func() bool { return len(stdout.lines()) >= 1 })
	insertExtension(t, schema, "second_ext")
	eventually(t, 30*time.Second, "the applied revision's line", func() bool { return len(stdout.lines()) >= 2 })

	lines := stdout.lines()
	t.Logf("watch --json:\n%s", strings.Join(lines, "\n"))
	for i, l := range lines[:2] {
		var raw map[string]json.RawMessage
		if err := json.Unmarshal([]byte(l), &raw); err != nil {
			t.Fatalf("line %d %q: %v", i, l, err)
		}
		for _, k := range []string{"bootstrap", "revision", "checksum", "count", "changed"} {
			if _, ok := raw[k]; !ok {
				t.Errorf("line %d lacks %q", i, k)
			}
		}
		var ev struct {
			Bootstrap bool     `json:"bootstrap"`
			Count     int      `json:"count"`
			Changed   []string `json:"changed"`
		}
		_ = json.Unmarshal([]byte(l), &ev)
		if want := i == 0; ev.Bootstrap != want {
			t.Errorf("line %d: bootstrap %v, want %v", i, ev.Bootstrap, want)
		}
		if i == 1 && (ev.Count != 2 || !slices.Equal(ev.Changed, []string{"second_ext"})) {
			t.Errorf("line 1: count %d changed %v, want 2 and [second_ext]", ev.Count, ev.Changed)
		}
	}
}
