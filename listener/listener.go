// Package listener turns the registry's NOTIFY channel into wake-ups for the syncer, over a
// LISTEN connection that it proves alive end to end.
//
// LISTEN itself is pgxlisten's: its Listener holds the connection, LISTENs on the registry
// channel and dispatches notifications; its BacklogHandler hook runs right after LISTEN
// succeeds on every (re)connect, which is the "connected: catch up from the change log"
// wake-up. pgxlisten treats every lost connection as non-fatal and calls Connect again;
// with ReconnectDelay < 0 it does not wait, so Connect (here) owns the reconnect delay:
// exponential backoff with jitter, logged with attempt and sleep_duration.
//
// What pgxlisten does not do lives here: proof of life. A connection whose network went
// silent (a black hole, no RST) blocks in WaitForNotification forever, and a successful
// ping would only prove the session answers queries, not that notifications reach it.
// So every PingInterval the listener sends a probe, a NOTIFY on its own channel whose
// payload names it ("probe:<listener>:<seq>", never a revision number), through a
// separate connection; a probe not heard back on the LISTEN connection within PingTimeout
// (or a LISTEN not confirmed within PingTimeout of dialling) marks the connection dead:
// Listening turns false and the connection is dropped, so pgxlisten reconnects. Probes
// never wake the syncer; only revision notifications, (re)connects and the optional poll
// do. A wake-up carries no data: the change log is the truth.
package listener

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgxlisten"

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
	// PingInterval is how often the path is proven alive by a probe NOTIFY sent through a
	// separate connection (default 2s). A dead LISTEN connection is found within
	// PingInterval + PingTimeout.
	PingInterval time.Duration
	// PingTimeout is how long a probe may take to come back on the LISTEN connection, and
	// how long LISTEN may take after dialling, before the connection counts as dead
	// (default 3s).
	PingTimeout time.Duration
	// ConnectTimeout bounds one dial of the LISTEN connection (default 10s).
	ConnectTimeout time.Duration
	// BackoffMin and BackoffMax bound the reconnect delay (defaults 100ms and 10s).
	BackoffMin, BackoffMax time.Duration
	// AppName is the LISTEN connection's application_name (default
	// "registry-syncer-listener"); the probe connection's is AppName + "-probe".
	AppName string
}

// WithDefaults fills zero fields.
func (c Config) WithDefaults() Config {
	c.PingInterval = cmp.Or(c.PingInterval, 2*time.Second)
	c.PingTimeout = cmp.Or(c.PingTimeout, 3*time.Second)
	c.ConnectTimeout = cmp.Or(c.ConnectTimeout, 10*time.Second)
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
	for _, f := range []struct {
		name string
		d    time.Duration
	}{{"PingInterval", c.PingInterval}, {"PingTimeout", c.PingTimeout}, {"ConnectTimeout", c.ConnectTimeout}} {
		if f.d < 0 {
			errs = append(errs, fmt.Errorf("listener: %s must not be negative (got %s)", f.name, f.d))
		}
	}
	if c.BackoffMin <= 0 || c.BackoffMax < c.BackoffMin {
		errs = append(errs, fmt.Errorf("listener: backoff must satisfy 0 < BackoffMin <= BackoffMax (got %s, %s)", c.BackoffMin, c.BackoffMax))
	}
	return errors.Join(errs...)
}

// probePrefix starts every probe payload; revisions are decimal numbers, so the two never
// mix. Another listener's probes on the same channel are ignored too.
const probePrefix = "probe:"

// Listener delivers wake-ups on C. Wake-ups coalesce: C holds at most one pending event.
type Listener struct {
	cfg      Config
	log      *slog.Logger
	wake     chan struct{}
	onConn   func()
	probeURL string // where probes are sent from (cfg.URL; tests may route it elsewhere)
	probeTag string // probePrefix + this listener's random id + ":"

	heardSeq atomic.Uint64 // highest probe of ours heard back
	heard    chan struct{} // a probe of ours was heard (coalesced)

	mu        sync.Mutex
	listening bool
	stopped   bool
	reconnect int64
	notified  int64
	dialled   bool      // Connect ran before: the next call is a reconnect
	attempts  int       // failed attempts since LISTEN was last confirmed
	lastErr   error     // why the previous attempt ended
	killed    error     // why watch dropped the current connection, if it did
	first     *pgx.Conn // dialled while resolving the channel, handed to pgxlisten's first Connect
	cur       *session  // the connection pgxlisten holds, from dial until it is lost
	cancel    context.CancelFunc
	done      chan struct{}
}

// session is one LISTEN connection, from dial until it is lost.
type session struct {
	conn      *pgx.Conn
	since     time.Time // dialled
	confirmed bool      // LISTEN succeeded
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
	id := make([]byte, 8)
	_, _ = rand.Read(id)
	return &Listener{
		cfg:      cfg,
		log:      log.With("component", "listener"),
		wake:     make(chan struct{}, 1),
		onConn:   onConnected,
		probeURL: cfg.URL,
		probeTag: probePrefix + hex.EncodeToString(id) + ":",
		heard:    make(chan struct{}, 1),
	}, nil
}

