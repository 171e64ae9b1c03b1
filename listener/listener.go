// Package listener owns the syncer's dedicated LISTEN connection to PostgreSQL: it listens
// on the registry channel, proves the connection alive with pings, reconnects with
// exponential backoff and jitter, and turns notifications (and an optional poll) into
// wake-ups. A wake-up carries no data: the change log is the truth.
//
// It is a thin layer over pgx rather than pgxlisten: pgxlisten reconnects after a fixed
// delay (no backoff, no jitter), has no liveness ping (a silently dead connection is only
// noticed when the next notification never comes), and has no signal that LISTEN is
// confirmed, which readiness needs.
package listener

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/beamline/registry-syncer/triggers"
)

// Config tunes the listener. Zero values take the documented defaults.
type Config struct {
	// URL of the database (search_path selects the registry schema). Required.
	URL string
	// Disabled turns LISTEN off (a transaction-pooling proxy, a standby): only the poll
	// wakes the syncer, so PollInterval must be set.
	Disabled bool
	// PollInterval, when positive, adds a wake-up at this interval (default 0: off).
	PollInterval time.Duration
	// PingInterval is how often an idle connection is proven alive (default 5s); a dead
	// connection is found within PingInterval + PingTimeout.
	PingInterval time.Duration
	// PingTimeout bounds one ping (default 3s).
	PingTimeout time.Duration
	// BackoffMin and BackoffMax bound the reconnect delay (defaults 100ms and 10s).
	BackoffMin, BackoffMax time.Duration
	// AppName is the connection's application_name (default "registry-syncer-listener").
	AppName string
}

// WithDefaults fills zero fields.
func (c Config) WithDefaults() Config {
	c.PingInterval = cmp.Or(c.PingInterval, 5*time.Second)
	c.PingTimeout = cmp.Or(c.PingTimeout, 3*time.Second)
	c.BackoffMin = cmp.Or(c.BackoffMin, 100*time.Millisecond)
	c.BackoffMax = cmp.Or(c.BackoffMax, 10*time.Second)
	c.AppName = cmp.Or(c.AppName, "registry-syncer-listener")
	return c
}

func (c Config) validate() error {
	var errs []error
	if c.URL == "" {
		errs = append(errs, errors.New("listener: URL is required"))
	}
	if c.Disabled && c.PollInterval <= 0 {
		errs = append(errs, errors.New("listener: with LISTEN disabled, PollInterval must be positive"))
	}
	if c.PollInterval < 0 {
		errs = append(errs, fmt.Errorf("listener: PollInterval must not be negative (got %s)", c.PollInterval))
	}
	if c.BackoffMin <= 0 || c.BackoffMax < c.BackoffMin {
		errs = append(errs, fmt.Errorf("listener: backoff must satisfy 0 < BackoffMin <= BackoffMax (got %s, %s)", c.BackoffMin, c.BackoffMax))
	}
	return errors.Join(errs...)
}

// Event is what a wake-up says happened.
type Event int

const (
	Notified  Event = iota // a notification (or a poll tick) arrived
	Connected              // LISTEN is (re)established: catch up from the change log
)

// Listener delivers wake-ups on C. Wake-ups coalesce: C holds at most one pending event.
type Listener struct {
	cfg    Config
	log    *slog.Logger
	wake   chan struct{}
	onConn func()

	mu        sync.Mutex
	listening bool
	stopped   bool
	reconnect int64
	notified  int64
	cancel    context.CancelFunc
	done      chan struct{}
}

// New validates cfg. onConnected (optional) is called after every successful LISTEN.
func New(cfg Config, log *slog.Logger, onConnected func()) (*Listener, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if _, err := pgx.ParseConfig(cfg.URL); err != nil {
		return nil, fmt.Errorf("listener: %w", err)
	}
	return &Listener{cfg: cfg, log: log.With("component", "listener"), wake: make(chan struct{}, 1), onConn: onConnected}, nil
}

// C delivers coalesced wake-ups.
func (l *Listener) C() <-chan struct{} { return l.wake }

