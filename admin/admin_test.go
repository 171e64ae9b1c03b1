package admin_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/beamline/registry-syncer/admin"
	"github.com/beamline/registry-syncer/syncer"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const token = "s3cret-token-for-tests"

type testBundle struct {
	srv    *admin.Server
	base   string
	status atomic.Pointer[syncer.Status]
	syncs  atomic.Int64
	// syncErr, when set, is what ForceSync returns.
	syncErr atomic.Pointer[error]
}

func setup(t *testing.T, mod func(*admin.Config)) *testBundle {
	t.Helper()
	b := &testBundle{}
	b.status.Store(&syncer.Status{Leader: true, Revision: 7, Reason: "catching up with the change log"})
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "admin_test_total", Help: "A test counter."})
	reg.MustRegister(c)
	c.Add(3)
	cfg := admin.Config{
		Addr:     "127.0.0.1:0",
		Token:    token,
		Gatherer: reg,
		Status:   func() syncer.Status { return *b.status.Load() },
		ForceSync: func(ctx context.Context) error {
			b.syncs.Add(1)
			if p := b.syncErr.Load(); p != nil {
				return *p
			}
			st := *b.status.Load()
			st.Revision++
			b.status.Store(&st)
			return nil
		},
		Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil)),
	}
	if mod != nil {
		mod(&cfg)
	}
	srv, err := admin.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	b.srv, b.base = srv, "http://"+srv.Addr()
	return b
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// do sends a request and returns the status code and body.
func do(t *testing.T, method, url, auth string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

func TestAdminSync(t *testing.T) {
	t.Parallel()

	t.Run("MissingToken", func(t *testing.T) {
		t.Parallel()
		b := setup(t, nil)
		code, _ := do(t, http.MethodPost, b.base+"/admin/sync", "")
		if code != http.StatusUnauthorized {
			t.Fatalf("status %d, want 401", code)
		}
		if n := b.syncs.Load(); n != 0 {
			t.Fatalf("ForceSync called %d times without a token", n)
		}
	})

	t.Run("WrongToken", func(t *testing.T) {
		t.Parallel()
		b := setup(t, nil)
		for _, auth := range []string{"Bearer wrong", "Bearer " + token + "x", "Basic " + token, token, "Bearer "} {
			code, _ := do(t, http.MethodPost, b.base+"/admin/sync", auth)
			if code != http.StatusUnauthorized {
				t.Errorf("Authorization %q: status %d, want 401", auth, code)
			}
		}
		if n := b.syncs.Load(); n != 0 {
			t.Fatalf("ForceSync called %d times with a wrong token", n)
		}
	})

	t.Run("Disabled", func(t *testing.T) {
		t.Parallel()
		b := setup(t, func(c *admin.Config) { c.Token = "" })
		for _, auth := range []string{"", "Bearer ", "Bearer anything"} {
			code, body := do(t, http.MethodPost, b.base+"/admin/sync", auth)
			if code != http.StatusForbidden || !strings.Contains(body, "admin endpoint disabled: set EXTENSION_REGISTRY_ADMIN_TOKEN") {
				t.Errorf("Authorization %q: %d %q, want 403 naming the variable", auth, code, body)
			}
		}
		if n := b.syncs.Load(); n != 0 {
			t.Fatalf("ForceSync called %d times while disabled", n)
		}
	})

	t.Run("RightToken", func(t *testing.T) {
		t.Parallel()
		b := setup(t, nil)
		code, body := do(t, http.MethodPost, b.base+"/admin/sync", "Bearer "+token)
		if code != http.StatusOK {
			t.Fatalf("status %d %q, want 200", code, body)
		}
		if n := b.syncs.Load(); n != 1 {
			t.Fatalf("ForceSync called %d times, want 1", n)
		}
		var st syncer.Status
		if err := json.Unmarshal([]byte(body), &st); err != nil {
			t.Fatalf("body %q: %v", body, err)
		}
		if st.Revision != 8 {
			t.Fatalf("revision %d, want the status after the sync (8)", st.Revision)
		}
	})

	t.Run("SyncError", func(t *testing.T) {
		t.Parallel()
		b := setup(t, nil)
		err := errors.New("reconcile: database gone")
		b.syncErr.Store(&err)
		code, body := do(t, http.MethodPost, b.base+"/admin/sync", "Bearer "+token)
		if code != http.StatusInternalServerError || !strings.Contains(body, "reconcile: database gone") {
			t.Fatalf("%d %q, want 500 with the error", code, body)
		}
	})

	t.Run("Standby", func(t *testing.T) {
		t.Parallel()
		b := setup(t, nil)
		b.status.Store(&syncer.Status{Reason: "standby"})
		code, body := do(t, http.MethodPost, b.base+"/admin/sync", "Bearer "+token)
		if code != http.StatusServiceUnavailable || !strings.Contains(body, "not the leader") {
			t.Fatalf("%d %q, want 503 not the leader", code, body)
		}
		if n := b.syncs.Load(); n != 0 {
			t.Fatalf("ForceSync called %d times on a standby", n)
		}
	})

	t.Run("MethodNotAllowed", func(t *testing.T) {
		t.Parallel()
		b := setup(t, nil)
		for _, m := range []string{http.MethodGet, http.MethodPut, http.MethodDelete} {
			if code, _ := do(t, m, b.base+"/admin/sync", "Bearer "+token); code != http.StatusMethodNotAllowed {
				t.Errorf("%s: status %d, want 405", m, code)
			}
		}
		if code, _ := do(t, http.MethodPost, b.base+"/metrics", ""); code != http.StatusMethodNotAllowed {
			t.Errorf("POST /metrics: status %d, want 405", code)
		}
	})
}

func TestAdminProbes(t *testing.T) {
	t.Parallel()

	t.Run("Healthz", func(t *testing.T) {
		t.Parallel()
		b := setup(t, nil)
		code, body := do(t, http.MethodGet, b.base+"/healthz", "")
		if code != http.StatusOK || strings.TrimSpace(body) != "ok" {
			t.Fatalf("%d %q, want 200 ok", code, body)
		}
	})

	t.Run("Readyz", func(t *testing.T) {
		t.Parallel()
		b := setup(t, nil)
		code, body := do(t, http.MethodGet, b.base+"/readyz", "")
		var st syncer.Status
		if err := json.Unmarshal([]byte(body), &st); err != nil {
			t.Fatalf("body %q: %v", body, err)
		}
		if code != http.StatusServiceUnavailable || st.Reason != "catching up with the change log" {
			t.Fatalf("%d %+v, want 503 with the reason", code, st)
		}
		b.status.Store(&syncer.Status{Leader: true, Ready: true, Revision: 9})
		code, body = do(t, http.MethodGet, b.base+"/readyz", "")
		if err := json.Unmarshal([]byte(body), &st); err != nil {
			t.Fatalf("body %q: %v", body, err)
		}
		if code != http.StatusOK || !st.Ready || st.Revision != 9 {
			t.Fatalf("%d %+v, want 200 with the status", code, st)
		}
	})

	t.Run("Metrics", func(t *testing.T) {
		t.Parallel()
		b := setup(t, nil)
		code, body := do(t, http.MethodGet, b.base+"/metrics", "")
		if code != http.StatusOK || !strings.Contains(body, "admin_test_total 3") {
			t.Fatalf("%d %q, want the injected registry's metrics", code, body)
		}
	})
}

func TestAdminLifecycle(t *testing.T) {
	t.Parallel()

	t.Run("PortInUse", func(t *testing.T) {
		t.Parallel()
		b := setup(t, nil)
		srv, err := admin.New(admin.Config{Addr: b.srv.Addr(), Gatherer: prometheus.NewRegistry(),
			Status: func() syncer.Status { return syncer.Status{} }, ForceSync: func(context.Context) error { return nil }})
		if err != nil {
			t.Fatal(err)
		}
		if err := srv.Start(context.Background()); err == nil {
			srv.Stop()
			t.Fatal("Start on a port in use succeeded")
		}
		srv.Stop()
	})

	t.Run("StopIdempotent", func(t *testing.T) {
		t.Parallel()
		b := setup(t, nil)
		addr := b.srv.Addr()
		b.srv.Stop()
		b.srv.Stop()
		if _, err := net.Dial("tcp", addr); err == nil {
			t.Fatal("server still accepts connections after Stop")
		}
		if err := b.srv.Start(context.Background()); err == nil {
			t.Fatal("Start after Stop succeeded")
		}
	})

	t.Run("StopWithoutStart", func(t *testing.T) {
		t.Parallel()
		srv, err := admin.New(admin.Config{Addr: "127.0.0.1:0", Gatherer: prometheus.NewRegistry(),
			Status: func() syncer.Status { return syncer.Status{} }, ForceSync: func(context.Context) error { return nil }})
		if err != nil {
			t.Fatal(err)
		}
		srv.Stop()
		srv.Stop()
	})

	t.Run("ContextEndStops", func(t *testing.T) {
		t.Parallel()
		srv, err := admin.New(admin.Config{Addr: "127.0.0.1:0", Gatherer: prometheus.NewRegistry(),
			Status: func() syncer.Status { return syncer.Status{} }, ForceSync: func(context.Context) error { return nil }})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		if err := srv.Start(ctx); err != nil {
			t.Fatal(err)
		}
		cancel()
		srv.Stop() // returns once the server is down
		if _, err := net.Dial("tcp", srv.Addr()); err == nil {
			t.Fatal("server still accepts connections after its context ended")
		}
	})

	t.Run("ConcurrentStartStop", func(t *testing.T) {
		t.Parallel()
		for range 20 {
			srv, err := admin.New(admin.Config{Addr: "127.0.0.1:0", Gatherer: prometheus.NewRegistry(),
				Status: func() syncer.Status { return syncer.Status{} }, ForceSync: func(context.Context) error { return nil }})
			if err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			for range 4 {
				wg.Go(func() { _ = srv.Start(context.Background()) })
				wg.Go(srv.Stop)
			}
			wg.Wait()
			srv.Stop()
		}
	})

	t.Run("ValidatesConfig", func(t *testing.T) {
		t.Parallel()
		_, err := admin.New(admin.Config{})
		if err == nil {
			t.Fatal("New accepted an empty config")
		}
		for _, field := range []string{"Addr", "Gatherer", "Status", "ForceSync"} {
			if !strings.Contains(err.Error(), field) {
				t.Errorf("error %q does not name %s", err, field)
			}
		}
	})
}
