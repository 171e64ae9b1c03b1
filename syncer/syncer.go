package syncer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"

	"github.com/beamline/registry-syncer/changelog"
	"github.com/beamline/registry-syncer/fleet"
	"github.com/beamline/registry-syncer/leadership"
	"github.com/beamline/registry-syncer/protocol"
	"github.com/beamline/registry-syncer/publisher"
	"github.com/beamline/registry-syncer/signingkey"
)

// Roles of a syncer process, as /readyz reports them.
const (
	RoleStarting = "starting" // not yet in touch with the database
	RoleStandby  = "standby"  // another syncer holds the lease; this one is ready to take over
	RoleLeader   = "leader"   // this syncer holds the lease and publishes
)

// Status is what /readyz and the admin endpoint report.
type Status struct {
	Role             string `json:"role"`
	Leader           bool   `json:"leader"`
	Term             int64  `json:"term,omitempty"`
	Source           string `json:"source"`
	Revision         int64  `json:"revision"`
	Checksum         string `json:"checksum"`
	ChecksumV2       string `json:"checksum_v2"`
	Extensions       int    `json:"extensions"`
	DatabaseRevision int64  `json:"database_revision"`
	DatabaseUp       bool   `json:"database_up"`
	NATSConnected    bool   `json:"nats_connected"`
	Listening        bool   `json:"listening"`
	CaughtUp         bool   `json:"caught_up"`
	SnapshotRevision int64  `json:"snapshot_revision"`
	// LastPublishOK is when the leader last heard NATS take a write (a delta stored, or the
	// stream answering the heartbeat's check).
	LastPublishOK time.Time `json:"last_publish_ok,omitzero"`
	// Withheld lists the extensions not published because the database holds a version
	// of them the router side refuses; routers keep their last valid content.
	Withheld []Withheld `json:"withheld,omitempty"`
	Ready    bool       `json:"ready"`
	Reason   string     `json:"reason,omitempty"`
	// Error is what ended the last leadership, until the syncer is caught up again (e.g. a
	// revision that cannot be applied: the syncer stops publishing and retries with backoff).
	Error string `json:"error,omitempty"`
}

// Syncer is one syncer process. Build it with New and call Run. State that lives for one
// leadership term (what was published, the cursor, the history, the snapshot writer) is
// in a term value (term.go), created when the term starts and dropped when it ends.
type Syncer struct {
	cfg Config
	// base is the injected logger with this instance's id; the parts this package starts
	// (listener, leadership) add their own component to it.
	base    *slog.Logger
	log     *slog.Logger
	metrics *Metrics
	nc      *nats.Conn
	pub     *publisher.Publisher
	// keyConfigured: pubCfg.Signer was given (EXTENSION_REGISTRY_SIGNING_KEY); otherwise
	// useKey sets pub's signer at every term from the database (or, without one, a key of
	// this process); keySeed is the seed signed with so far. Owned by the Run goroutine.
	keyConfigured bool
	keySeed       []byte

	poolOnce sync.Once
	pool     *pgxpool.Pool
	poolErr  error

	// highWater is the highest revision this process ever published or saw published, in
	// any term: a new timeline is published above it.
	highWater atomic.Int64

	force chan chan error

	// fleet is the current term's view of the routers (nil while not leading).
	fleet atomic.Pointer[fleet.Fleet]

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
	base := log.With("instance", cfg.InstanceID)
	s := &Syncer{cfg: cfg, base: base, log: base.With("component", "syncer"), metrics: metrics,
		nc: nc, pub: pub, force: make(chan chan error), keyConfigured: pubCfg.Signer != nil}
	s.status.Source, s.status.Role, s.status.SnapshotRevision = cfg.Source, RoleStarting, -1
	return s, nil
}

