package syncer

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"

	"github.com/beamline/registry-syncer/cache"
	"github.com/beamline/registry-syncer/publisher"
)

// Status is what /readyz and the admin endpoint report.
type Status struct {
	Leader           bool   `json:"leader"`
	Source           string `json:"source"`
	Revision         int64  `json:"revision"`
	Checksum         string `json:"checksum"`
	Extensions       int    `json:"extensions"`
	DatabaseRevision int64  `json:"database_revision"`
	Listening        bool   `json:"listening"`
	CaughtUp         bool   `json:"caught_up"`
	SnapshotRevision int64  `json:"snapshot_revision"`
	Ready            bool   `json:"ready"`
	Reason           string `json:"reason,omitempty"`
	// Error is what ended the last leadership, until the syncer is caught up again (e.g. a
	// revision that cannot be applied: the syncer stops publishing and retries with backoff).
	Error string `json:"error,omitempty"`
}

// Syncer is one syncer process. Build it with New and call Run.
type Syncer struct {
	cfg     Config
	log     *slog.Logger
	metrics *Metrics
	nc      *nats.Conn
	pub     *publisher.Publisher

	poolOnce sync.Once
	pool     *pgxpool.Pool
	poolErr  error

	// Owned by the goroutine that publishes (one lead or fixtures loop at a time).
	snap    *cache.Snapshot
	cursor  int64
	history *history
	lastSeq uint64 // highest delta-stream sequence this leadership stored at (0: none yet)
	// pending is the rest of a change-log batch a time-bounded catch-up round did not
	// publish; it continues the cursor pendingAfter.
	pending      []revision
	pendingAfter int64

	latest    atomic.Pointer[cache.Snapshot] // newest published state, for the snapshot writer
	snapWake  chan struct{}
	snapForce atomic.Bool
	snapMu    sync.Mutex
	written   atomic.Int64 // revision of the last snapshot written (-1: none)

	force chan chan error

	mu     sync.Mutex
	status Status
}

// New validates cfg and prepares a syncer publishing on nc.
func New(cfg Config, nc *nats.Conn, pubCfg publisher.Config, log *slog.Logger, metrics *Metrics) (*Syncer, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	pub, err := publisher.New(nc, pubCfg)
	if err != nil {
		return nil, err
	}
	if metrics == nil {
		metrics = NewMetrics(nil)
	}
	s := &Syncer{cfg: cfg, log: log.With("component", "syncer", "instance", cfg.InstanceID), metrics: metrics,
		nc: nc, pub: pub, history: newHistory(cfg.History), snapWake: make(chan struct{}, 1),
		force: make(chan chan error)}
	s.written.Store(-1)
	s.status.Source = cfg.Source
	return s, nil
}

// Status returns a copy of the current status.
func (s *Syncer) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.status
	st.SnapshotRevision = s.written.Load()
	st.Ready, st.Reason = st.Leader && st.Listening && st.CaughtUp && st.SnapshotRevision >= 0, ""
	switch {
	case st.Ready:
	case st.Error != "":
		st.Reason = "not publishing, retrying after: " + st.Error
	case !st.Leader:
		st.Reason = "standby: another syncer holds the leadership (or none acquired yet)"
	case !st.Listening:
		st.Reason = "LISTEN not confirmed"
	case !st.CaughtUp:
		st.Reason = "catching up with the change log"
	case st.SnapshotRevision < 0:
		st.Reason = "no snapshot published yet"
	}
	return st
}

func (s *Syncer) update(f func(*Status)) {
	s.mu.Lock()
	f(&s.status)
	s.mu.Unlock()
}

// ForceSync asks the leader for a full sync (reconcile and repair) and waits for it.
func (s *Syncer) ForceSync(ctx context.Context) error {
	done := make(chan error, 1)
	select {
	case s.force <- done:
	case <-ctx.Done():
		return fmt.Errorf("force sync: not the leader or busy: %w", ctx.Err())
	}
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Pool returns the database pool (created on first use).
func (s *Syncer) Pool() (*pgxpool.Pool, error) {
	s.poolOnce.Do(func() {
		cfg, err := pgxpool.ParseConfig(s.cfg.DatabaseURL)
		if err != nil {
			s.poolErr = fmt.Errorf("database URL: %w", err)
			return
		}
		cfg.ConnConfig.RuntimeParams["application_name"] = "registry-syncer"
		cfg.MaxConns = 4
		s.pool, s.poolErr = pgxpool.NewWithConfig(context.Background(), cfg)
	})
	return s.pool, s.poolErr
}

// Run runs until ctx ends. It returns nil on a clean shutdown.
func (s *Syncer) Run(ctx context.Context) error {
	defer func() {
		if s.pool != nil {
			s.pool.Close()
		}
	}()
	var wg sync.WaitGroup
	wctx, stopWriter := context.WithCancel(context.WithoutCancel(ctx))
	wg.Add(1)
	go func() { defer wg.Done(); s.snapshotWriter(wctx) }()
	defer func() {
		// Let the writer finish the in-flight snapshot, then stop it.
		stopWriter()
		wg.Wait()
	}()

	switch s.cfg.Source {
	case SourceFixtures:
		if err := s.runFixtures(ctx); ctx.Err() == nil {
			return err
		}
		return nil
	case SourceDatabase:
		return s.runDatabase(ctx)
	}
	// auto: fixtures while the database is unreachable, then the database for good.
	if err := s.pingDB(ctx); err != nil {
		s.log.WarnContext(ctx, "syncer: database unreachable at start, serving fixtures until it answers", "error", err)
		fctx, cancel := context.WithCancel(ctx)
		go func() {
			defer cancel()
			for {
				select {
				case <-fctx.Done():
					return
				case <-time.After(s.cfg.DatabaseRetry):
				}
				if s.pingDB(fctx) == nil {
					s.log.InfoContext(fctx, "syncer: database answers, switching source to database")
					return
				}
			}
		}()
		err := s.runFixtures(fctx)
		cancel()
		if ctx.Err() != nil {
			return nil
		}
		if err != nil && !errors.Is(err, context.Canceled) {
			return err
		}
	}
	return s.runDatabase(ctx)
}

func (s *Syncer) pingDB(ctx context.Context) error {
	pool, err := s.Pool()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	_, err = counter(ctx, pool)
	s.metrics.DatabaseUp.Set(boolGauge(err == nil))
	return err
}

func boolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// sleep waits d or until ctx ends; it reports whether ctx is still alive.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func backoff(attempt int) time.Duration {
	d := 100 * time.Millisecond
	for i := 1; i < attempt && d < 5*time.Second; i++ {
		d *= 2
	}
	d = min(d, 5*time.Second)
	return d/2 + time.Duration(rand.Int64N(int64(d/2)+1))
}

