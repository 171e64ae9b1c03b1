// Package client is the router side of the registry: it bootstraps from the durable snapshot, follows deltas in revision order, detects gaps and re-bootstraps, verifies every payload, and serves lock-free lookups.
//
// # Disabled extensions
//
// A disabled extension is part of the registry (it is in Snapshot().All() and
// Snapshot().Get with Enabled false, and it counts in the checksum) but it is
// never invoked: Lookup and ByType do not return it. There is no other mode.
//
// # How it follows the registry
//
// Start subscribes to the live and heartbeat subjects before anything is read,
// so that a delta committed while the snapshot is read waits in the buffer and
// is then ignored (already in the snapshot) or applied. A delta applies only on
// top of the revision it names (prev_revision) and only if the result has the
// delta's checksum and count. A gap (a delta or heartbeat ahead of the served
// revision, messages dropped because the buffer was full) is bridged with the
// stored deltas, walking back from the newest one through prev_revision links
// (revision numbers may jump); when one is missing, or a resync delta or drift
// requires it, the client reads the stored snapshot again, retrying with
// backoff until it is recent enough, and then applies the deltas stored after
// it. A payload that fails to decode or verify is rejected: the last good
// snapshot stays, Config.OnError hears of it and the client resyncs. Everything
// is read with JetStream direct gets: the client never creates a consumer.
//
// # Signatures
//
// Every delta, heartbeat and manifest must carry a valid Ed25519 signature by
// a trusted key (PROTOCOL.md §9): Config.TrustedKeys, or, when none are
// configured, the key of the record the syncer stores with its streams, read
// and trusted at the first bootstrap. Nothing unsigned or signed by another
// key is applied or acted upon; it is rejected like any unverifiable payload.
// Whatever arrives, the client keeps following the registry: live deltas that
// extend the served revision apply even while a resync is pending, new
// resyncs are rate limited, and a target the streams do not hold is given up
// after 30 s.
//
// # Reads
//
// Lookup, ByType, Snapshot, Revision and Ready read one atomic pointer: they
// take no lock and do not allocate, so they can sit on a router's hot path.
// The extensions they return are shared and must not be modified.
package client

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/beamline/registry-syncer/cache"
	"github.com/beamline/registry-syncer/protocol"
)

// ErrRejected is wrapped by every error reporting a payload the client refused
// (undecodable, invalid, not applicable, or failing checksum verification).
// The client keeps serving its last good snapshot and resyncs.
var ErrRejected = errors.New("client: payload rejected")

// Config configures a Client. Zero values take the documented defaults.
type Config struct {
	// Prefix of every registry subject; it must match the syncer's
	// (default protocol.DefaultPrefix, "beamline.registry").
	Prefix string

	// Logger receives the client's logs (default: discarded).
	Logger *slog.Logger

	// OnChange, when set, is called after every snapshot the client installs,
	// with the snapshot it replaced (nil the first time), the new one, and the
	// sorted ids of the extensions whose aggregate differs (nil when none; every
	// id the first time). It is called from the client's single goroutine, in
	// install order, and must not block for long: live messages queue meanwhile.
	OnChange func(old, new *cache.Snapshot, changed []string)

	// OnError, when set, is called with every payload the client rejected (the
	// error wraps ErrRejected) and with every failure of Fallback. It is called
	// from the client's goroutine.
	OnError func(error)

	// Fallback, when set, provides a snapshot to serve when the first bootstrap
	// has failed for FallbackAfter (typically the router's fixture files). It is
	// installed with Source() "fixtures" and replaced by the first snapshot read
	// from the registry, whatever their revisions.
	Fallback func() (*cache.Snapshot, error)

	// FallbackAfter is how long the first bootstrap may fail before Fallback is
	// used (default 5s).
	FallbackAfter time.Duration

	// RequestTimeout bounds each JetStream direct get (default 2s); a snapshot
	// read gets one RequestTimeout per chunk plus one for the manifest.
	RequestTimeout time.Duration

	// BufferSize is how many live and heartbeat messages may wait while the
	// client is busy (default 4096), and BufferBytes how many bytes they may
	// take (default 64 MiB: payloads, headers and subjects). Messages beyond
	// either are dropped, never blocking the NATS connection; the client
	// notices and catches up from the stream.
	BufferSize  int
	BufferBytes int

	// TrustedKeys are the public NKeys (U…) whose signatures the client accepts on
	// deltas, manifests and heartbeats (two during a key rotation; PROTOCOL.md §9).
	// Empty: the client trusts the public key record the syncer stores with its streams
	// when it first bootstraps (trust on first use) and, from then on, only that key.
	// Whatever is configured, nothing unsigned or signed by another key is applied.
	TrustedKeys []string

	// WaitBootstrap makes Start block until a first snapshot (or the Fallback)
	// is installed. By default Start returns at once and bootstraps in the
	// background, Ready reporting false meanwhile.
	WaitBootstrap bool

	// RouterID names this router in its reports (default host:pid). Reports go to
	// Names.Report(RouterID) (PROTOCOL.md §3.7).
	RouterID string

	// ReportInterval is the period of the router's reports (default 5s); a report also
	// goes out whenever a revision is installed.
	ReportInterval time.Duration

	// StaleAfter is how long without a valid delta or heartbeat the client reports
	// itself stale (default 10s; at least 5 of the syncer's heartbeat intervals).
	StaleAfter time.Duration

	// CallStats, when set, provides the per-extension call statistics since the previous
	// report (keyed by extension id), sent in each report's "calls".
	CallStats func() map[string]json.RawMessage
}

