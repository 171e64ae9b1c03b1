package main

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/url"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-multierror"
	"github.com/nats-io/nkeys"

	"github.com/beamline/registry-syncer/health"
	"github.com/beamline/registry-syncer/listener"
	"github.com/beamline/registry-syncer/protocol"
	"github.com/beamline/registry-syncer/publisher"
	"github.com/beamline/registry-syncer/signingkey"
	"github.com/beamline/registry-syncer/syncer"
)

// envPrefix prefixes every variable of spec.
const envPrefix = "EXTENSION_REGISTRY"

// spec is the whole configuration as the environment gives it. The tags follow envconfig:
// `envconfig` is the name after the prefix, `default` the value when the variable is
// unset, `desc` the documentation (`syncer help` and the README configuration table are made from
// it). Two tags are ours: `expect` completes "must be ..." in errors, and `secret` keeps
// the value out of errors and logs.
type spec struct {
	DBHost     string `envconfig:"DB_HOST" default:"localhost" expect:"a host name, an IP address or a Unix socket directory" desc:"PostgreSQL host: a name, an IP address, or a Unix socket directory (starting with /)."`
	DBPort     int    `envconfig:"DB_PORT" default:"5432" expect:"a port number in 1..65535" desc:"PostgreSQL port."`
	DBName     string `envconfig:"DB_NAME" default:"postgres" expect:"a database name" desc:"PostgreSQL database."`
	DBUser     string `envconfig:"DB_USER" default:"postgres" expect:"a user name" desc:"PostgreSQL user."`
	DBPassword string `envconfig:"DB_PASSWORD" secret:"true" desc:"PostgreSQL password (empty: none, or from ~/.pgpass). Never logged."`
	DBSchema   string `envconfig:"DB_SCHEMA" default:"public" expect:"a lowercase SQL identifier (letters, digits, _ and $, not starting with a digit, at most 63 bytes)" desc:"Schema that holds the registry; it becomes the connection's search_path. syncer migrate creates it when missing."`
	DBSSLMode  string `envconfig:"DB_SSLMODE" default:"disable" expect:"one of disable, allow, prefer, require, verify-ca, verify-full" desc:"PostgreSQL sslmode: disable, allow, prefer, require, verify-ca or verify-full."`
	// DatabaseURL is partly secret: errors and logs show it redacted.
	DatabaseURL string `envconfig:"DATABASE_URL" expect:"a postgres:// or postgresql:// URL or a keyword/value string" desc:"Full PostgreSQL connection string: a URL such as postgres://user:pass@host:5432/db?search_path=registry&sslmode=require, or keyword/value pairs such as host=db port=5432 dbname=registry user=app password=secret search_path=registry. When set it wins: the DB_* variables are ignored. Never shown with its password, in either form (errors and logs show password=xxxxx)."`

	NATSURL      string `envconfig:"NATS_URL" default:"nats://127.0.0.1:4222" expect:"a comma-separated list of nats://, tls://, ws:// or wss:// server URLs" desc:"NATS servers, comma-separated (a cluster: list several)."`
	NATSCreds    string `envconfig:"NATS_CREDS" expect:"a readable credentials file" desc:"NATS credentials file (JWT and NKey seed) to authenticate with."`
	NATSUser     string `envconfig:"NATS_USER" expect:"a user name" desc:"NATS user (with NATS_PASSWORD)."`
	NATSPassword string `envconfig:"NATS_PASSWORD" secret:"true" desc:"NATS password (with NATS_USER). Never logged."`
	NATSToken    string `envconfig:"NATS_TOKEN" secret:"true" desc:"NATS authentication token (instead of a user or credentials). Never logged."`
	NATSNKey     string `envconfig:"NATS_NKEY" expect:"a readable file holding an NKey user seed (SU...)" desc:"File holding an NKey user seed (SU…, as nsc or nk -gen user writes it) to authenticate with, instead of a user, token or credentials file. The seed is read when the server asks for a signature and never logged."`
	NATSTLSCA    string `envconfig:"NATS_TLS_CA" expect:"a readable PEM file" desc:"PEM file of the CA that signed the NATS server certificates (turns TLS on)."`
	NATSTLSCert  string `envconfig:"NATS_TLS_CERT" expect:"a readable PEM file" desc:"PEM client certificate for NATS mutual TLS (with NATS_TLS_KEY)."`
	NATSTLSKey   string `envconfig:"NATS_TLS_KEY" expect:"a readable PEM file" desc:"PEM private key of NATS_TLS_CERT."`

	NATSPingInterval time.Duration `envconfig:"NATS_PING_INTERVAL" default:"2s" expect:"a duration of at least 100ms such as 2s" desc:"How often the NATS connection is pinged. A connection that leaves more than NATS_MAX_PINGS_OUTSTANDING pings unanswered is stale: it is dropped with a warning and every server of NATS_URL is tried again, so a silent network (a black hole) is found within (NATS_MAX_PINGS_OUTSTANDING + 1) × NATS_PING_INTERVAL, 6s by default."`
	NATSMaxPingsOut  int           `envconfig:"NATS_MAX_PINGS_OUTSTANDING" default:"2" expect:"an integer in 1..10" desc:"Pings left unanswered before the NATS connection counts as stale (see NATS_PING_INTERVAL)."`

	Source              string `envconfig:"SOURCE" default:"database" expect:"one of database, fixtures, auto" desc:"Where the registry comes from: database, fixtures (the fixture files, no database), or auto (fixtures until the database answers, then the database)."`
	SyncIntervalSeconds int    `envconfig:"SYNC_INTERVAL_SECONDS" default:"60" expect:"a positive integer" desc:"Seconds between two full reconciles of the published registry against the database (drift is repaired under a new revision)."`
	FixturesDir         string `envconfig:"FIXTURES_DIR" expect:"an existing directory" desc:"Directory of fixture files for the fixtures and auto sources and for syncer fixtures import and verify without a DIR (empty: the built-in defaults). Its *.json files are read, in sub-directories too (hidden ones such as .git excepted); one that is a named pipe, a device or a socket is refused, naming the file."`
	SubjectPrefix       string `envconfig:"SUBJECT_PREFIX" default:"beamline.registry" expect:"dot-separated tokens of ASCII letters, digits, _ or - (no wildcards, no empty tokens), at most 122 characters" desc:"Prefix of every NATS subject and of the stream names (PROTOCOL.md §1): dot-separated tokens of ASCII letters, digits, _ and -, at most 122 characters. Two syncers with different prefixes never share a stream; one whose streams or subjects belong to another prefix refuses to start."`

	SigningKey  string `envconfig:"SIGNING_KEY" expect:"a readable file holding an NKey user seed (SU...), as syncer keygen writes it" desc:"File holding the Ed25519 NKey user seed (SU…) the syncer signs every delta, manifest and heartbeat with (syncer keygen FILE writes one and prints its public key). Empty: the registry's key, generated by the first syncer and kept in the database table registry_signing_key, shared by every syncer of the schema. The seed is never logged."`
	TrustedKeys string `envconfig:"TRUSTED_KEYS" expect:"comma-separated public NKey user keys (U..., 56 characters)" desc:"Public keys (U…, comma-separated; two during a key rotation) whose signatures syncer watch accepts. Empty: the public key the syncer stores with its streams, trusted on first bootstrap."`

	HTTPAddr   string `envconfig:"HTTP_ADDR" default:"127.0.0.1:9090" expect:"host:port with a numeric port, or empty" desc:"Address of the HTTP server (status page at /, /metrics, /healthz, /readyz, POST /admin/sync, GET /admin/routers); set it empty to disable HTTP."`
	AdminToken string `envconfig:"ADMIN_TOKEN" secret:"true" expect:"at least 16 characters without whitespace" desc:"Bearer token of POST /admin/sync, at least 16 characters; empty disables the endpoint (403). Never logged."`

	HeartbeatInterval time.Duration `envconfig:"HEARTBEAT_INTERVAL" default:"2s" expect:"a positive duration such as 2s or 500ms" desc:"Period of the leader's heartbeat and of its check that the stream still holds what it acknowledged."`
	SnapshotInterval  time.Duration `envconfig:"SNAPSHOT_INTERVAL" default:"1s" expect:"a positive duration such as 1s or 500ms" desc:"Least time between two snapshot writes: deltas go out at once, snapshots are coalesced."`
	PollInterval      time.Duration `envconfig:"POLL_INTERVAL" default:"0" expect:"a duration such as 5s, or 0 for off" desc:"Also wake up at this interval to read the change log, besides LISTEN/NOTIFY (0: off)."`
	Listen            bool          `envconfig:"LISTEN" default:"true" expect:"true or false" desc:"Use LISTEN/NOTIFY. false (behind a transaction-pooling proxy, say) polls only and needs POLL_INTERVAL."`
	LeaderRetry       time.Duration `envconfig:"LEADER_RETRY" default:"1s" expect:"a positive duration such as 1s" desc:"How often a standby syncer tries to take the leadership."`
	LeaderTTL         time.Duration `envconfig:"LEADER_TTL" default:"6s" expect:"a duration of at least 300ms such as 6s" desc:"Lifetime of the leadership lease after each renewal (renewed every third of it). A leader that stops renewing (dead host, frozen process, lost network) stops publishing before it runs out and is replaced about LEADER_TTL + LEADER_RETRY after its last renewal."`

	StreamReplicas   int           `envconfig:"STREAM_REPLICAS" default:"1" expect:"an integer in 1..5" desc:"Replicas of the JetStream streams (3 on a NATS cluster)."`
	DeltaMaxAge      time.Duration `envconfig:"DELTA_MAX_AGE" default:"168h" expect:"a duration of at least 1m such as 168h" desc:"How long deltas are kept; routers further behind re-bootstrap from the snapshot."`
	DeltaMaxMsgs     int64         `envconfig:"DELTA_MAX_MSGS" default:"1000000" expect:"an integer of at least 1000" desc:"Most deltas kept in the delta stream."`
	DeltaMaxBytes    int64         `envconfig:"DELTA_MAX_BYTES" default:"-1" expect:"-1 (unlimited) or a positive number of bytes" desc:"Size limit of the delta stream in bytes (-1: unlimited)."`
	SnapshotMaxBytes int64         `envconfig:"SNAPSHOT_MAX_BYTES" default:"-1" expect:"-1 (unlimited) or a positive number of bytes" desc:"Size limit of the snapshot stream in bytes (-1: unlimited); at least SNAPSHOT_RETAIN_BYTES, which it must hold."`
	SnapshotGrace    time.Duration `envconfig:"SNAPSHOT_GRACE" default:"30s" expect:"a positive duration such as 30s" desc:"How long a replaced snapshot stays readable: a router that read a snapshot's manifest has at least this long to read its chunks (PROTOCOL.md §7). Snapshot writes are deferred so that the snapshots replaced within it fit in SNAPSHOT_RETAIN_BYTES."`
	SnapshotRetain   int64         `envconfig:"SNAPSHOT_RETAIN_BYTES" default:"268435456" expect:"a positive number of bytes, not above SNAPSHOT_MAX_BYTES" desc:"Bytes of the snapshots kept (256 MiB): the current one, the previous one and those replaced less than SNAPSHOT_GRACE ago. A large snapshot is written less often: about every SNAPSHOT_GRACE / (RETAIN_BYTES/size - 2) under sustained writes (PROTOCOL.md §7)."`
	SnapshotChunk    int           `envconfig:"SNAPSHOT_CHUNK_SIZE" default:"0" expect:"0 (automatic) or at least 1024 bytes" desc:"Size of one snapshot chunk in bytes (0: the server's max_payload less 8 KiB)."`
	DuplicateWindow  time.Duration `envconfig:"DUPLICATE_WINDOW" default:"2m" expect:"a duration of at least 1s, not above DELTA_MAX_AGE" desc:"JetStream duplicate-detection window of the delta stream."`

	PublishWindow      int   `envconfig:"PUBLISH_WINDOW" default:"256" expect:"an integer in 1..4000" desc:"Deltas whose stores may be in flight to JetStream at once; each is announced on the live subject, in revision order, only once the stream acknowledged it. 1 waits for each acknowledgement before the next store (2.8 times slower on a backlog: BENCHMARKS.md)."`
	PublishWindowBytes int   `envconfig:"PUBLISH_WINDOW_BYTES" default:"8388608" expect:"a positive number of bytes" desc:"Payload bytes of the deltas in flight at once (8 MiB)."`
	HistoryBytes       int64 `envconfig:"HISTORY_BYTES" default:"16777216" expect:"a positive number of bytes" desc:"Memory for the published deltas the leader keeps to store again what the stream loses (16 MiB; also at most 100,000 deltas). A loss older than what it keeps is covered by writing the current snapshot."`
	MemoryLimit        int64 `envconfig:"MEMORY_LIMIT_BYTES" default:"268435456" expect:"0 (none) or a positive number of bytes" desc:"Soft limit of syncer run's Go heap (256 MiB; 0: none, the Go default of collecting when the heap doubles): the garbage collector works harder as the heap nears it, instead of letting a transient peak (a whole-registry read, a bulk import) reach twice the live heap. It never refuses memory, and it is raised to 1.5 times the live heap when that grows past two thirds of it, so a registry too large for it runs with headroom instead of collecting without end. GOMEMLIMIT, when set, replaces it."`
	BatchBytes         int   `envconfig:"CHANGELOG_BATCH_BYTES" default:"8388608" expect:"a positive number of bytes" desc:"Change-log rows one read holds, in bytes of their values (8 MiB; also at most 500 revisions). A revision larger than this (a bulk import) is read, applied and dropped in pages of this size, and published as a snapshot and a resync delta once its changes cannot fit one NATS message."`

	HealthInterval time.Duration `envconfig:"HEALTH_INTERVAL" default:"5s" expect:"a duration of at least 100ms such as 5s" desc:"Period of the control loop: the routers' call statistics merged into extension_health (at most one write per extension per interval, never a revision) and the automatic management decisions."`
	AutoDisable    bool          `envconfig:"AUTO_DISABLE" default:"false" expect:"true or false" desc:"Automatic disable for extensions whose extension_health.auto_manage is 'default' ('on' and 'off' override it): an extension whose circuit is open at a quorum of the routers calling it becomes auto_disabled (audited, a revision every router applies; routers keep a few probe calls). An operator's enable or disable always wins."`
	AutoEnable     bool          `envconfig:"AUTO_ENABLE" default:"true" expect:"true or false" desc:"Re-enable an auto-disabled extension once the routers' probe calls succeed at a quorum (false: an operator clears auto_disabled)."`
	AutoInstances  bool          `envconfig:"AUTO_INSTANCE_HEALTH" default:"false" expect:"true or false" desc:"Set extension_instances.health_status from the merged reports (healthy, degraded, unhealthy), so that every router's load balancing avoids unhealthy instances."`
	AutoQuorum     int           `envconfig:"AUTO_QUORUM_ROUTERS" default:"2" expect:"a positive integer" desc:"Least number of routers that must agree (circuit open, or probes recovered) before an automatic decision."`
	AutoFraction   float64       `envconfig:"AUTO_QUORUM_FRACTION" default:"0.5" expect:"a number in (0, 1]" desc:"Least share of the routers calling an extension that must agree before an automatic decision."`
	AutoMinSuccess float64       `envconfig:"AUTO_MIN_SUCCESS_RATE" default:"0.8" expect:"a number in (0, 1]" desc:"Success rate at or above which probes count as recovered, and below which an instance is unhealthy (extension_health.min_success_rate overrides it per extension)."`
	AutoHold       int           `envconfig:"AUTO_HOLD" default:"2" expect:"a positive integer" desc:"Consecutive health intervals a condition must hold before an automatic decision (hysteresis)."`
	AutoCooldown   time.Duration `envconfig:"AUTO_COOLDOWN" default:"60s" expect:"a positive duration such as 60s" desc:"Least time between two automatic changes of one extension or instance; an unhealthy instance without calls for this long goes back to unknown."`
	AutoMinCalls   int           `envconfig:"AUTO_MIN_CALLS" default:"10" expect:"a positive integer" desc:"Least answered calls over the window before an instance's success rate is judged."`

	LogLevel  string `envconfig:"LOG_LEVEL" default:"info" expect:"one of debug, info, warn, error" desc:"Least level logged: debug, info, warn or error."`
	LogFormat string `envconfig:"LOG_FORMAT" default:"text" expect:"text or json" desc:"Log format on standard error: text or json."`
}