// runDatabase takes the leadership, leads until it is lost or fails, and starts over.
func (s *Syncer) runDatabase(ctx context.Context) error {
	pool, err := s.Pool()
	if err != nil {
		return err
	}
	attempt := 0
	for ctx.Err() == nil {
		lock, err := s.acquireLeadership(ctx, pool)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		leadCtx, cancel := context.WithCancel(ctx)
		lost := make(chan error, 1)
		go func() { lost <- lock.watch(leadCtx, cancel) }()
		err = s.lead(leadCtx)
		cancel()
		<-lost
		lock.release()
		progressed := false
		s.update(func(st *Status) {
			progressed = st.CaughtUp
			st.Leader, st.Listening, st.CaughtUp = false, false, false
			if err != nil && ctx.Err() == nil {
				st.Error = err.Error()
			}
		})
		s.metrics.Leader.Set(0)
		if ctx.Err() != nil {
			return nil
		}
		if progressed {
			// This leadership worked until it ended: start the backoff over (lead never
			// returns nil, so without this every later failover would wait up to 5s).
			attempt = 0
		}
		attempt++
		d := backoff(attempt)
		s.log.WarnContext(ctx, "syncer: leadership ended, starting over", "error", err, "attempt", attempt, "sleep_duration", d)
		if !sleep(ctx, d) {
			return nil
		}
		if err == nil {
			attempt = 0
		}
	}
	return nil
}

// leaderLock is the advisory lock held on a dedicated connection.
type leaderLock struct {
	conn *pgx.Conn
	key  int64
	log  *slog.Logger
}

func (s *Syncer) acquireLeadership(ctx context.Context, pool *pgxpool.Pool) (*leaderLock, error) {
	logged := false
	attempt := 0
	for {
		l, ok, err := tryLock(ctx, s.cfg.DatabaseURL)
		s.metrics.DatabaseUp.Set(boolGauge(err == nil))
		if err == nil && ok {
			l.log = s.log
			s.log.InfoContext(ctx, "syncer: acquired leadership")
			return l, nil
		}
		wait := s.cfg.LeaderRetry
		if err != nil {
			attempt++
			wait = backoff(attempt)
			s.log.WarnContext(ctx, "syncer: cannot reach the database for the leadership lock", "error", err, "attempt", attempt, "sleep_duration", wait)
		} else {
			attempt = 0
			if !logged {
				s.log.InfoContext(ctx, "syncer: standby, another syncer leads")
				logged = true
			}
		}
		if !sleep(ctx, wait) {
			return nil, ctx.Err()
		}
	}
}

func tryLock(ctx context.Context, url string) (*leaderLock, bool, error) {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, false, err
	}
	cfg.RuntimeParams["application_name"] = "registry-syncer-leader"
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(cctx, cfg)
	if err != nil {
		return nil, false, err
	}
	var schema string
	if err := conn.QueryRow(cctx, `SELECT current_schema()`).Scan(&schema); err != nil {
		conn.Close(context.Background())
		return nil, false, err
	}
	h := fnv.New64a()
	h.Write([]byte("registry-syncer-leader:" + schema))
	key := int64(h.Sum64() >> 1)
	var ok bool
	if err := conn.QueryRow(cctx, `SELECT pg_try_advisory_lock($1)`, key).Scan(&ok); err != nil {
		conn.Close(context.Background())
		return nil, false, err
	}
	if !ok {
		conn.Close(context.Background())
		return nil, false, nil
	}
	return &leaderLock{conn: conn, key: key}, true, nil
}

// watch pings the lock connection every second; when it fails, the lock may be gone, so
// the leader must stop publishing at once (cancel).
func (l *leaderLock) watch(ctx context.Context, cancel context.CancelFunc) error {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
		err := l.conn.Ping(pctx)
		pcancel()
		if err != nil && ctx.Err() == nil {
			l.log.WarnContext(ctx, "syncer: leadership connection lost, stepping down", "error", err)
			cancel()
			return err
		}
	}
}

func (l *leaderLock) release() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, _ = l.conn.Exec(ctx, `SELECT pg_advisory_unlock($1)`, l.key)
	l.conn.Close(ctx)
}