// WithDefaults returns c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	c.Prefix = cmp.Or(c.Prefix, protocol.DefaultPrefix)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	c.FallbackAfter = cmp.Or(c.FallbackAfter, 5*time.Second)
	c.RequestTimeout = cmp.Or(c.RequestTimeout, 2*time.Second)
	c.BufferSize = cmp.Or(c.BufferSize, 4096)
	c.BufferBytes = cmp.Or(c.BufferBytes, 64<<20)
	if c.RouterID == "" {
		c.RouterID = defaultRouterID()
	}
	c.ReportInterval = cmp.Or(c.ReportInterval, 5*time.Second)
	c.StaleAfter = cmp.Or(c.StaleAfter, 10*time.Second)
	return c
}

func (c Config) validate() error {
	var errs []error
	if _, err := protocol.NewNames(c.Prefix); err != nil {
		errs = append(errs, fmt.Errorf("client: Config.Prefix: %w", err))
	}
	if c.FallbackAfter < 0 {
		errs = append(errs, fmt.Errorf("client: Config.FallbackAfter must not be negative (got %s)", c.FallbackAfter))
	}
	if c.RequestTimeout < time.Millisecond {
		errs = append(errs, fmt.Errorf("client: Config.RequestTimeout must be at least 1ms (got %s)", c.RequestTimeout))
	}
	if len(c.RouterID) > 256 {
		errs = append(errs, fmt.Errorf("client: Config.RouterID must be at most 256 bytes (got %d)", len(c.RouterID)))
	}
	if c.ReportInterval < 10*time.Millisecond {
		errs = append(errs, fmt.Errorf("client: Config.ReportInterval must be at least 10ms (got %s)", c.ReportInterval))
	}
	if c.StaleAfter <= 0 {
		errs = append(errs, fmt.Errorf("client: Config.StaleAfter must be positive (got %s)", c.StaleAfter))
	}
	if c.BufferSize < 1 {
		errs = append(errs, fmt.Errorf("client: Config.BufferSize must be positive (got %d)", c.BufferSize))
	}
	if c.BufferBytes < 1<<10 {
		errs = append(errs, fmt.Errorf("client: Config.BufferBytes must be at least 1024 (got %d)", c.BufferBytes))
	}
	if len(c.TrustedKeys) > 0 {
		if _, err := protocol.NewTrust(c.TrustedKeys...); err != nil {
			errs = append(errs, fmt.Errorf("client: Config.TrustedKeys: %w", err))
		}
	}
	return errors.Join(errs...)
}