// C delivers coalesced wake-ups.
func (l *Listener) C() <-chan struct{} { return l.wake }

func (l *Listener) signal() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// Listening reports whether LISTEN is currently confirmed and not found dead (when
// disabled: whether the listener runs).
func (l *Listener) Listening() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cfg.Disabled {
		return l.done != nil && !l.stopped
	}
	return l.listening
}

// Stats returns the number of reconnects and notifications so far. Probes are not
// notifications.
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

func (l *Listener) run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	if l.cfg.PollInterval > 0 {
		wg.Go(func() {
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
		})
	}
	if l.cfg.Disabled {
		l.signal()
		if l.onConn != nil {
			l.onConn()
		}
		<-ctx.Done()
		return
	}
	channel, ok := l.resolveChannel(ctx)
	if !ok {
		return
	}
	pl := &pgxlisten.Listener{Connect: l.connect, LogError: l.connLost, ReconnectDelay: -1}
	pl.Handle(channel, handler{l})
	wg.Go(func() { l.watch(ctx, channel) })
	// With ReconnectDelay < 0, Listen returns only when ctx ends.
	_ = pl.Listen(ctx)
	l.mu.Lock()
	l.listening = false
	first := l.first
	l.first, l.cur = nil, nil
	l.mu.Unlock()
	if first != nil {
		closeConn(first)
	}
}

// resolveChannel dials until it can read the registry channel name (pgxlisten needs it
// before it starts). The connection it read it on becomes the first LISTEN connection.
func (l *Listener) resolveChannel(ctx context.Context) (string, bool) {
	for {
		conn, err := l.connect(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return "", false
			}
			l.connLost(ctx, fmt.Errorf("connect: %w", err))
			continue
		}
		var channel string
		qctx, cancel := context.WithTimeout(ctx, l.cfg.ConnectTimeout)
		err = conn.QueryRow(qctx, triggers.ChannelQuery).Scan(&channel)
		cancel()
		if err == nil {
			l.mu.Lock()
			l.first = conn
			l.mu.Unlock()
			return channel, true
		}
		closeConn(conn)
		if ctx.Err() != nil {
			return "", false
		}
		l.connLost(ctx, fmt.Errorf("read registry channel (is the schema migrated?): %w", err))
	}
}

func closeConn(conn *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = conn.Close(ctx)
}

// connect is pgxlisten's Connect: a fresh dedicated connection. Every call after the first
// follows a lost connection or a failed attempt, so it first sleeps the backoff.
func (l *Listener) connect(ctx context.Context) (*pgx.Conn, error) {
	l.mu.Lock()
	l.listening, l.cur = false, nil
	if conn := l.first; conn != nil {
		l.first = nil
		l.cur = &session{conn: conn, since: time.Now()}
		l.mu.Unlock()
		return conn, nil
	}
	retry := l.dialled
	l.dialled = true
	if retry {
		l.attempts++
		l.reconnect++
	}
	attempt, lastErr := l.attempts, l.lastErr
	l.mu.Unlock()

	if retry {
		delay := backoff(l.cfg.BackoffMin, l.cfg.BackoffMax, attempt)
		l.log.WarnContext(ctx, "listener: connection lost, reconnecting",
			slog.Any("error", lastErr), slog.Int("attempt", attempt), slog.Duration("sleep_duration", delay))
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
	}
	conn, err := dial(ctx, l.cfg.URL, l.cfg.AppName, l.cfg.ConnectTimeout)
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	l.cur = &session{conn: conn, since: time.Now()}
	l.mu.Unlock()
	return conn, nil
}

func dial(ctx context.Context, url, appName string, timeout time.Duration) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, err
	}
	cfg.RuntimeParams["application_name"] = appName
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return pgx.ConnectConfig(ctx, cfg)
}

// connLost is pgxlisten's LogError. Our handlers never fail, so pgxlisten calls it only
// when a connection attempt or a LISTEN session ended; the next Connect logs it.
func (l *Listener) connLost(_ context.Context, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.listening, l.cur = false, nil
	if l.killed != nil {
		err = fmt.Errorf("no proof of life: %w (then %w)", l.killed, err)
		l.killed = nil
	}
	l.lastErr = err
}

// backoff is exponential from lo, capped at hi, with full jitter over its upper half.
func backoff(lo, hi time.Duration, attempt int) time.Duration {
	d := lo
	for i := 1; i < attempt && d < hi; i++ {
		d *= 2
	}
	d = min(d, hi)
	return d/2 + time.Duration(mrand.Int64N(int64(d/2)+1))
}

// handler receives pgxlisten's callbacks on the registry channel.
type handler struct{ l *Listener }