// variable is one field of spec with its tags.
type variable struct {
	Key     string // full name, with the prefix
	Default string
	Desc    string
	Expect  string
	Secret  bool
	field   reflect.Value
}

// variables lists the fields of s in declaration order.
func variables(s *spec) []variable {
	v := reflect.ValueOf(s).Elem()
	t := v.Type()
	out := make([]variable, 0, t.NumField())
	for i := range t.NumField() {
		f := t.Field(i)
		out = append(out, variable{
			Key:     envPrefix + "_" + f.Tag.Get("envconfig"),
			Default: f.Tag.Get("default"),
			Desc:    f.Tag.Get("desc"),
			Expect:  f.Tag.Get("expect"),
			Secret:  f.Tag.Get("secret") == "true",
			field:   v.Field(i),
		})
	}
	return out
}

// decode sets field from value the way envconfig does for these types.
func decode(value string, field reflect.Value) error {
	switch field.Interface().(type) {
	case string:
		field.SetString(value)
	case bool:
		b, err := strconv.ParseBool(value)
		if err != nil {
			return err
		}
		field.SetBool(b)
	case time.Duration:
		d, err := time.ParseDuration(value)
		if err != nil {
			return err
		}
		field.SetInt(int64(d))
	case int, int64:
		n, err := strconv.ParseInt(value, 0, field.Type().Bits())
		if err != nil {
			return err
		}
		field.SetInt(n)
	case float64:
		f, err := strconv.ParseFloat(value, 64)
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
			return fmt.Errorf("not a finite number: %q", value)
		}
		field.SetFloat(f)
	default:
		return fmt.Errorf("unsupported type %s", field.Type())
	}
	return nil
}