// Client keeps a verified local copy of the registry. Create it with New, run
// it with Start, end it with Stop. Its read methods are safe for concurrent use.
type Client struct {
	nc     *nats.Conn
	cfg    Config
	log    *slog.Logger
	names  protocol.Names
	reader *protocol.Reader // its Trust is set once (configured, or on first bootstrap) by the run goroutine
	trust  atomic.Pointer[protocol.Trust]

	snap        atomic.Pointer[cache.Snapshot]
	fallback    atomic.Pointer[cache.Snapshot] // the installed Fallback snapshot, if any
	lastHeard   atomic.Int64                   // unix nanoseconds of the last valid delta or heartbeat
	heartbeatMS atomic.Int64                   // interval_ms of the last valid heartbeat (0: none yet)
	startedAt   atomic.Int64                   // unix nanoseconds of Start
	ready       chan struct{}                  // closed at the first install

	resyncs    atomic.Uint64
	rejections atomic.Uint64
	applied    atomic.Uint64
	catchUps   [2]atomic.Uint64 // catch-ups that chose the chain of stored deltas, the snapshot (sync.go pathChain, pathSnapshot)
	metrics    *collector
	report     *reporter
	calls      atomic.Pointer[invoker] // invocation state (invoke.go), created on first use

	mu      sync.Mutex // guards the lifecycle fields below
	state   int        // stateNew, stateStarted, stateStopped
	cancel  context.CancelFunc
	done    chan struct{}
	msgs    *liveQueue
	subs    []*nats.Subscription
	stopped chan struct{} // closed by Stop, so that Start(WaitBootstrap) returns

	loop loopState // owned by the run goroutine

	// testBeforeBootstrap, when set by a test, runs after the subscriptions are
	// active and before the first snapshot read.
	testBeforeBootstrap func()
	// goalTimeout is how long an unreachable resync target is chased
	// (defaultGoalTimeout; tests shorten it before Start).
	goalTimeout time.Duration
	// chainBytes bounds the stored deltas held to bridge one gap (maxChainBytes;
	// tests lower it before Start).
	chainBytes int
}

const (
	stateNew = iota
	stateStarted
	stateStopped
)

// New validates cfg and prepares a client on nc (which the caller owns and
// closes). Call Start to run it.
func New(nc *nats.Conn, cfg Config) (*Client, error) {
	if nc == nil {
		return nil, errors.New("client: nil *nats.Conn")
	}
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	names, err := protocol.NewNames(cfg.Prefix)
	if err != nil {
		return nil, err
	}
	c := &Client{
		nc:      nc,
		cfg:     cfg,
		log:     cfg.Logger,
		names:   names,
		reader:  &protocol.Reader{NC: nc, Names: names},
		ready:   make(chan struct{}),
		stopped: make(chan struct{}),

		goalTimeout: defaultGoalTimeout,
		chainBytes:  maxChainBytes,
	}
	if len(cfg.TrustedKeys) > 0 {
		t, err := protocol.NewTrust(cfg.TrustedKeys...)
		if err != nil {
			return nil, fmt.Errorf("client: Config.TrustedKeys: %w", err)
		}
		c.reader.Trust = t
		c.trust.Store(t)
	}
	c.metrics = newCollector(c)
	c.report = newReporter()
	return c, nil
}

// Start subscribes to the live and heartbeat subjects and starts following the
// registry in the background, until Stop is called or ctx ends. It fails fast
// when the NATS connection is closed, the server does not confirm the
// subscriptions within RequestTimeout, or the server cannot serve the registry:
// older than protocol.MinServerVersion (the error wraps
// protocol.ErrUnsupportedServer) or without JetStream (protocol.ErrNoJetStream).
// With Config.WaitBootstrap it then waits for the first snapshot (or the
// Fallback), returning ctx's error if ctx ends first. A client can be started
// once.
func (c *Client) Start(ctx context.Context) error {
	c.mu.Lock()
	if c.state != stateNew {
		c.mu.Unlock()
		return errors.New("client: start: already started or stopped")
	}
	if err := c.subscribe(); err != nil {
		c.mu.Unlock()
		return err
	}
	if err := c.checkServer(ctx); err != nil {
		unsubscribe(c.subs)
		c.msgs.close()
		c.msgs, c.subs = nil, nil
		c.mu.Unlock()
		return err
	}
	c.startedAt.Store(time.Now().UnixNano())
	runCtx, cancel := context.WithCancel(ctx)
	c.cancel = cancel
	c.done = make(chan struct{})
	c.state = stateStarted
	go c.run(runCtx)
	c.mu.Unlock()

	if !c.cfg.WaitBootstrap {
		return nil
	}
	select {
	case <-c.ready:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("client: wait for bootstrap: %w", ctx.Err())
	case <-c.stopped:
		return errors.New("client: stopped before the first bootstrap")
	}
}

