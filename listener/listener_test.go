package listener_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/beamline/registry-syncer/listener"
	"github.com/beamline/registry-syncer/test/harness"
)

// waitTimeout bounds every wait for an effect; effects normally arrive in milliseconds.
const waitTimeout = 10 * time.Second

var appSeq atomic.Int64

// waitWake waits (bounded) for the next wake-up of l.
func waitWake(t *testing.T, l *listener.Listener, what string) {
	t.Helper()
	select {
	case <-l.C():
	case <-time.After(waitTimeout):
		t.Fatalf("no wake-up within %s: %s", waitTimeout, what)
	}
}

// waitNotified consumes wake-ups until the listener has counted at least n notifications.
func waitNotified(t *testing.T, l *listener.Listener, n int64) {
	t.Helper()
	deadline := time.After(waitTimeout)
	for {
		if _, got := l.Stats(); got >= n {
			return
		}
		select {
		case <-l.C():
		case <-deadline:
			_, got := l.Stats()
			t.Fatalf("notifications = %d after %s, want >= %d", got, waitTimeout, n)
		}
	}
}

// checkFor polls cond until it holds or the deadline passes.
func checkFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not true within %s: %s", waitTimeout, what)
		}
		select {
		case <-time.After(5 * time.Millisecond):
		case <-t.Context().Done():
			t.Fatal(t.Context().Err())
		}
	}
}

