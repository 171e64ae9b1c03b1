package listener_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"strings"
	"sync"
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

// hostOf returns rawURL's host:port.
func hostOf(t *testing.T, rawURL string) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	return u.Host
}

// withHost returns rawURL pointing at host:port instead.
func withHost(t *testing.T, rawURL, host string) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	u.Host = host
	return u.String()
}

// notify sends a notification with payload on the registry channel of s.
func notify(t *testing.T, s *harness.Schema, payload string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	defer cancel()
	if _, err := s.Pool.Exec(ctx, `SELECT pg_notify(registry_channel(), $1)`, payload); err != nil {
		t.Fatalf("notify %q: %v", payload, err)
	}
}

// noWake checks (bounded) that no wake-up arrives.
func noWake(t *testing.T, l *listener.Listener, d time.Duration, what string) {
	t.Helper()
	select {
	case <-l.C():
		t.Fatalf("woken: %s", what)
	case <-time.After(d):
	}
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestListener(t *testing.T) {
	t.Parallel()

	type testBundle struct {
		schema  *harness.Schema
		appName string
		conns   *atomic.Int64  // onConnected calls
		proxy   *harness.Proxy // between the LISTEN connection and PostgreSQL, if asked for
		swallow *swallowProxy  // same, one that can drop notifications
	}

	type setupOpts struct {
		proxy         bool // LISTEN through a proxy
		probeViaProxy bool // probes through the same proxy (else direct)
		swallow       bool // LISTEN through a swallowProxy, probes direct
		log           bool // log to the test's output
		onConnected   func(b *testBundle)
	}

	setup := func(t *testing.T, cfg listener.Config, opts *setupOpts) (*listener.Listener, *testBundle) {
		t.Helper()
		if opts == nil {
			opts = &setupOpts{}
		}
		b := &testBundle{schema: harness.PG(t).NewSchema(t), conns: new(atomic.Int64)}
		b.appName = fmt.Sprintf("listener-test-%d", appSeq.Add(1))
		cfg.URL = b.schema.URL
		if opts.proxy {
			b.proxy = harness.NewProxy(t, hostOf(t, b.schema.URL))
			cfg.URL = withHost(t, b.schema.URL, b.proxy.Addr())
		}
		if opts.swallow {
			b.swallow = newSwallowProxy(t, hostOf(t, b.schema.URL))
			cfg.URL = withHost(t, b.schema.URL, b.swallow.addr())
		}
		cfg.AppName = b.appName
		cfg.BackoffMin = 10 * time.Millisecond
		cfg.BackoffMax = 50 * time.Millisecond
		log := discardLogger()
		if opts.log {
			log = slog.New(slog.NewTextHandler(t.Output(), nil))
		}
		l, err := listener.New(cfg, log, func() {
			b.conns.Add(1)
			if opts.onConnected != nil {
				opts.onConnected(b)
			}
		})
		if err != nil {
			t.Fatalf("New: %v", err)
		}
		if (opts.proxy && !opts.probeViaProxy) || opts.swallow {
			listener.SetProbeURL(l, b.schema.URL)
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
		l, b := setup(t, listener.Config{}, nil)
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
		l, b := setup(t, listener.Config{}, nil)
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
		l, b := setup(t, listener.Config{Disabled: true, PollInterval: 20 * time.Millisecond}, nil)
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
			{"NegativePingInterval", listener.Config{URL: url, PingInterval: -time.Second}, "PingInterval"},
			{"NegativePingTimeout", listener.Config{URL: url, PingTimeout: -time.Second}, "PingTimeout"},
			{"NegativeConnectTimeout", listener.Config{URL: url, ConnectTimeout: -time.Second}, "ConnectTimeout"},
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
		l, _ := setup(t, listener.Config{}, nil)
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

	t.Run("ProbesDoNotWake", func(t *testing.T) {
		t.Parallel()
		l, b := setup(t, listener.Config{PingInterval: 20 * time.Millisecond}, nil)
		start(t, l)
		waitWake(t, l, "Connected")

		// Our own probes come back (the path is proven alive) and wake nobody.
		checkFor(t, "five probes heard back", func() bool { return listener.ProbesHeard(l) >= 5 })
		// Another listener's probe on the same channel is not a change either.
		notify(t, b.schema, "probe:0123456789abcdef:1")
		noWake(t, l, 200*time.Millisecond, "by a probe")
		if r, n := l.Stats(); r != 0 || n != 0 {
			t.Fatalf("Stats() = (%d, %d) after probes only, want (0, 0)", r, n)
		}
		// A revision still wakes, and is the only notification counted.
		insertExtension(t, b.schema, "after-probes")
		waitWake(t, l, "notification after probes")
		if _, n := l.Stats(); n != 1 {
			t.Fatalf("notifications = %d, want 1", n)
		}
		if !l.Listening() {
			t.Fatal("Listening() = false while probes are heard")
		}
	})

	// Losing the probe connection is not losing the LISTEN connection: the probe is sent
	// again on a fresh connection and the listener stays up.
	t.Run("ProbeConnectionTerminated", func(t *testing.T) {
		t.Parallel()
		l, b := setup(t, listener.Config{PingInterval: 20 * time.Millisecond}, nil)
		start(t, l)
		waitWake(t, l, "Connected")
		checkFor(t, "a probe heard back", func() bool { return listener.ProbesHeard(l) >= 1 })
		for range 3 {
			killed, err := b.schema.PG.TerminateBackends(t.Context(), b.appName+"-probe")
			if err != nil || killed != 1 {
				t.Fatalf("terminated %d probe backends (err %v), want 1", killed, err)
			}
			heard := listener.ProbesHeard(l)
			checkFor(t, "two more probes heard back", func() bool { return listener.ProbesHeard(l) >= heard+2 })
		}
		if r, _ := l.Stats(); r != 0 || !l.Listening() {
			t.Fatalf("reconnects = %d, Listening() = %v after the probe connection was terminated, want 0, true", r, l.Listening())
		}
		noWake(t, l, 100*time.Millisecond, "by the probe connection's loss")
	})

	// A LISTEN connection whose network goes silent (no RST, no FIN) is found dead within
	// 10 s with the default probe settings and no notification traffic, then recovered
	// once the network is back. With probes direct, only the LISTEN connection's path is
	// stalled: the probe is sent, the database delivers it, the listener does not hear it;
	// through the proxy, the probe cannot even be sent (production: one network path).
	for _, tc := range []struct {
		name          string
		probeViaProxy bool
	}{{"StallDetectedProbeDirect", false}, {"StallDetectedProbeViaProxy", true}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			const detectWithin = 10 * time.Second
			l, b := setup(t, listener.Config{}, &setupOpts{proxy: true, probeViaProxy: tc.probeViaProxy, log: true})
			start(t, l)
			waitWake(t, l, "Connected")
			insertExtension(t, b.schema, "before-stall")
			waitWake(t, l, "notification before the stall")
			if _, n := l.Stats(); n != 1 {
				t.Fatalf("notifications = %d before the stall, want 1", n)
			}

			b.proxy.Stall()
			stalled := time.Now()
			for l.Listening() {
				if time.Since(stalled) > detectWithin {
					t.Fatalf("stalled LISTEN connection still Listening() after %s", detectWithin)
				}
				select {
				case <-time.After(5 * time.Millisecond):
				case <-t.Context().Done():
					t.Fatal(t.Context().Err())
				}
			}
			detected := time.Since(stalled)
			t.Logf("stall detected after %s", detected.Round(time.Millisecond))
			// A commit while the path is dead: its notification may be lost; the connected
			// wake-up after recovery is what makes the syncer catch it up.
			insertExtension(t, b.schema, "during-stall")
			for range 3 {
				if l.Listening() {
					t.Fatal("Listening() = true while the proxy is stalled")
				}
				noWake(t, l, 50*time.Millisecond, "while stalled")
			}

			before := b.conns.Load()
			b.proxy.Resume()
			resumed := time.Now()
			waitWake(t, l, "Connected after the network is back")
			checkFor(t, "listening again after Resume", func() bool {
				return l.Listening() && b.conns.Load() > before
			})
			t.Logf("recovered %s after Resume", time.Since(resumed).Round(time.Millisecond))
			if r, _ := l.Stats(); r < 1 {
				t.Fatalf("reconnects = %d after a stall, want >= 1", r)
			}
			_, n := l.Stats()
			insertExtension(t, b.schema, "after-stall")
			waitNotified(t, l, n+1)
		})
	}

	// A path that answers queries but delivers no notification (a ping would pass) is
	// found dead within 10 s too, and recovered once notifications flow again.
	t.Run("SwallowedNotificationsDetected", func(t *testing.T) {
		t.Parallel()
		const detectWithin = 10 * time.Second
		l, b := setup(t, listener.Config{}, &setupOpts{swallow: true, log: true})
		start(t, l)
		waitWake(t, l, "Connected")
		insertExtension(t, b.schema, "before")
		waitWake(t, l, "notification before swallowing")

		b.swallow.on.Store(true)
		since := time.Now()
		for l.Listening() {
			if time.Since(since) > detectWithin {
				t.Fatalf("LISTEN connection that hears nothing still Listening() after %s", detectWithin)
			}
			select {
			case <-time.After(5 * time.Millisecond):
			case <-t.Context().Done():
				t.Fatal(t.Context().Err())
			}
		}
		t.Logf("lost notifications detected after %s", time.Since(since).Round(time.Millisecond))

		before := b.conns.Load()
		b.swallow.on.Store(false)
		checkFor(t, "listening again", func() bool { return l.Listening() && b.conns.Load() > before })
		_, n := l.Stats()
		insertExtension(t, b.schema, "after")
		waitNotified(t, l, n+1)
	})

	// The connected event comes after LISTEN: a commit made in response to it (as the
	// syncer's catch-up reads the change log then) is always notified.
	t.Run("ConnectedAfterListen", func(t *testing.T) {
		t.Parallel()
		l, b := setup(t, listener.Config{}, &setupOpts{onConnected: func(b *testBundle) {
			// On the listener's goroutine: report, don't Fatal.
			ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
			defer cancel()
			id := fmt.Sprintf("on-connected-%d", b.conns.Load())
			if _, err := b.schema.Pool.Exec(ctx, `INSERT INTO extensions (id, type, subject, timeout_ms) VALUES ($1, 'pre', $2, 100)`,
				id, "beamline.ext.pre."+id+".v1"); err != nil {
				t.Errorf("insert from onConnected: %v", err)
			}
		}})
		start(t, l)
		waitNotified(t, l, 1)
		if _, err := b.schema.PG.TerminateBackends(t.Context(), b.appName); err != nil {
			t.Fatal(err)
		}
		waitNotified(t, l, 2)
		if got := b.conns.Load(); got != 2 {
			t.Fatalf("onConnected called %d times, want 2", got)
		}
	})

	// Stop returns promptly even when the LISTEN connection's network is a black hole.
	t.Run("StopWhileStalled", func(t *testing.T) {
		t.Parallel()
		l, b := setup(t, listener.Config{}, &setupOpts{proxy: true, probeViaProxy: true})
		start(t, l)
		waitWake(t, l, "Connected")
		b.proxy.Stall()
		start := time.Now()
		stopped := make(chan struct{})
		go func() { l.Stop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(2 * time.Second):
			t.Fatal("Stop blocked on a stalled connection for 2s")
		}
		t.Logf("Stop took %s on a stalled connection", time.Since(start).Round(time.Millisecond))
	})

	// Start and Stop from many goroutines at once, on listeners at every stage (dialling,
	// LISTEN, listening): exactly one Start succeeds, every Stop returns, nothing leaks
	// (goleak in TestMain).
	t.Run("StartStopStress", func(t *testing.T) {
		t.Parallel()
		schema := harness.PG(t).NewSchema(t)
		for i := range 10 {
			cfg := listener.Config{URL: schema.URL, AppName: fmt.Sprintf("listener-stress-%d", i),
				PingInterval: 10 * time.Millisecond, BackoffMin: time.Millisecond, BackoffMax: 5 * time.Millisecond}
			if i%3 == 2 {
				cfg.Disabled, cfg.PollInterval = true, time.Millisecond
			}
			l, err := listener.New(cfg, discardLogger(), nil)
			if err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			var started atomic.Int64
			for range 4 {
				wg.Go(func() {
					if l.Start(t.Context()) == nil {
						started.Add(1)
					}
				})
				if i%2 == 0 {
					wg.Go(l.Stop) // racing the Starts: stops at any stage, or before Start
				}
			}
			wg.Wait()
			if got := started.Load(); got != 1 {
				t.Fatalf("listener %d: %d Starts succeeded, want 1", i, got)
			}
			if i%2 == 1 {
				// The other half runs until it is listening (or polling) first.
				waitWake(t, l, fmt.Sprintf("listener %d connected", i))
			}
			wg.Go(l.Stop)
			wg.Go(l.Stop)
			wg.Wait()
			if l.Listening() {
				t.Fatalf("listener %d: Listening() = true after Stop", i)
			}
		}
	})

	t.Run("IgnoresOtherSchemas", func(t *testing.T) {
		t.Parallel()
		l, b := setup(t, listener.Config{}, nil)
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
