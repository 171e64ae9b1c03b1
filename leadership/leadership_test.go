package leadership_test

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/beamline/registry-syncer/leadership"
	"github.com/beamline/registry-syncer/test/harness"
)

func logger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

func elector(t *testing.T, db leadership.DB, holder string, ttl time.Duration) *leadership.Elector {
	t.Helper()
	e, err := leadership.New(db, leadership.Config{Holder: holder, TTL: ttl}, logger(t))
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// waitFor polls cond until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > d {
			t.Fatalf("%s: not within %s", what, d)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Since(start)
}

func TestOneLeaderReleaseHandsOver(t *testing.T) {
	t.Parallel()
	s := harness.PG(t).NewSchema(t)
	ctx := context.Background()
	a, b := elector(t, s.Pool, "a", 2*time.Second), elector(t, s.Pool, "b", 2*time.Second)
	ta, err := a.TryAcquire(ctx)
	if err != nil || ta == nil {
		t.Fatalf("a: %v %v", ta, err)
	}
	if tb, err := b.TryAcquire(ctx); err != nil || tb != nil {
		t.Fatalf("b took a held lease: %v %v", tb, err)
	}
	// Renewal keeps it past several TTLs.
	renewedPast := time.Now().Add(5 * time.Second)
	waitFor(t, 10*time.Second, "a keeps the lease over 2.5 TTLs", func() bool {
		if tb, err := b.TryAcquire(ctx); err != nil || tb != nil {
			t.Fatalf("b took a renewed lease: %v %v", tb, err)
		}
		return time.Now().After(renewedPast)
	})
	if err := ta.Valid(); err != nil {
		t.Fatalf("a's term: %v", err)
	}
	ta.Release()
	ta.Release() // twice is fine
	if err := ta.Valid(); !errors.Is(err, leadership.ErrReleased) {
		t.Fatalf("released term valid: %v", err)
	}
	if cause := context.Cause(ta.Context()); !errors.Is(cause, leadership.ErrReleased) {
		t.Fatalf("released term context cause: %v", cause)
	}
	tb, err := b.TryAcquire(ctx)
	if err != nil || tb == nil {
		t.Fatalf("b after release: %v %v", tb, err)
	}
	defer tb.Release()
	if tb.Number != ta.Number+1 {
		t.Errorf("term numbers %d then %d", ta.Number, tb.Number)
	}
}

// TestStalledLeaderReplaced: the leader's database connection goes through a proxy that
// black-holes it (no RST: its queries just never answer). Its term ends by its own clock
// before the standby can take over, and the standby takes over within TTL + retry.
func TestStalledLeaderReplaced(t *testing.T) {
	t.Parallel()
	pg := harness.PG(t)
	s := pg.NewSchema(t)
	proxy := harness.NewProxy(t, net.JoinHostPort("127.0.0.1", strconv.Itoa(pg.Port)))
	cfg, err := pgxpool.ParseConfig(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.Host, cfg.ConnConfig.Port = "127.0.0.1", uint16(proxy.Port())
	stalled, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer stalled.Close()
	const ttl = 2 * time.Second
	ctx := context.Background()
	a := elector(t, stalled, "a", ttl)
	ta, err := a.TryAcquire(ctx)
	if err != nil || ta == nil {
		t.Fatalf("a: %v %v", ta, err)
	}
	defer ta.Release()
	proxy.Stall()
	stalledAt := time.Now()
	b := elector(t, s.Pool, "b", ttl)
	actx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	got := make(chan *leadership.Term, 1)
	go func() {
		// A standby's loop: try, and try again after the retry interval.
		for actx.Err() == nil {
			tb, err := b.TryAcquire(actx)
			if err == nil && tb != nil {
				got <- tb
				return
			}
			select {
			case <-actx.Done():
			case <-time.After(50 * time.Millisecond): // the standby's retry interval
			}
		}
		t.Errorf("b never acquired: %v", actx.Err())
		got <- nil
	}()
	var tb *leadership.Term
	select {
	case tb = <-got:
	case <-time.After(15 * time.Second):
		t.Fatal("standby never took over")
	}
	if tb == nil {
		t.FailNow()
	}
	defer tb.Release()
	took := time.Since(stalledAt)
	// The old leader's term must have ended (by its clock) before the standby got in.
	if err := ta.Valid(); !errors.Is(err, leadership.ErrLost) {
		t.Fatalf("old leader still valid after the takeover: %v", err)
	}
	select {
	case <-ta.Context().Done():
	case <-time.After(5 * time.Second):
		t.Fatal("old leader's term context did not end")
	}
	t.Logf("stalled leader replaced %s after the stall (TTL %s)", took.Round(time.Millisecond), ttl)
	if took > ttl+2*time.Second {
		t.Errorf("takeover took %s, want at most TTL + 2s", took)
	}
	proxy.Resume()
}

func TestConfigErrorsNameTheField(t *testing.T) {
	t.Parallel()
	_, err := leadership.New(nil, leadership.Config{TTL: time.Second, RenewInterval: time.Second}, slog.Default())
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"Holder is required", "RenewInterval must be positive and at most TTL/2"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}