// config is the validated configuration.
type config struct {
	Syncer    syncer.Config
	Publisher publisher.Config
	NATS      natsConfig
	// DatabaseURL is Syncer.DatabaseURL: EXTENSION_REGISTRY_DATABASE_URL, or built from
	// the DB_* parts. It may hold a password: log RedactedDatabaseURL.
	DatabaseURL string
	// Schema is the registry schema when the URL was built from the parts ("" when
	// DATABASE_URL was given).
	Schema      string
	FixturesDir string
	HTTPAddr    string
	AdminToken  string
	LogLevel    slog.Level
	LogFormat   string
	// MemoryLimit is the soft limit of the Go heap of syncer run (0: none; memlimit.go).
	MemoryLimit int64
	// TrustedKeys are the public keys syncer watch trusts (empty: trust on first use).
	TrustedKeys []string
	// Ignored lists the DB_* variables that are set but ignored because DATABASE_URL is.
	Ignored []string
}

// natsConfig is how to reach NATS.
type natsConfig struct {
	Servers  []string
	Creds    string
	User     string
	Password string
	Token    string
	NKey     string // path of the NKey user seed file
	TLSCA    string
	TLSCert  string
	TLSKey   string
	// PingInterval and MaxPingsOut bound how long a silent connection goes unnoticed:
	// (MaxPingsOut+1) × PingInterval.
	PingInterval time.Duration
	MaxPingsOut  int
}