// Status returns a copy of the current status. Ready means this process can do its
// role: a standby is ready while it reaches the database and NATS (it can take over); the
// leader while it listens, has caught up, has a snapshot published and NATS took a write
// within two heartbeat intervals.
func (s *Syncer) Status() Status {
	s.mu.Lock()
	st := s.status
	s.mu.Unlock()
	st.NATSConnected = s.nc.IsConnected()
	st.Reason = ""
	switch {
	case st.Role == RoleLeader:
		// Two heartbeat intervals (each runs a stream check), at least a second: a check
		// on a loaded machine can take longer than a very short test interval.
		fresh := !st.LastPublishOK.IsZero() && time.Since(st.LastPublishOK) <= max(2*s.cfg.HeartbeatInterval, time.Second)
		switch {
		case st.Error != "" && !st.CaughtUp:
			st.Reason = "not publishing, retrying after: " + st.Error
		case !st.NATSConnected:
			st.Reason = "leader: NATS is not connected"
		case !st.Listening:
			st.Reason = "leader: LISTEN not confirmed"
		case !st.CaughtUp:
			st.Reason = "leader: catching up with the change log"
		case st.SnapshotRevision < 0:
			st.Reason = "leader: no snapshot published yet"
		case !fresh:
			st.Reason = "leader: NATS has not taken a write for two heartbeat intervals"
		case len(st.Withheld) > 0:
			ids := make([]string, len(st.Withheld))
			for i, w := range st.Withheld {
				ids[i] = w.ID
			}
			st.Reason = fmt.Sprintf("leader: withholding %d invalid extension(s), every other change is published: %s", len(ids), strings.Join(ids, ", "))
		}
	case st.Role == RoleStandby:
		switch {
		case !st.DatabaseUp:
			st.Reason = "standby: the database does not answer"
		case !st.NATSConnected:
			st.Reason = "standby: NATS is not connected"
		}
	case st.Error != "":
		st.Reason = "not publishing, retrying after: " + st.Error
	default:
		st.Reason = "starting: the database has not answered yet"
	}
	st.Ready = st.Reason == ""
	return st
}

func (s *Syncer) update(f func(*Status)) {
	s.mu.Lock()
	f(&s.status)
	s.mu.Unlock()
}

// ErrNotLeader is returned by what only the leading syncer can answer.
var ErrNotLeader = errors.New("not the leader: only the leading syncer keeps the fleet view")