// subscribe opens both core subscriptions into one channel, so that heartbeats
// and deltas are seen in the order the server delivered them, and waits for
// the server to confirm them: whatever is published after Start returns is
// buffered. Called with c.mu held.
func (c *Client) subscribe() error {
	if c.nc.IsClosed() || c.nc.IsDraining() {
		return fmt.Errorf("client: start: NATS connection is %s", c.nc.Status())
	}
	msgs := newLiveQueue(c.cfg.BufferSize, c.cfg.BufferBytes)
	var subs []*nats.Subscription
	for _, subject := range []string{c.names.Live(), c.names.Heartbeat()} {
		sub, err := c.nc.ChanSubscribe(subject, msgs.in)
		if err != nil {
			unsubscribe(subs)
			msgs.close()
			return fmt.Errorf("client: start: subscribe %s: %w", subject, err)
		}
		subs = append(subs, sub)
	}
	if err := c.nc.FlushTimeout(c.cfg.RequestTimeout); err != nil {
		unsubscribe(subs)
		msgs.close()
		return fmt.Errorf("client: start: NATS does not answer: %w", err)
	}
	c.msgs, c.subs = msgs, subs
	return nil
}

// checkServer refuses a server the registry cannot work with (older than
// protocol.MinServerVersion, or without JetStream): the client would otherwise retry
// its bootstrap forever. Any other failure of the check is only logged: the bootstrap
// retries on its own.
func (c *Client) checkServer(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
	defer cancel()
	err := protocol.CheckServer(ctx, c.nc)
	if errors.Is(err, protocol.ErrUnsupportedServer) || errors.Is(err, protocol.ErrNoJetStream) {
		return fmt.Errorf("client: start: %w", err)
	}
	if err != nil {
		c.log.WarnContext(ctx, "client: cannot check the NATS server yet; bootstrapping anyway", slog.Any("error", err))
	}
	return nil
}

func unsubscribe(subs []*nats.Subscription) {
	for _, s := range subs {
		_ = s.Unsubscribe() // fails only if the connection is already closed
	}
}

// Stop ends the client and waits for its goroutine to finish. The last
// snapshot stays readable. Stop may be called more than once, concurrently, and
// without Start.
func (c *Client) Stop() {
	c.mu.Lock()
	switch c.state {
	case stateNew:
		c.state = stateStopped
		close(c.stopped)
		c.mu.Unlock()
		return
	case stateStopped:
		done := c.done
		c.mu.Unlock()
		if done != nil {
			<-done
		}
		return
	}
	c.state = stateStopped
	close(c.stopped)
	c.cancel()
	done := c.done
	c.mu.Unlock()
	<-done
}

// Lookup returns the enabled extension with the given id; a disabled or
// unknown extension, or no snapshot yet, reports false. It takes no lock and
// does not allocate.
func (c *Client) Lookup(id string) (*cache.Extension, bool) {
	s := c.snap.Load()
	if s == nil {
		return nil, false
	}
	return s.Lookup(id)
}

// ByType returns the enabled extensions of a type in ascending id order (nil
// before the first snapshot or for an unknown type). The slice is shared and
// read-only. It takes no lock and does not allocate.
func (c *Client) ByType(typ string) []*cache.Extension {
	s := c.snap.Load()
	if s == nil {
		return nil
	}
	return s.ByType(typ)
}

// Snapshot returns the snapshot being served (nil before the first one).
// Disabled extensions are in its All and Get, with Enabled false. Its Source
// is "fixtures" while the Fallback is served.
func (c *Client) Snapshot() *cache.Snapshot { return c.snap.Load() }

// Revision returns the revision being served (0 before the first snapshot).
func (c *Client) Revision() int64 {
	if s := c.snap.Load(); s != nil {
		return s.Revision()
	}
	return 0
}

// Ready reports whether a snapshot is being served: one read from the registry,
// or the Fallback (then Snapshot().Source() is "fixtures").
func (c *Client) Ready() bool { return c.snap.Load() != nil }

// LastHeard returns when the client last received a valid delta or heartbeat
// (zero if never). With a syncer running, heartbeats keep it within a few
// seconds; a growing gap means the client may be serving stale data.
func (c *Client) LastHeard() time.Time {
	if n := c.lastHeard.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

// Collector returns the client's Prometheus metrics, all named
// registry_client_*, read at scrape time, and beamline_extension_* for the
// calls made through Invoke (callstats.go). Register it once per client; to
// register several clients in one registry, wrap the registerer with a
// distinguishing label (prometheus.WrapRegistererWith).
func (c *Client) Collector() prometheus.Collector { return c.metrics }

// TrustedKeys returns the public keys whose signatures the client accepts: the
// configured ones, or the key it trusted on first bootstrap (nil before that).
func (c *Client) TrustedKeys() []string {
	if t := c.trust.Load(); t != nil {
		return t.Keys()
	}
	return nil
}

func (c *Client) isFallback(s *cache.Snapshot) bool {
	return s != nil && s == c.fallback.Load()
}