// RedactedDatabaseURL is the database URL without its password.
func (c *config) RedactedDatabaseURL() string { return redactPostgresURL(c.DatabaseURL) }

// RedactedNATSServers are the NATS servers without credentials.
func (c *config) RedactedNATSServers() string {
	out := make([]string, len(c.NATS.Servers))
	for i, s := range c.NATS.Servers {
		out[i] = redactNATSURL(s)
	}
	return strings.Join(out, ",")
}

// configError is every problem with the configuration, one per line.
func configError(errs *multierror.Error) error {
	if errs == nil {
		return nil
	}
	errs.ErrorFormat = func(list []error) string {
		var b strings.Builder
		if len(list) == 1 {
			b.WriteString("invalid configuration:")
		} else {
			fmt.Fprintf(&b, "invalid configuration (%d problems):", len(list))
		}
		for _, e := range list {
			b.WriteString("\n  ")
			b.WriteString(e.Error())
		}
		return b.String()
	}
	return errs
}

var (
	schemaPattern = regexp.MustCompile(`^[a-z_][a-z0-9_$]{0,62}$`)
	sslModes      = []string{"disable", "allow", "prefer", "require", "verify-ca", "verify-full"}
	dbParts       = []string{"DB_HOST", "DB_PORT", "DB_NAME", "DB_USER", "DB_PASSWORD", "DB_SCHEMA", "DB_SSLMODE"}
)