func (l *Listener) signal() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// Listening reports whether LISTEN is currently confirmed (when disabled: whether the
// listener runs).
func (l *Listener) Listening() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cfg.Disabled {
		return l.done != nil && !l.stopped
	}
	return l.listening
}

// Stats returns the number of reconnects and notifications so far.
func (l *Listener) Stats() (reconnects, notifications int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.reconnect, l.notified
}

// Start runs the listener in the background until ctx ends or Stop is called.
func (l *Listener) Start(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done != nil {
		return errors.New("listener already started")
	}
	ctx, l.cancel = context.WithCancel(ctx)
	l.done = make(chan struct{})
	go func() {
		defer close(l.done)
		l.run(ctx)
	}()
	return nil
}

// Stop stops the listener and waits for it. Safe to call twice or without Start.
func (l *Listener) Stop() {
	l.mu.Lock()
	cancel, done := l.cancel, l.done
	l.mu.Unlock()
	if cancel == nil {
		return
	}
	cancel()
	<-done
	l.mu.Lock()
	l.stopped = true
	l.mu.Unlock()
}

func (l *Listener) setListening(v bool) {
	l.mu.Lock()
	l.listening = v
	l.mu.Unlock()
}

func (l *Listener) run(ctx context.Context) {
	if l.cfg.PollInterval > 0 {
		go func() {
			t := time.NewTicker(l.cfg.PollInterval)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					l.signal()
				}
			}
		}()
	}
	if l.cfg.Disabled {
		l.signal()
		if l.onConn != nil {
			l.onConn()
		}
		<-ctx.Done()
		return
	}
	attempt := 0
	for ctx.Err() == nil {
		err := l.session(ctx, func() { attempt = 0 })
		l.setListening(false)
		if ctx.Err() != nil {
			return
		}
		attempt++
		delay := backoff(l.cfg.BackoffMin, l.cfg.BackoffMax, attempt)
		l.mu.Lock()
		l.reconnect++
		l.mu.Unlock()
		l.log.WarnContext(ctx, "listener: connection lost, reconnecting", "error", err, "attempt", attempt, "sleep_duration", delay)
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
	}
}

// backoff is exponential from lo, capped at hi, with full jitter over its upper half.
func backoff(lo, hi time.Duration, attempt int) time.Duration {
	d := lo
	for i := 1; i < attempt && d < hi; i++ {
		d *= 2
	}
	d = min(d, hi)
	return d/2 + time.Duration(rand.Int64N(int64(d/2)+1))
}

// session connects, LISTENs, signals Connected, then waits for notifications, pinging
// when idle. It returns when the connection fails or ctx ends.
func (l *Listener) session(ctx context.Context, connected func()) error {
	cfg, err := pgx.ParseConfig(l.cfg.URL)
	if err != nil {
		return err
	}
	cfg.RuntimeParams["application_name"] = l.cfg.AppName
	connectCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	conn, err := pgx.ConnectConfig(connectCtx, cfg)
	cancel()
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer func() {
		closeCtx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		conn.Close(closeCtx)
	}()
	var channel string
	if err := conn.QueryRow(ctx, triggers.ChannelQuery).Scan(&channel); err != nil {
		return fmt.Errorf("read registry channel (is the schema migrated?): %w", err)
	}
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{channel}.Sanitize()); err != nil {
		return fmt.Errorf("listen %q: %w", channel, err)
	}
	l.setListening(true)
	connected()
	l.log.InfoContext(ctx, "listener: listening", "channel", channel)
	if l.onConn != nil {
		l.onConn()
	}
	l.signal()
	for {
		waitCtx, cancel := context.WithTimeout(ctx, l.cfg.PingInterval)
		_, err := conn.WaitForNotification(waitCtx)
		cancel()
		switch {
		case err == nil:
			l.mu.Lock()
			l.notified++
			l.mu.Unlock()
			l.signal()
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, context.DeadlineExceeded) && !conn.IsClosed():
			pingCtx, cancel := context.WithTimeout(ctx, l.cfg.PingTimeout)
			err := conn.Ping(pingCtx)
			cancel()
			if err != nil {
				return fmt.Errorf("ping: %w", err)
			}
		default:
			return fmt.Errorf("wait for notification: %w", err)
		}
	}
}
