// Package leadership owns the syncer's leader election: one lease row per registry schema
// (registry_leader), whose expiry is set by the database clock, renewed by the leader and
// taken over by a standby once it has expired. A leadership term is a value (Term): it
// tells, by this process's monotonic clock, whether the lease is certainly still held, so
// the leader can fence every write it makes — a deposed leader (frozen, partitioned,
// dead) publishes nothing after its lease could have been taken over.
package leadership

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Config tunes the election. Zero values take the documented defaults.
type Config struct {
	// Holder names this process in the lease row and the logs. Required.
	Holder string
	// TTL is how long a lease lasts after each renewal, by the database clock (default 6s).
	// A leader that stops renewing is replaced about TTL (plus the standby's retry
	// interval) after its last renewal.
	TTL time.Duration
	// RenewInterval is how often the leader renews (default TTL/3).
	RenewInterval time.Duration
}

// WithDefaults fills zero fields.
func (c Config) WithDefaults() Config {
	c.TTL = cmp.Or(c.TTL, 6*time.Second)
	c.RenewInterval = cmp.Or(c.RenewInterval, c.TTL/3)
	return c
}

// Validate reports every invalid field.
func (c Config) Validate() error {
	var errs []error
	if c.Holder == "" {
		errs = append(errs, errors.New("leadership: Holder is required"))
	}
	if c.TTL < 100*time.Millisecond {
		errs = append(errs, fmt.Errorf("leadership: TTL must be at least 100ms (got %s)", c.TTL))
	}
	if c.RenewInterval <= 0 || c.RenewInterval > c.TTL/2 {
		errs = append(errs, fmt.Errorf("leadership: RenewInterval must be positive and at most TTL/2 (got %s with TTL %s)", c.RenewInterval, c.TTL))
	}
	return errors.Join(errs...)
}

// DB is what the elector needs from a pool or a connection.
type DB interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// Elector takes and keeps the lease for one holder.
type Elector struct {
	db  DB
	cfg Config
	log *slog.Logger
}

// New validates cfg and returns an elector on db.
func New(db DB, cfg Config, log *slog.Logger) (*Elector, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Elector{db: db, cfg: cfg, log: log.With("component", "leadership", "holder", cfg.Holder)}, nil
}

// ErrLost is the cause of a term's context when the lease was not renewed in time or was
// taken over.
var ErrLost = errors.New("leadership lost")

// Term is one leadership term, from the acquisition of the lease to its loss or release.
type Term struct {
	// Number is the term's number in the lease row: it grows by one with every new leader.
	Number int64

	e      *Elector
	ctx    context.Context
	cancel context.CancelCauseFunc
	done   chan struct{}

	mu       sync.Mutex
	deadline time.Time // monotonic: the lease is certainly ours before it
	ended    error
}

// safety is the share of the TTL a term gives up before the database could let another
// holder in: it covers clocks running at slightly different rates.
const safety = 10

func (e *Elector) deadlineFrom(sent time.Time) time.Time {
	// The database sets expires_at = now() + TTL, with now() taken after it received the
	// statement, so after `sent`: no other holder can take the lease before sent + TTL.
	return sent.Add(e.cfg.TTL - e.cfg.TTL/safety)
}

const acquireSQL = `
INSERT INTO registry_leader AS l (singleton, holder, term, acquired_at, renewed_at, expires_at)
VALUES (true, $1, 1, now(), now(), now() + make_interval(secs => $2))
ON CONFLICT (singleton) DO UPDATE
    SET holder = excluded.holder, term = l.term + 1, acquired_at = now(), renewed_at = now(),
        expires_at = excluded.expires_at
    WHERE l.expires_at <= now()
RETURNING term`

const renewSQL = `
UPDATE registry_leader SET renewed_at = now(), expires_at = now() + make_interval(secs => $3)
WHERE holder = $1 AND term = $2 AND expires_at > now()
RETURNING term`

const resignSQL = `UPDATE registry_leader SET expires_at = now() WHERE holder = $1 AND term = $2`