// loadConfig reads the configuration through lookup (os.LookupEnv in production) and
// validates all of it: the error lists every problem, one per variable and rule, and
// never shows a secret. Nothing is connected to.
func loadConfig(lookup func(string) (string, bool)) (*config, error) {
	var (
		s        spec
		problems []indexedError // sorted by variable before they are reported
	)
	raw := map[string]string{}    // the value used, by short name (after the prefix)
	set := map[string]bool{}      // set in the environment (not defaulted)
	bad := map[string]bool{}      // failed to decode: no further rule applies
	vars := map[string]variable{} // by short name
	order := map[string]int{}     // declaration order, by short name
	for i, v := range variables(&s) {
		name := strings.TrimPrefix(v.Key, envPrefix+"_")
		vars[name], order[name] = v, i
		value, ok := lookup(v.Key)
		if !ok {
			value = v.Default
		}
		raw[name], set[name] = value, ok
		if err := decode(value, v.field); err != nil {
			bad[name] = true
			problems = append(problems, indexedError{order[name], problem(v, value, "")})
		}
	}
	// fail reports that the variable's value breaks its rule (detail: a more precise rule).
	fail := func(name, detail string) {
		problems = append(problems, indexedError{order[name], problem(vars[name], raw[name], detail)})
	}
	check := func(name string, ok bool) {
		if !bad[name] && !ok {
			fail(name, "")
		}
	}

	// Database.
	check("DB_HOST", strings.TrimSpace(s.DBHost) != "")
	check("DB_PORT", s.DBPort >= 1 && s.DBPort <= 65535)
	check("DB_NAME", s.DBName != "")
	check("DB_USER", s.DBUser != "")
	check("DB_SCHEMA", schemaPattern.MatchString(s.DBSchema))
	check("DB_SSLMODE", oneOf(s.DBSSLMode, sslModes...))
	c := &config{}
	if s.DatabaseURL != "" {
		if detail := checkPostgresURL(s.DatabaseURL); detail != "" {
			fail("DATABASE_URL", detail)
		}
		c.DatabaseURL = s.DatabaseURL
		for _, name := range dbParts {
			if set[name] {
				c.Ignored = append(c.Ignored, vars[name].Key)
			}
		}
	} else {
		c.DatabaseURL = buildDatabaseURL(&s)
		c.Schema = s.DBSchema
	}

	// NATS.
	if !bad["NATS_URL"] {
		servers, detail := parseNATSServers(s.NATSURL)
		if detail != "" {
			fail("NATS_URL", detail)
		}
		c.NATS.Servers = servers
	}
	for _, name := range []string{"NATS_CREDS", "NATS_NKEY", "NATS_TLS_CA", "NATS_TLS_CERT", "NATS_TLS_KEY"} {
		if raw[name] != "" {
			if detail := checkFile(raw[name]); detail != "" {
				fail(name, detail)
			} else if name == "NATS_NKEY" {
				if detail := checkNKeySeedFile(raw[name]); detail != "" {
					fail(name, detail)
				}
			}
		}
	}
	switch {
	case s.NATSUser != "" && s.NATSPassword == "":
		fail("NATS_USER", "set "+vars["NATS_PASSWORD"].Key+" too")
	case s.NATSUser == "" && s.NATSPassword != "":
		fail("NATS_PASSWORD", "set "+vars["NATS_USER"].Key+" too")
	}
	// One way to authenticate: each way after the first one set is a problem that names
	// the ones before it.
	var ways []string
	for _, name := range []string{"NATS_CREDS", "NATS_USER", "NATS_TOKEN", "NATS_NKEY"} {
		if raw[name] == "" {
			continue
		}
		if len(ways) > 0 {
			fail(name, "use one way to authenticate: not with "+strings.Join(ways, " or "))
		}
		ways = append(ways, vars[name].Key)
	}
	if len(ways) > 0 {
		for _, srv := range c.NATS.Servers {
			if u, err := url.Parse(srv); err == nil && u.User != nil {
				fail("NATS_URL", "holds credentials (user@ or user:password@): not with "+strings.Join(ways, " or "))
				break
			}
		}
	}
	check("NATS_PING_INTERVAL", s.NATSPingInterval >= 100*time.Millisecond)
	check("NATS_MAX_PINGS_OUTSTANDING", s.NATSMaxPingsOut >= 1 && s.NATSMaxPingsOut <= 10)
	if (s.NATSTLSCert == "") != (s.NATSTLSKey == "") {
		if s.NATSTLSCert == "" {
			fail("NATS_TLS_KEY", "set "+vars["NATS_TLS_CERT"].Key+" too")
		} else {
			fail("NATS_TLS_CERT", "set "+vars["NATS_TLS_KEY"].Key+" too")
		}
	}
	c.NATS.Creds, c.NATS.User, c.NATS.Password, c.NATS.Token = s.NATSCreds, s.NATSUser, s.NATSPassword, s.NATSToken
	c.NATS.NKey = s.NATSNKey
	c.NATS.TLSCA, c.NATS.TLSCert, c.NATS.TLSKey = s.NATSTLSCA, s.NATSTLSCert, s.NATSTLSKey
	c.NATS.PingInterval, c.NATS.MaxPingsOut = s.NATSPingInterval, s.NATSMaxPingsOut

	// Source and fixtures.
	check("SOURCE", oneOf(s.Source, syncer.SourceDatabase, syncer.SourceFixtures, syncer.SourceAuto))
	check("SYNC_INTERVAL_SECONDS", s.SyncIntervalSeconds > 0)
	if s.FixturesDir != "" {
		if fi, err := os.Stat(s.FixturesDir); err != nil || !fi.IsDir() {
			fail("FIXTURES_DIR", "")
		}
	}
	if !bad["SUBJECT_PREFIX"] {
		if n := len(s.SubjectPrefix); n > protocol.MaxPrefixLen {
			fail("SUBJECT_PREFIX", fmt.Sprintf("must be at most %d characters, so that its stream names fit JetStream's limit of %d (got %d characters)",
				protocol.MaxPrefixLen, protocol.MaxStreamName, n))
		} else if protocol.ValidatePrefix(s.SubjectPrefix) != nil {
			fail("SUBJECT_PREFIX", "")
		}
	}

	// Signing.
	var signer *protocol.Signer
	if s.SigningKey != "" {
		if detail := checkFile(s.SigningKey); detail != "" {
			fail("SIGNING_KEY", detail)
		} else if detail := checkNKeySeedFile(s.SigningKey); detail != "" {
			fail("SIGNING_KEY", detail)
		} else if sg, err := signingkey.ReadFile(s.SigningKey); err != nil {
			fail("SIGNING_KEY", "must be a file holding an NKey user seed (SU...): "+err.Error())
		} else {
			signer = sg
		}
	}
	if strings.TrimSpace(s.TrustedKeys) != "" {
		keys := strings.Split(s.TrustedKeys, ",")
		if _, err := protocol.NewTrust(keys...); err != nil {
			fail("TRUSTED_KEYS", "must be comma-separated public NKey user keys: "+err.Error())
		}
		for _, k := range keys {
			if k = strings.TrimSpace(k); k != "" {
				c.TrustedKeys = append(c.TrustedKeys, k)
			}
		}
	}

	// HTTP.
	if s.HTTPAddr != "" {
		check("HTTP_ADDR", validListenAddr(s.HTTPAddr))
	}
	if s.AdminToken != "" {
		check("ADMIN_TOKEN", len(s.AdminToken) >= 16 && !strings.ContainsFunc(s.AdminToken, isSpace))
	}

	// Timing and streams.
	check("HEARTBEAT_INTERVAL", s.HeartbeatInterval > 0)
	check("SNAPSHOT_INTERVAL", s.SnapshotInterval > 0)
	check("POLL_INTERVAL", s.PollInterval >= 0)
	if !bad["LISTEN"] && !bad["POLL_INTERVAL"] && !s.Listen && s.PollInterval <= 0 {
		fail("LISTEN", fmt.Sprintf("false (poll only) needs %s > 0 (got %q)", vars["POLL_INTERVAL"].Key, raw["POLL_INTERVAL"]))
	}
	check("LEADER_RETRY", s.LeaderRetry > 0)
	check("LEADER_TTL", s.LeaderTTL >= 300*time.Millisecond)
	check("STREAM_REPLICAS", s.StreamReplicas >= 1 && s.StreamReplicas <= 5)
	check("DELTA_MAX_AGE", s.DeltaMaxAge >= time.Minute)
	check("DELTA_MAX_MSGS", s.DeltaMaxMsgs >= 1000)
	check("DELTA_MAX_BYTES", s.DeltaMaxBytes == -1 || s.DeltaMaxBytes > 0)
	check("SNAPSHOT_MAX_BYTES", s.SnapshotMaxBytes == -1 || s.SnapshotMaxBytes > 0)
	check("SNAPSHOT_CHUNK_SIZE", s.SnapshotChunk == 0 || s.SnapshotChunk >= 1024)
	check("SNAPSHOT_GRACE", s.SnapshotGrace > 0)
	check("SNAPSHOT_RETAIN_BYTES", s.SnapshotRetain > 0 && (bad["SNAPSHOT_MAX_BYTES"] || s.SnapshotMaxBytes == -1 || s.SnapshotRetain <= s.SnapshotMaxBytes))
	check("DUPLICATE_WINDOW", s.DuplicateWindow >= time.Second && (bad["DELTA_MAX_AGE"] || s.DuplicateWindow <= s.DeltaMaxAge))
	check("PUBLISH_WINDOW", s.PublishWindow >= 1 && s.PublishWindow <= 4000)
	check("PUBLISH_WINDOW_BYTES", s.PublishWindowBytes > 0)
	check("HISTORY_BYTES", s.HistoryBytes > 0)
	check("CHANGELOG_BATCH_BYTES", s.BatchBytes > 0)
	check("MEMORY_LIMIT_BYTES", s.MemoryLimit >= 0)

	// Control loop.
	check("HEALTH_INTERVAL", s.HealthInterval >= 100*time.Millisecond)
	check("AUTO_QUORUM_ROUTERS", s.AutoQuorum >= 1)
	check("AUTO_QUORUM_FRACTION", s.AutoFraction > 0 && s.AutoFraction <= 1)
	check("AUTO_MIN_SUCCESS_RATE", s.AutoMinSuccess > 0 && s.AutoMinSuccess <= 1)
	check("AUTO_HOLD", s.AutoHold >= 1)
	check("AUTO_COOLDOWN", s.AutoCooldown > 0)
	check("AUTO_MIN_CALLS", s.AutoMinCalls >= 1)

	// Logging.
	if !bad["LOG_LEVEL"] {
		if err := c.LogLevel.UnmarshalText([]byte(s.LogLevel)); err != nil {
			fail("LOG_LEVEL", "")
		}
	}
	check("LOG_FORMAT", oneOf(s.LogFormat, "text", "json"))

	if len(problems) > 0 {
		// The packages' own checks below would repeat these problems in Go field names.
		slices.SortStableFunc(problems, func(a, b indexedError) int { return cmp.Compare(a.order, b.order) })
		var errs *multierror.Error
		for _, p := range problems {
			errs = multierror.Append(errs, p.err)
		}
		return nil, configError(errs)
	}

	c.Syncer = syncer.Config{
		Source:             s.Source,
		DatabaseURL:        c.DatabaseURL,
		FixturesDir:        s.FixturesDir,
		SyncInterval:       time.Duration(s.SyncIntervalSeconds) * time.Second,
		HeartbeatInterval:  s.HeartbeatInterval,
		SnapshotInterval:   s.SnapshotInterval,
		LeaderRetry:        s.LeaderRetry,
		LeaderTTL:          s.LeaderTTL,
		Listener:           listener.Config{Disabled: !s.Listen, PollInterval: s.PollInterval},
		HealthInterval:     s.HealthInterval,
		PublishWindow:      s.PublishWindow,
		PublishWindowBytes: s.PublishWindowBytes,
		HistoryBytes:       s.HistoryBytes,
		BatchBytes:         s.BatchBytes,
		Auto: health.Policy{AutoDisable: s.AutoDisable, AutoEnable: s.AutoEnable, Instances: s.AutoInstances,
			QuorumRouters: s.AutoQuorum, QuorumFraction: s.AutoFraction, MinSuccessRate: s.AutoMinSuccess,
			Hold: s.AutoHold, Cooldown: s.AutoCooldown, MinCalls: s.AutoMinCalls},
	}
	c.Publisher = publisher.Config{
		Prefix:              s.SubjectPrefix,
		Replicas:            s.StreamReplicas,
		DeltaMaxAge:         s.DeltaMaxAge,
		DeltaMaxMsgs:        s.DeltaMaxMsgs,
		DeltaMaxBytes:       s.DeltaMaxBytes,
		SnapshotMaxBytes:    s.SnapshotMaxBytes,
		SnapshotGrace:       s.SnapshotGrace,
		SnapshotRetainBytes: s.SnapshotRetain,
		DuplicateWindow:     s.DuplicateWindow,
		ChunkSize:           s.SnapshotChunk,
		Signer:              signer,
	}
	c.FixturesDir, c.HTTPAddr, c.AdminToken = s.FixturesDir, s.HTTPAddr, s.AdminToken
	c.LogFormat = s.LogFormat
	c.MemoryLimit = s.MemoryLimit
	// The syncer's own validation is the last word on its config; its messages name Go
	// fields, and reaching it means the rules above missed something.
	if err := c.Syncer.WithDefaults().Validate(); err != nil {
		return nil, configError(multierror.Append(nil, err))
	}
	return c, nil
}