// HandleBacklog runs right after LISTEN succeeded: the connected wake-up (the syncer
// catches up from the change log).
func (h handler) HandleBacklog(ctx context.Context, channel string, conn *pgx.Conn) error {
	l := h.l
	l.mu.Lock()
	// Unless watch dropped this connection meanwhile (its next read fails at once).
	if l.cur != nil && l.cur.conn == conn {
		l.cur.confirmed, l.cur.since = true, time.Now()
		l.attempts, l.listening = 0, true
	}
	l.mu.Unlock()
	l.log.InfoContext(ctx, "listener: listening", slog.String("channel", channel))
	if l.onConn != nil {
		l.onConn()
	}
	l.signal()
	return nil
}

// HandleNotification wakes the syncer for a revision and records a probe of ours as heard.
func (h handler) HandleNotification(_ context.Context, n *pgconn.Notification, _ *pgx.Conn) error {
	l := h.l
	if rest, ok := strings.CutPrefix(n.Payload, l.probeTag); ok {
		if seq, err := strconv.ParseUint(rest, 10, 64); err == nil {
			for {
				old := l.heardSeq.Load()
				if seq <= old || l.heardSeq.CompareAndSwap(old, seq) {
					break
				}
			}
			select {
			case l.heard <- struct{}{}:
			default:
			}
		}
		return nil
	}
	if strings.HasPrefix(n.Payload, probePrefix) {
		return nil // another listener's probe
	}
	l.mu.Lock()
	l.notified++
	l.mu.Unlock()
	l.signal()
	return nil
}

// watch proves the LISTEN connection alive: every PingInterval it sends a probe through
// its own connection and waits up to PingTimeout to hear it back; a connection that does
// not hear it, or whose LISTEN is not confirmed within PingTimeout of dialling, is
// dropped.
func (l *Listener) watch(ctx context.Context, channel string) {
	var probeConn *pgx.Conn
	defer func() {
		if probeConn != nil {
			closeConn(probeConn)
		}
	}()
	var seq uint64
	t := time.NewTimer(l.cfg.PingInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		l.mu.Lock()
		s := l.cur
		var confirmed bool
		var since time.Time
		if s != nil {
			confirmed, since = s.confirmed, s.since
		}
		l.mu.Unlock()
		switch {
		case s == nil:
			// Connecting (bounded by ConnectTimeout) or sleeping the backoff.
		case !confirmed:
			if wait := time.Since(since); wait > l.cfg.PingTimeout {
				l.kill(ctx, s, fmt.Errorf("LISTEN not confirmed %s after dialling", wait.Round(time.Millisecond)))
			}
		default:
			seq++
			deadline := time.Now().Add(l.cfg.PingTimeout)
			err := l.sendProbe(ctx, &probeConn, channel, seq, deadline)
			if !l.waitHeard(ctx, seq, deadline) && ctx.Err() == nil {
				if err == nil {
					err = fmt.Errorf("probe %d not heard back within %s", seq, l.cfg.PingTimeout)
				}
				l.kill(ctx, s, err)
			}
		}
		t.Reset(l.cfg.PingInterval)
	}
}

// sendProbe sends probe seq through *conn by deadline. A connection that fails is closed
// and, if it was an old one (its backend may simply have been terminated), replaced by a
// fresh one for a second try: only the LISTEN connection's liveness is in question.
func (l *Listener) sendProbe(ctx context.Context, conn **pgx.Conn, channel string, seq uint64, deadline time.Time) error {
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	payload := l.probeTag + strconv.FormatUint(seq, 10)
	for {
		fresh := *conn == nil
		if fresh {
			c, err := dial(ctx, l.probeURL, l.cfg.AppName+"-probe", l.cfg.ConnectTimeout)
			if err != nil {
				return fmt.Errorf("probe: connect: %w", err)
			}
			*conn = c
		}
		_, err := (*conn).Exec(ctx, `SELECT pg_notify($1, $2)`, channel, payload)
		if err == nil {
			return nil
		}
		closeConn(*conn)
		*conn = nil
		if fresh || ctx.Err() != nil {
			return fmt.Errorf("probe: notify: %w", err)
		}
	}
}

// waitHeard waits until probe seq is heard back or the deadline passes.
func (l *Listener) waitHeard(ctx context.Context, seq uint64, deadline time.Time) bool {
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	for l.heardSeq.Load() < seq {
		select {
		case <-l.heard:
		case <-t.C:
			return l.heardSeq.Load() >= seq
		case <-ctx.Done():
			return false
		}
	}
	return true
}

// kill drops session s if it is still the current one: its deadline is set to now, so the
// read pgxlisten is blocked in (or the next one) fails at once and pgxlisten reconnects.
// No bytes need to cross the dead network for that.
func (l *Listener) kill(ctx context.Context, s *session, reason error) {
	l.mu.Lock()
	if l.cur != s {
		l.mu.Unlock()
		return
	}
	l.listening, l.cur, l.killed = false, nil, reason
	l.mu.Unlock()
	l.log.WarnContext(ctx, "listener: no proof of life, dropping the connection", slog.Any("error", reason))
	_ = s.conn.PgConn().Conn().SetDeadline(time.Now())
}
