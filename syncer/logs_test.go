package syncer_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/beamline/registry-syncer/publisher"
	"github.com/beamline/registry-syncer/syncer"
)

// lockedBuffer collects log output from several goroutines.
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

// duplicateKey returns the first key that appears twice at the top level of a JSON object.
func duplicateKey(line string) (string, error) {
	dec := json.NewDecoder(strings.NewReader(line))
	if _, err := dec.Token(); err != nil {
		return "", err
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return "", err
		}
		key := tok.(string)
		if seen[key] {
			return key, nil
		}
		seen[key] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return "", err
		}
	}
	return "", nil
}

// TestJSONLogsHaveNoDuplicateKeys: every log line of a leading syncer (its listener and
// leadership included) is a JSON object without a repeated key (log pipelines keep one of
// two "component" keys at random).
func TestJSONLogsHaveNoDuplicateKeys(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var out lockedBuffer
	log := slog.New(slog.NewJSONHandler(&out, &slog.HandlerOptions{Level: slog.LevelDebug}))
	nc := b.nats.Connect(t)
	s, err := syncer.New(syncer.Config{DatabaseURL: b.schema.URL, HeartbeatInterval: 100 * time.Millisecond,
		SnapshotInterval: 50 * time.Millisecond}, nc, publisher.Config{Prefix: b.prefix}, log, syncer.NewMetrics(prometheus.NewRegistry()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	b.exec(t, `INSERT INTO extensions (id, type, subject) VALUES ('a', 'pre', 'beamline.ext.pre.a.v1')`)
	waitFor(t, 10*time.Second, "ready", func() (bool, error) { return s.Status().Ready, fmt.Errorf("%+v", s.Status()) })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	components := map[string]bool{}
	for _, line := range lines {
		key, err := duplicateKey(line)
		if err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if key != "" {
			t.Errorf("key %q twice in %s", key, line)
		}
		var m map[string]any
		_ = json.Unmarshal([]byte(line), &m)
		if c, ok := m["component"].(string); ok {
			components[c] = true
		}
	}
	for _, c := range []string{"syncer", "listener", "leadership"} {
		if !components[c] {
			t.Errorf("no log line from component %q in %d lines", c, len(lines))
		}
	}
}