type indexedError struct {
	order int
	err   error
}

// problem formats one configuration problem: the variable, the rule, and the value
// unless it is secret.
func problem(v variable, value, detail string) error {
	rule := "must be " + v.Expect
	if detail != "" {
		rule = detail
	}
	switch {
	case v.Key == envPrefix+"_DATABASE_URL":
		return fmt.Errorf("%s: %s (got %q)", v.Key, rule, redactPostgresURL(value))
	case v.Key == envPrefix+"_NATS_URL":
		return fmt.Errorf("%s: %s (got %q)", v.Key, rule, redactNATSList(value))
	case v.Key == envPrefix+"_TRUSTED_KEYS":
		return fmt.Errorf("%s: %s (got %q)", v.Key, rule, redactSeeds(value))
	case v.Secret:
		return fmt.Errorf("%s: %s (value not shown: secret)", v.Key, rule)
	}
	return fmt.Errorf("%s: %s (got %q)", v.Key, rule, value)
}

// redactSeeds hides every comma-separated entry of a key list that is not a public key
// (a seed put there by mistake is a secret).
func redactSeeds(list string) string {
	parts := strings.Split(list, ",")
	for i, p := range parts {
		if p = strings.TrimSpace(p); p != "" && !strings.HasPrefix(p, "U") {
			parts[i] = "(not shown)"
		}
	}
	return strings.Join(parts, ",")
}