// TryAcquire takes the lease if it is free or expired. It returns nil, nil when another
// holder has it.
func (e *Elector) TryAcquire(ctx context.Context) (*Term, error) {
	sent := time.Now()
	qctx, cancel := context.WithTimeout(ctx, e.cfg.TTL/2)
	defer cancel()
	var number int64
	err := e.db.QueryRow(qctx, acquireSQL, e.cfg.Holder, e.cfg.TTL.Seconds()).Scan(&number)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("take the leadership lease: %w", err)
	}
	t := &Term{Number: number, e: e, done: make(chan struct{}), deadline: e.deadlineFrom(sent)}
	t.ctx, t.cancel = context.WithCancelCause(context.WithoutCancel(ctx))
	go t.keep()
	return t, nil
}

// Context ends when the term ends (lost, or released); its cause tells which.
func (t *Term) Context() context.Context { return t.ctx }

// Valid returns nil while the lease is certainly still held: before its deadline by this
// process's monotonic clock (which keeps running while the process is frozen), and not
// ended. Check it immediately before every write a deposed leader must not make.
func (t *Term) Valid() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.ended != nil {
		return t.ended
	}
	if !time.Now().Before(t.deadline) {
		return fmt.Errorf("%w: term %d not renewed in time", ErrLost, t.Number)
	}
	return nil
}

// Deadline is when the lease runs out unless renewed.
func (t *Term) Deadline() time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.deadline
}

func (t *Term) end(err error) {
	t.mu.Lock()
	if t.ended == nil {
		t.ended = err
	}
	t.mu.Unlock()
	t.cancel(err)
}

// keep renews the lease every RenewInterval until the term ends. A renewal that fails is
// retried until the deadline; past it, the term is lost.
func (t *Term) keep() {
	defer close(t.done)
	e := t.e
	timer := time.NewTimer(e.cfg.RenewInterval)
	defer timer.Stop()
	for {
		select {
		case <-t.ctx.Done():
			return
		case <-timer.C:
		}
		deadline := t.Deadline()
		if !time.Now().Before(deadline) {
			e.log.Warn("leadership: lease expired before it could be renewed, stepping down", "term", t.Number)
			t.end(fmt.Errorf("%w: term %d not renewed in time", ErrLost, t.Number))
			return
		}
		sent := time.Now()
		rctx, cancel := context.WithDeadline(t.ctx, deadline)
		var number int64
		err := e.db.QueryRow(rctx, renewSQL, e.cfg.Holder, t.Number, e.cfg.TTL.Seconds()).Scan(&number)
		cancel()
		switch {
		case err == nil:
			t.mu.Lock()
			t.deadline = e.deadlineFrom(sent)
			t.mu.Unlock()
			timer.Reset(e.cfg.RenewInterval)
		case errors.Is(err, pgx.ErrNoRows):
			e.log.Warn("leadership: the lease was taken over or expired, stepping down", "term", t.Number)
			t.end(fmt.Errorf("%w: term %d taken over", ErrLost, t.Number))
			return
		case t.ctx.Err() != nil:
			return
		default:
			// Try again soon, while the lease lasts.
			retry := min(e.cfg.RenewInterval/4, time.Until(deadline))
			if retry <= 0 {
				e.log.Warn("leadership: lease ran out while renewing it failed, stepping down", "term", t.Number, "error", err)
				t.end(fmt.Errorf("%w: term %d not renewed in time: %w", ErrLost, t.Number, err))
				return
			}
			e.log.Warn("leadership: renewing the lease failed, retrying", "term", t.Number, "error", err,
				"lease_left", time.Until(deadline).Round(time.Millisecond), "sleep_duration", retry)
			timer.Reset(retry)
		}
	}
}

// ErrReleased is the cause of a term's context after Release.
var ErrReleased = errors.New("leadership released")

// Release ends the term and, if the lease is still this term's, expires it at once so a
// standby takes over without waiting for the TTL. It blocks until renewal stopped. Safe to
// call twice.
func (t *Term) Release() {
	held := t.Valid() == nil
	t.end(ErrReleased)
	<-t.done
	if !held {
		return
	}
	for attempt := 1; attempt <= 3; attempt++ {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := t.e.db.Exec(ctx, resignSQL, t.e.cfg.Holder, t.Number)
		cancel()
		if err == nil {
			t.e.log.Info("leadership: released", "term", t.Number)
			return
		}
		t.e.log.Warn("leadership: releasing the lease failed", "term", t.Number, "error", err, "attempt", attempt)
	}
}