func insertExtension(t *testing.T, s *harness.Schema, id string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	defer cancel()
	_, err := s.Pool.Exec(ctx, `INSERT INTO extensions (id, type, subject, timeout_ms) VALUES ($1, 'pre', $2, 100)`,
		id, "beamline.ext.pre."+id+".v1")
	if err != nil {
		t.Fatalf("insert extension %s: %v", id, err)
	}
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestListener(t *testing.T) {
	t.Parallel()

	type testBundle struct {
		schema  *harness.Schema
		appName string
		conns   *atomic.Int64 // onConnected calls
	}

	setup := func(t *testing.T, cfg listener.Config) (*listener.Listener, *testBundle) {
		t.Helper()
		b := &testBundle{schema: harness.PG(t).NewSchema(t), conns: new(atomic.Int64)}
		b.appName = fmt.Sprintf("listener-test-%d", appSeq.Add(1))
		cfg.URL = b.schema.URL
		cfg.AppName = b.appName
		cfg.BackoffMin = 10 * time.Millisecond
		cfg.BackoffMax = 50 * time.Millisecond
		l, err := listener.New(cfg, discardLogger(), func() { b.conns.Add(1) })
		if err != nil {
			t.Fatalf("New: %v", err)
		}
		return l, b
	}

	start := func(t *testing.T, l *listener.Listener) {
		t.Helper()
		if err := l.Start(t.Context()); err != nil {
			t.Fatalf("Start: %v", err)
		}
		t.Cleanup(l.Stop)
	}

	t.Run("WakesOnConnectAndCommit", func(t *testing.T) {
		t.Parallel()
		l, b := setup(t, listener.Config{})
		start(t, l)

		waitWake(t, l, "Connected after LISTEN")
		if !l.Listening() {
			t.Fatal("Listening() = false after the Connected wake-up")
		}
		if got := b.conns.Load(); got != 1 {
			t.Fatalf("onConnected called %d times, want 1", got)
		}
		if _, n := l.Stats(); n != 0 {
			t.Fatalf("notifications = %d before any commit, want 0", n)
		}

		insertExtension(t, b.schema, "a")
		waitWake(t, l, "notification of a committed write")
		reconnects, n := l.Stats()
		if n != 1 || reconnects != 0 {
			t.Fatalf("Stats() = (%d, %d), want (0, 1)", reconnects, n)
		}
	})

	t.Run("ReconnectsAfterBackendTerminated", func(t *testing.T) {
		t.Parallel()
		l, b := setup(t, listener.Config{})
		start(t, l)
		waitWake(t, l, "first Connected")

		killed, err := b.schema.PG.TerminateBackends(t.Context(), b.appName)
		if err != nil {
			t.Fatalf("terminate: %v", err)
		}
		if killed != 1 {
			t.Fatalf("terminated %d backends named %s, want 1", killed, b.appName)
		}
		checkFor(t, "reconnected and listening again", func() bool {
			r, _ := l.Stats()
			return r >= 1 && l.Listening() && b.conns.Load() >= 2
		})
		// The second session's Connected wake-up is signalled after onConnected: it is
		// pending now or arrives shortly.
		waitWake(t, l, "Connected after reconnect")

		insertExtension(t, b.schema, "after-reconnect")
		waitNotified(t, l, 1)
		if r, _ := l.Stats(); r < 1 {
			t.Fatalf("reconnects = %d, want >= 1", r)
		}
	})

	t.Run("DisabledPolls", func(t *testing.T) {
		t.Parallel()
		l, b := setup(t, listener.Config{Disabled: true, PollInterval: 20 * time.Millisecond})
		start(t, l)
		for i := range 3 {
			waitWake(t, l, fmt.Sprintf("poll wake-up %d", i))
		}
		if !l.Listening() {
			t.Fatal("Listening() = false with LISTEN disabled, want true")
		}
		if r, n := l.Stats(); r != 0 || n != 0 {
			t.Fatalf("Stats() = (%d, %d) with LISTEN disabled, want (0, 0)", r, n)
		}
		if got := b.conns.Load(); got != 1 {
			t.Fatalf("onConnected called %d times, want 1", got)
		}
		// No LISTEN connection was opened.
		if killed, err := b.schema.PG.TerminateBackends(t.Context(), b.appName); err != nil || killed != 0 {
			t.Fatalf("backends named %s: %d (err %v), want none", b.appName, killed, err)
		}
	})

	t.Run("ConfigValidation", func(t *testing.T) {
		t.Parallel()
		const url = "postgres://user@127.0.0.1:1/db"
		for _, tc := range []struct {
			name  string
			cfg   listener.Config
			field string
		}{
			{"NoURL", listener.Config{}, "URL"},
			{"DisabledWithoutPoll", listener.Config{URL: url, Disabled: true}, "PollInterval"},
			{"NegativePoll", listener.Config{URL: url, PollInterval: -time.Second}, "PollInterval"},
			{"BackoffMaxBelowMin", listener.Config{URL: url, BackoffMin: time.Second, BackoffMax: time.Millisecond}, "BackoffMin"},
			{"NegativeBackoff", listener.Config{URL: url, BackoffMin: -time.Second}, "BackoffMin"},
			{"BadURL", listener.Config{URL: "postgres://user@127.0.0.1:notaport/db"}, "listener"},
		} {
			_, err := listener.New(tc.cfg, discardLogger(), nil)
			if err == nil {
				t.Errorf("%s: New succeeded, want an error naming %s", tc.name, tc.field)
				continue
			}
			if !strings.Contains(err.Error(), tc.field) {
				t.Errorf("%s: error %q does not name %s", tc.name, err, tc.field)
			}
		}
		if _, err := listener.New(listener.Config{URL: url}, discardLogger(), nil); err != nil {
			t.Errorf("defaults: %v", err)
		}
	})

	t.Run("StopIdempotent", func(t *testing.T) {
		t.Parallel()
		l, _ := setup(t, listener.Config{})
		l.Stop() // never started
		l.Stop()

		if err := l.Start(t.Context()); err != nil {
			t.Fatalf("Start: %v", err)
		}
		if err := l.Start(t.Context()); err == nil {
			t.Error("second Start succeeded, want an error")
		}
		waitWake(t, l, "Connected")
		l.Stop()
		l.Stop()
		if l.Listening() {
			t.Error("Listening() = true after Stop")
		}
	})

	t.Run("IgnoresOtherSchemas", func(t *testing.T) {
		t.Parallel()
		l, b := setup(t, listener.Config{})
		other := harness.PG(t).NewSchema(t)
		start(t, l)
		waitWake(t, l, "Connected")

		insertExtension(t, other, "other-1")
		insertExtension(t, b.schema, "sentinel")
		waitWake(t, l, "sentinel notification")
		waitNotified(t, l, 1)

		insertExtension(t, other, "other-2")
		select {
		case <-l.C():
			t.Fatal("woken by another schema's commit")
		case <-time.After(300 * time.Millisecond):
		}
		if _, n := l.Stats(); n != 1 {
			t.Fatalf("notifications = %d, want 1 (the sentinel only)", n)
		}
	})
}