func oneOf(s string, allowed ...string) bool {
	for _, a := range allowed {
		if s == a {
			return true
		}
	}
	return false
}

func isSpace(r rune) bool {
	return r == ' ' || r == '\t' || r == '\n' || r == '\r' || r == '\v' || r == '\f'
}

func validListenAddr(addr string) bool {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	n, err := strconv.Atoi(port)
	return err == nil && n >= 0 && n <= 65535
}

func checkFile(path string) string {
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return "no such file"
	case err != nil:
		return "cannot read it: " + err.Error()
	case fi.IsDir():
		return "is a directory, not a file"
	}
	return ""
}

// checkNKeySeedFile returns what is wrong with an NKey seed file ("" when it holds a
// user seed), never quoting the file: it is a secret.
func checkNKeySeedFile(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return "cannot read it: " + err.Error()
	}
	defer clear(data)
	kp, err := nkeys.ParseDecoratedUserNKey(data)
	if err != nil {
		return "must be a file holding an NKey user seed (SU...): " + nkeySeedProblem(err)
	}
	kp.Wipe()
	return ""
}

// nkeySeedProblem says why a seed file was refused, in words of ours: the nkeys errors
// are fixed strings, but a seed must never reach a log through a future one.
func nkeySeedProblem(err error) string {
	switch {
	case errors.Is(err, nkeys.ErrNoSeedFound):
		return "it holds no seed"
	case errors.Is(err, nkeys.ErrInvalidNkeySeed), errors.Is(err, nkeys.ErrInvalidSeed),
		errors.Is(err, nkeys.ErrInvalidPrefixByte), errors.Is(err, nkeys.ErrInvalidEncoding),
		errors.Is(err, nkeys.ErrInvalidChecksum), errors.Is(err, nkeys.ErrInvalidSeedLen):
		return "its seed is malformed"
	case errors.Is(err, nkeys.ErrInvalidUserSeed):
		return "it holds a seed of another kind (operator or account), not a user seed"
	}
	return "its seed cannot be used"
}

