// Package syncer runs the registry sync: leadership terms under a lease (leadership/),
// following the change log, publishing one delta per revision and a coalesced snapshot,
// heartbeats, the periodic reconcile that repairs drift under a new revision, the source
// modes (database, fixtures, auto), and repairing a stream that lost what it acknowledged.
package syncer

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/beamline/registry-syncer/health"
	"github.com/beamline/registry-syncer/listener"
)

// Source modes (EXTENSION_REGISTRY_SOURCE).
const (
	SourceDatabase = "database"
	SourceFixtures = "fixtures"
	SourceAuto     = "auto"
)

// Config tunes the syncer. Zero values take the documented defaults.
type Config struct {
	// Source is database (default), fixtures or auto.
	Source string
	// DatabaseURL of the registry (search_path selects the schema). Required unless
	// Source is fixtures.
	DatabaseURL string
	// FixturesDir holds the fixture files for the fixtures and auto sources; empty means
	// the built-in defaults.
	FixturesDir string
	// SyncInterval is the period of the full reconcile (default 60s).
	SyncInterval time.Duration
	// HeartbeatInterval is the period of the heartbeat and of the stream check (default 2s).
	HeartbeatInterval time.Duration
	// SnapshotInterval is the least time between two snapshot writes (default 1s): deltas
	// go out at once, snapshots are coalesced.
	SnapshotInterval time.Duration
	// LeaderRetry is how often a standby tries to take the leadership (default 1s).
	LeaderRetry time.Duration
	// LeaderTTL is the leadership lease's lifetime after each renewal (default 6s): a leader
	// that stops renewing (dead host, frozen process, lost network) stops publishing before
	// it runs out and is replaced about LeaderTTL + LeaderRetry after its last renewal.
	LeaderTTL time.Duration
	// DatabaseRetry is how often the auto source tries the database while serving fixtures
	// (default 2s).
	DatabaseRetry time.Duration
	// History is the number of published deltas kept in memory to republish what the
	// stream lost (default 100,000).
	History int
	// HistoryBytes bounds the same history in bytes (default 16 MiB): the oldest deltas
	// go first once their payloads and bookkeeping exceed it.
	HistoryBytes int64
	// Batch is the number of revisions read from the change log per query (default 500).
	Batch int
	// BatchBytes bounds one change-log read in bytes of change values (default 8 MiB):
	// the read ends before the revision that would pass it, and the next read goes on
	// from there; a single larger revision is read, applied and dropped in pages of this
	// size (revision.forPages).
	BatchBytes int
	// PublishWindow is the number of deltas whose stores may be in flight at once
	// (default 256); they are announced in revision order, each once acknowledged. 1
	// stores one delta and waits for its acknowledgement before the next.
	PublishWindow int
	// PublishWindowBytes bounds the payload bytes of the deltas in flight (default 8 MiB).
	PublishWindowBytes int
	// Listener tunes the LISTEN connection; its URL defaults to DatabaseURL.
	Listener listener.Config
	// InstanceID names this process in heartbeats and logs (default hostname:pid).
	InstanceID string
	// HealthInterval is the period of the control loop (default 5s): the routers' reports
	// merged into extension_health (at most one write per extension per interval) and the
	// automatic management decisions (package health).
	HealthInterval time.Duration
	// Auto is automatic management's policy (package health; off by default). Its
	// AutoEnable has no default here: the daemon's is true.
	Auto health.Policy
}

// WithDefaults fills zero fields.
func (c Config) WithDefaults() Config {
	c.Source = cmp.Or(c.Source, SourceDatabase)
	c.SyncInterval = cmp.Or(c.SyncInterval, 60*time.Second)
	c.HeartbeatInterval = cmp.Or(c.HeartbeatInterval, 2*time.Second)
	c.SnapshotInterval = cmp.Or(c.SnapshotInterval, time.Second)
	c.LeaderRetry = cmp.Or(c.LeaderRetry, time.Second)
	c.LeaderTTL = cmp.Or(c.LeaderTTL, 6*time.Second)
	c.DatabaseRetry = cmp.Or(c.DatabaseRetry, 2*time.Second)
	c.History = cmp.Or(c.History, 100_000)
	c.HistoryBytes = cmp.Or(c.HistoryBytes, 16<<20)
	c.Batch = cmp.Or(c.Batch, 500)
	c.BatchBytes = cmp.Or(c.BatchBytes, 8<<20)
	c.PublishWindow = cmp.Or(c.PublishWindow, 256)
	c.PublishWindowBytes = cmp.Or(c.PublishWindowBytes, 8<<20)
	c.Listener.URL = cmp.Or(c.Listener.URL, c.DatabaseURL)
	c.HealthInterval = cmp.Or(c.HealthInterval, 5*time.Second)
	c.Auto = c.Auto.WithDefaults()
	if c.InstanceID == "" {
		host, _ := os.Hostname()
		c.InstanceID = fmt.Sprintf("%s:%d", cmp.Or(host, "syncer"), os.Getpid())
	}
	return c
}

// Validate reports every invalid field at once.
func (c Config) Validate() error {
	var errs []error
	switch c.Source {
	case SourceDatabase, SourceFixtures, SourceAuto:
	default:
		errs = append(errs, fmt.Errorf("syncer: Source must be database, fixtures or auto (got %q)", c.Source))
	}
	if c.Source != SourceFixtures && c.DatabaseURL == "" {
		errs = append(errs, fmt.Errorf("syncer: a database URL is required with source %q", c.Source))
	}
	pos := map[string]time.Duration{"SyncInterval": c.SyncInterval, "HeartbeatInterval": c.HeartbeatInterval,
		"SnapshotInterval": c.SnapshotInterval, "LeaderRetry": c.LeaderRetry, "LeaderTTL": c.LeaderTTL, "DatabaseRetry": c.DatabaseRetry,
		"HealthInterval": c.HealthInterval}
	for _, name := range []string{"SyncInterval", "HeartbeatInterval", "SnapshotInterval", "LeaderRetry", "LeaderTTL", "DatabaseRetry", "HealthInterval"} {
		if pos[name] <= 0 {
			errs = append(errs, fmt.Errorf("syncer: %s must be positive (got %s)", name, pos[name]))
		}
	}
	if c.LeaderTTL > 0 && c.LeaderTTL < 300*time.Millisecond {
		errs = append(errs, fmt.Errorf("syncer: LeaderTTL must be at least 300ms (got %s)", c.LeaderTTL))
	}
	if err := c.Auto.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("syncer: %w", err))
	}
	if c.History < 1 {
		errs = append(errs, fmt.Errorf("syncer: History must be positive (got %d)", c.History))
	}
	if c.Batch < 1 {
		errs = append(errs, fmt.Errorf("syncer: Batch must be positive (got %d)", c.Batch))
	}
	if c.HistoryBytes < 1 {
		errs = append(errs, fmt.Errorf("syncer: HistoryBytes must be positive (got %d)", c.HistoryBytes))
	}
	if c.BatchBytes < 1 {
		errs = append(errs, fmt.Errorf("syncer: BatchBytes must be positive (got %d)", c.BatchBytes))
	}
	if c.PublishWindow < 1 || c.PublishWindow > 4000 {
		// 4,000: jetstream's bound on pending asynchronous stores per connection.
		errs = append(errs, fmt.Errorf("syncer: PublishWindow must be 1..4000 (got %d)", c.PublishWindow))
	}
	if c.PublishWindowBytes < 1 {
		errs = append(errs, fmt.Errorf("syncer: PublishWindowBytes must be positive (got %d)", c.PublishWindowBytes))
	}
	return errors.Join(errs...)
}