// Fleet returns the leader's view of the routers with the database and published
// revisions (GET /admin/routers, the P.status request).
func (s *Syncer) Fleet() (*protocol.FleetStatus, error) {
	f := s.fleet.Load()
	if f == nil {
		return nil, ErrNotLeader
	}
	st := s.Status()
	fs := &protocol.FleetStatus{Syncer: s.cfg.InstanceID, Time: time.Now().UTC(), DatabaseRevision: st.DatabaseRevision,
		PublishedRevision: st.Revision, PublishedChecksum: st.Checksum, PublishedChecksumV2: st.ChecksumV2, Routers: f.Routers(time.Now())}
	for _, w := range st.Withheld {
		fs.Withheld = append(fs.Withheld, protocol.WithheldExtension{ID: w.ID, Reason: w.Reason, SinceRevision: w.Since})
	}
	return fs, nil
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
		// No JIT: the syncer's queries are short, and PostgreSQL's cost estimates for the
		// change-log read grow with the audit log until JIT compiles it on every read
		// (measured: 130 ms of a 150 ms read at 100,000 audit rows, for 10 rows).
		cfg.ConnConfig.RuntimeParams["jit"] = "off"
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
	_, err = changelog.Counter(ctx, pool)
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

// useKey gives the publisher its signing key before a term starts, unless one was
// configured: the registry's key from the database (pool), generated and stored there by
// the first syncer that needs one; without a database (fixtures), a key generated for this
// process. The key signed with so far is offered to the database, so that it stays the
// registry's key when the database had none (source auto, a re-created database).
func (s *Syncer) useKey(ctx context.Context, pool *pgxpool.Pool) error {
	if s.keyConfigured || (pool == nil && s.pub.Signer() != nil) {
		return nil
	}
	var signer *protocol.Signer
	var err error
	if pool == nil {
		signer, s.keySeed, err = protocol.GenerateSigner()
		if err != nil {
			return err
		}
		s.log.WarnContext(ctx, "syncer: no EXTENSION_REGISTRY_SIGNING_KEY and no database: signing with a key of this process (routers trust it until they restart)",
			"public_key", signer.PublicKey())
	} else {
		kctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		var seed []byte
		signer, seed, err = signingkey.FromDatabase(kctx, pool, s.keySeed)
		cancel()
		if err != nil {
			return err // keySeed stays: it is offered again at the next term
		}
		s.keySeed = seed
		if cur := s.pub.Signer(); cur != nil {
			if cur.PublicKey() == signer.PublicKey() {
				return nil
			}
			s.log.WarnContext(ctx, "syncer: the database holds another signing key than the one signed with so far; routers that trust only the old key refuse what follows",
				"old_public_key", cur.PublicKey(), "public_key", signer.PublicKey())
		}
		s.log.InfoContext(ctx, "syncer: signing with the registry's key from the database", "public_key", signer.PublicKey())
	}
	s.pub = s.pub.WithSigner(signer)
	return nil
}

// runDatabase takes the leadership, leads for one term until it is lost or fails, and
// starts over.
func (s *Syncer) runDatabase(ctx context.Context) error {
	pool, err := s.Pool()
	if err != nil {
		return err
	}
	el, err := leadership.New(pool, leadership.Config{Holder: s.cfg.InstanceID, TTL: s.cfg.LeaderTTL}, s.base)
	if err != nil {
		return err
	}
	attempt := 0
	for ctx.Err() == nil {
		lease, err := s.acquire(ctx, el)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		progressed := false
		if err = s.useKey(ctx, pool); err == nil {
			t := newTerm(s, lease)
			err = t.lead(ctx)
			t.stop()
			progressed = t.caughtUpOnce
		}
		lease.Release()
		s.update(func(st *Status) {
			// Not a standby until another syncer is seen leading: this one may be the only
			// one, failing (Error says why) and about to try again.
			st.Role, st.Leader, st.Term, st.Listening, st.CaughtUp = RoleStarting, false, 0, false, false
			st.SnapshotRevision, st.LastPublishOK, st.Withheld = -1, time.Time{}, nil
			if err != nil && ctx.Err() == nil {
				st.Error = err.Error()
			}
		})
		s.metrics.Leader.Set(0)
		if ctx.Err() != nil {
			return nil
		}
		if fatalNATS(err) {
			return err // refuse to run: the error names the server and what it lacks
		}
		if errors.Is(err, errNewTimeline) {
			// Not a failure: the next term publishes the database's timeline at once.
			s.log.WarnContext(ctx, "syncer: the database is on a new timeline; starting a new term to publish it", "error", err)
			attempt = 0
			continue
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
	}
	return nil
}

// acquire waits until this process holds the lease, keeping the standby's status true.
func (s *Syncer) acquire(ctx context.Context, el *leadership.Elector) (*leadership.Term, error) {
	logged := false
	attempt := 0
	for {
		lease, err := el.TryAcquire(ctx)
		s.metrics.DatabaseUp.Set(boolGauge(err == nil))
		if lease != nil {
			s.log.InfoContext(ctx, "syncer: acquired leadership", "term", lease.Number)
			s.update(func(st *Status) {
				st.Role, st.Leader, st.Term, st.DatabaseUp, st.Source = RoleLeader, true, lease.Number, true, SourceDatabase
			})
			s.metrics.Leader.Set(1)
			return lease, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		wait := s.cfg.LeaderRetry
		if err != nil {
			attempt++
			wait = backoff(attempt)
			s.log.WarnContext(ctx, "syncer: cannot reach the database for the leadership lease", "error", err, "attempt", attempt, "sleep_duration", wait)
			s.update(func(st *Status) {
				st.DatabaseUp = false
				if st.Role == RoleStarting {
					st.Error = err.Error()
				}
			})
		} else {
			attempt = 0
			// Another syncer holds the lease: this one is a healthy standby, whatever ended
			// its own last term.
			s.update(func(st *Status) { st.Role, st.DatabaseUp, st.Error = RoleStandby, true, "" })
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