// buildDatabaseURL makes the connection URL from the DB_* parts, every part escaped. A
// host starting with / is a Unix socket directory and goes into the query.
func buildDatabaseURL(s *spec) string {
	u := url.URL{Scheme: "postgres", Path: "/" + s.DBName}
	if s.DBPassword != "" {
		u.User = url.UserPassword(s.DBUser, s.DBPassword)
	} else {
		u.User = url.User(s.DBUser)
	}
	q := url.Values{}
	port := strconv.Itoa(s.DBPort)
	if strings.HasPrefix(s.DBHost, "/") {
		q.Set("host", s.DBHost)
		q.Set("port", port)
	} else {
		u.Host = net.JoinHostPort(s.DBHost, port)
	}
	q.Set("search_path", s.DBSchema)
	q.Set("sslmode", s.DBSSLMode)
	u.RawQuery = q.Encode()
	return u.String()
}

// redactNATSURL hides the credentials of a NATS URL: the password, and a user name given
// without a password (NATS reads it as a token).
func redactNATSURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL not shown: it may hold credentials)"
	}
	if u.User != nil {
		if _, hasPassword := u.User.Password(); !hasPassword {
			u.User = url.User("xxxxx")
		}
	}
	return u.Redacted()
}

func redactNATSList(raw string) string {
	parts := strings.Split(raw, ",")
	for i, p := range parts {
		if p = strings.TrimSpace(p); p != "" {
			parts[i] = redactNATSURL(withScheme(p))
		}
	}
	return strings.Join(parts, ",")
}

// withScheme adds nats:// to a bare host:port, as the NATS client does.
func withScheme(s string) string {
	if !strings.Contains(s, "://") {
		return "nats://" + s
	}
	return s
}

// parseNATSServers splits the comma-separated server list and checks each entry.
func parseNATSServers(list string) ([]string, string) {
	var (
		servers  []string
		problems []string
	)
	for i, p := range strings.Split(list, ",") {
		p = strings.TrimSpace(p)
		if p == "" {
			problems = append(problems, fmt.Sprintf("entry %d is empty", i+1))
			continue
		}
		p = withScheme(p)
		u, err := url.Parse(p)
		switch {
		case err != nil:
			problems = append(problems, fmt.Sprintf("entry %d is not a URL", i+1))
		case !oneOf(u.Scheme, "nats", "tls", "ws", "wss"):
			problems = append(problems, fmt.Sprintf("entry %d has scheme %q", i+1, u.Scheme))
		case u.Hostname() == "":
			problems = append(problems, fmt.Sprintf("entry %d has no host", i+1))
		case u.Port() != "" && !validPort(u.Port()):
			problems = append(problems, fmt.Sprintf("entry %d has a bad port", i+1))
		default:
			servers = append(servers, p)
		}
	}
	if len(problems) > 0 {
		return nil, "must be a comma-separated list of nats://, tls://, ws:// or wss:// server URLs: " + strings.Join(problems, ", ")
	}
	return servers, ""
}

func validPort(s string) bool {
	n, err := strconv.Atoi(s)
	return err == nil && n >= 1 && n <= 65535
}
