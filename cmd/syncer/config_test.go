package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/beamline/registry-syncer/syncer"
)

var update = flag.Bool("update", false, "rewrite the README configuration section from the spec")

// envMap is an environment for loadConfig and run.
type envMap map[string]string

func (m envMap) lookup(key string) (string, bool) {
	v, ok := m[key]
	return v, ok
}

func TestConfigDefaults(t *testing.T) {
	t.Parallel()
	cfg, err := loadConfig(envMap{}.lookup)
	if err != nil {
		t.Fatal(err)
	}
	if want := "postgres://postgres@localhost:5432/postgres?search_path=public&sslmode=disable"; cfg.DatabaseURL != want {
		t.Errorf("DatabaseURL %q, want %q", cfg.DatabaseURL, want)
	}
	if cfg.Schema != "public" {
		t.Errorf("Schema %q, want public", cfg.Schema)
	}
	if !slices.Equal(cfg.NATS.Servers, []string{"nats://127.0.0.1:4222"}) {
		t.Errorf("NATS servers %q", cfg.NATS.Servers)
	}
	if cfg.HTTPAddr != "127.0.0.1:9090" || cfg.AdminToken != "" || cfg.LogFormat != "text" || cfg.LogLevel.String() != "INFO" {
		t.Errorf("HTTP %q token %q log %s %s", cfg.HTTPAddr, cfg.AdminToken, cfg.LogFormat, cfg.LogLevel)
	}
	s := cfg.Syncer
	if s.Source != syncer.SourceDatabase || s.SyncInterval != time.Minute || s.HeartbeatInterval != 2*time.Second ||
		s.SnapshotInterval != time.Second || s.LeaderRetry != time.Second || s.Listener.Disabled || s.Listener.PollInterval != 0 ||
		s.DatabaseURL != cfg.DatabaseURL || s.FixturesDir != "" {
		t.Errorf("syncer config %+v", s)
	}
	p := cfg.Publisher
	if p.Prefix != "beamline.registry" || p.Replicas != 1 || p.DeltaMaxAge != 168*time.Hour || p.DeltaMaxMsgs != 1_000_000 ||
		p.DeltaMaxBytes != -1 || p.SnapshotMaxBytes != -1 || p.DuplicateWindow != 2*time.Minute || p.ChunkSize != 0 {
		t.Errorf("publisher config %+v", p)
	}
}

func TestConfigValues(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfg, err := loadConfig(envMap{
		"EXTENSION_REGISTRY_SOURCE":                "auto",
		"EXTENSION_REGISTRY_FIXTURES_DIR":          dir,
		"EXTENSION_REGISTRY_SYNC_INTERVAL_SECONDS": "15",
		"EXTENSION_REGISTRY_NATS_URL":              "nats://a:4222, tls://b:4223,c:4224",
		"EXTENSION_REGISTRY_HTTP_ADDR":             "",
		"EXTENSION_REGISTRY_LISTEN":                "false",
		"EXTENSION_REGISTRY_POLL_INTERVAL":         "250ms",
		"EXTENSION_REGISTRY_STREAM_REPLICAS":       "3",
		"EXTENSION_REGISTRY_DELTA_MAX_AGE":         "24h",
		"EXTENSION_REGISTRY_DUPLICATE_WINDOW":      "30s",
		"EXTENSION_REGISTRY_SNAPSHOT_CHUNK_SIZE":   "65536",
		"EXTENSION_REGISTRY_SNAPSHOT_GRACE":        "2m",
		"EXTENSION_REGISTRY_SNAPSHOT_RETAIN_BYTES": "1048576",
		"EXTENSION_REGISTRY_LOG_LEVEL":             "debug",
		"EXTENSION_REGISTRY_LOG_FORMAT":            "json",
		"EXTENSION_REGISTRY_SUBJECT_PREFIX":        "acme.ext-registry",
	}.lookup)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cfg.NATS.Servers, []string{"nats://a:4222", "tls://b:4223", "nats://c:4224"}) {
		t.Errorf("NATS servers %q", cfg.NATS.Servers)
	}
	if cfg.HTTPAddr != "" {
		t.Errorf("HTTP_ADDR set empty must disable HTTP, got %q", cfg.HTTPAddr)
	}
	s, p := cfg.Syncer, cfg.Publisher
	if s.Source != "auto" || s.FixturesDir != dir || s.SyncInterval != 15*time.Second || !s.Listener.Disabled || s.Listener.PollInterval != 250*time.Millisecond {
		t.Errorf("syncer config %+v", s)
	}
	if p.Prefix != "acme.ext-registry" || p.Replicas != 3 || p.DeltaMaxAge != 24*time.Hour || p.DuplicateWindow != 30*time.Second || p.ChunkSize != 65536 ||
		p.SnapshotGrace != 2*time.Minute || p.SnapshotRetainBytes != 1<<20 {
		t.Errorf("publisher config %+v", p)
	}
	if cfg.LogLevel.String() != "DEBUG" || cfg.LogFormat != "json" {
		t.Errorf("log %s %s", cfg.LogLevel, cfg.LogFormat)
	}
}

// TestConfigEveryProblemAtOnce sets many bad values and expects one line for each.
func TestConfigEveryProblemAtOnce(t *testing.T) {
	t.Parallel()
	env := envMap{
		"EXTENSION_REGISTRY_DB_PORT":               "abc",
		"EXTENSION_REGISTRY_DB_HOST":               "",
		"EXTENSION_REGISTRY_DB_SCHEMA":             "Registry; DROP",
		"EXTENSION_REGISTRY_DB_SSLMODE":            "sometimes",
		"EXTENSION_REGISTRY_NATS_URL":              "http://x:1,,nats://:4222",
		"EXTENSION_REGISTRY_SOURCE":                "files",
		"EXTENSION_REGISTRY_SYNC_INTERVAL_SECONDS": "-5",
		"EXTENSION_REGISTRY_FIXTURES_DIR":          filepath.Join(t.TempDir(), "missing"),
		"EXTENSION_REGISTRY_SUBJECT_PREFIX":        "a.*.b",
		"EXTENSION_REGISTRY_HTTP_ADDR":             "localhost",
		"EXTENSION_REGISTRY_HEARTBEAT_INTERVAL":    "often",
		"EXTENSION_REGISTRY_SNAPSHOT_INTERVAL":     "0s",
		"EXTENSION_REGISTRY_POLL_INTERVAL":         "-1s",
		"EXTENSION_REGISTRY_LISTEN":                "maybe",
		"EXTENSION_REGISTRY_LEADER_RETRY":          "0",
		"EXTENSION_REGISTRY_STREAM_REPLICAS":       "7",
		"EXTENSION_REGISTRY_DELTA_MAX_AGE":         "30s",
		"EXTENSION_REGISTRY_DELTA_MAX_MSGS":        "10",
		"EXTENSION_REGISTRY_DELTA_MAX_BYTES":       "0",
		"EXTENSION_REGISTRY_SNAPSHOT_MAX_BYTES":    "-2",
		"EXTENSION_REGISTRY_SNAPSHOT_CHUNK_SIZE":   "100",
		"EXTENSION_REGISTRY_DUPLICATE_WINDOW":      "10ms",
		"EXTENSION_REGISTRY_NATS_CREDS":            filepath.Join(t.TempDir(), "none.creds"),
		"EXTENSION_REGISTRY_NATS_TLS_CERT":         t.TempDir(),
		"EXTENSION_REGISTRY_LOG_LEVEL":             "loud",
		"EXTENSION_REGISTRY_LOG_FORMAT":            "xml",
	}
	_, err := loadConfig(env.lookup)
	if err == nil {
		t.Fatal("loadConfig accepted bad values")
	}
	msg := err.Error()
	t.Log(msg)
	lines := strings.Split(msg, "\n")
	if want := fmt.Sprintf("invalid configuration (%d problems):", len(lines)-1); lines[0] != want {
		t.Errorf("first line %q, want %q", lines[0], want)
	}
	// Every bad variable has its own line; NATS_TLS_CERT has two (a directory, and no key).
	for key := range env {
		n := 0
		for _, l := range lines[1:] {
			if strings.HasPrefix(strings.TrimSpace(l), key+":") {
				n++
			}
		}
		if n == 0 {
			t.Errorf("no line for %s", key)
		}
	}
	for _, want := range []string{
		`EXTENSION_REGISTRY_SYNC_INTERVAL_SECONDS: must be a positive integer (got "-5")`,
		`EXTENSION_REGISTRY_DB_PORT: must be a port number in 1..65535 (got "abc")`,
		`EXTENSION_REGISTRY_HEARTBEAT_INTERVAL: must be a positive duration such as 2s or 500ms (got "often")`,
		`EXTENSION_REGISTRY_LISTEN: must be true or false (got "maybe")`,
		`EXTENSION_REGISTRY_SOURCE: must be one of database, fixtures, auto (got "files")`,
		`EXTENSION_REGISTRY_NATS_TLS_CERT: set EXTENSION_REGISTRY_NATS_TLS_KEY too`,
		`EXTENSION_REGISTRY_DUPLICATE_WINDOW: must be a duration of at least 1s, not above DELTA_MAX_AGE (got "10ms")`,
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("missing %q", want)
		}
	}
}

// TestConfigSnapshotRetention: the snapshots kept within their grace must fit in the
// snapshot stream, else the stream would drop them.
func TestConfigSnapshotRetention(t *testing.T) {
	t.Parallel()
	_, err := loadConfig(envMap{"EXTENSION_REGISTRY_SNAPSHOT_MAX_BYTES": "1000000"}.lookup)
	if err == nil || !strings.Contains(err.Error(), `EXTENSION_REGISTRY_SNAPSHOT_RETAIN_BYTES: must be a positive number of bytes, not above SNAPSHOT_MAX_BYTES (got "268435456")`) {
		t.Fatalf("got %v", err)
	}
	for env, want := range map[string]string{"EXTENSION_REGISTRY_SNAPSHOT_GRACE": "0s", "EXTENSION_REGISTRY_SNAPSHOT_RETAIN_BYTES": "0"} {
		if _, err := loadConfig(envMap{env: want}.lookup); err == nil || !strings.Contains(err.Error(), env+":") {
			t.Errorf("%s=%s: got %v", env, want, err)
		}
	}
	cfg, err := loadConfig(envMap{"EXTENSION_REGISTRY_SNAPSHOT_MAX_BYTES": "1000000", "EXTENSION_REGISTRY_SNAPSHOT_RETAIN_BYTES": "1000000"}.lookup)
	if err != nil {
		t.Fatal(err)
	}
	if p := cfg.Publisher; p.SnapshotGrace != 30*time.Second || p.SnapshotRetainBytes != 1000000 || p.SnapshotMaxBytes != 1000000 {
		t.Errorf("publisher config %+v", p)
	}
}

func TestConfigListenNeedsPoll(t *testing.T) {
	t.Parallel()
	_, err := loadConfig(envMap{"EXTENSION_REGISTRY_LISTEN": "false"}.lookup)
	if err == nil || !strings.Contains(err.Error(), "EXTENSION_REGISTRY_LISTEN: false (poll only) needs EXTENSION_REGISTRY_POLL_INTERVAL > 0") {
		t.Fatalf("got %v", err)
	}
}

func TestConfigSecretsNotShown(t *testing.T) {
	t.Parallel()
	secrets := []string{"dbSecretPw1", "urlSecretPw2", "natsUrlPw3", "natsUrlToken4", "natsPw5", "natsToken6", "short7"}
	env := envMap{
		"EXTENSION_REGISTRY_DB_PASSWORD":   secrets[0],
		"EXTENSION_REGISTRY_DB_PORT":       "0",
		"EXTENSION_REGISTRY_DATABASE_URL":  "mysql://root:" + secrets[1] + "@db:3306/x",
		"EXTENSION_REGISTRY_NATS_URL":      "http://u:" + secrets[2] + "@a:4222,ftp://" + secrets[3] + "@b:4222",
		"EXTENSION_REGISTRY_NATS_PASSWORD": secrets[4],
		"EXTENSION_REGISTRY_NATS_TOKEN":    secrets[5],
		"EXTENSION_REGISTRY_ADMIN_TOKEN":   secrets[6],
	}
	_, err := loadConfig(env.lookup)
	if err == nil {
		t.Fatal("loadConfig accepted bad values")
	}
	t.Log(err)
	for _, s := range secrets {
		if strings.Contains(err.Error(), s) {
			t.Errorf("error shows secret %q", s)
		}
	}
	for _, key := range []string{"DATABASE_URL", "NATS_URL", "NATS_PASSWORD", "ADMIN_TOKEN"} {
		if !strings.Contains(err.Error(), "EXTENSION_REGISTRY_"+key+": ") {
			t.Errorf("no problem reported for %s", key)
		}
	}

	// An unparsable URL is not shown at all.
	_, err = loadConfig(envMap{"EXTENSION_REGISTRY_DATABASE_URL": "postgres://u:" + secrets[1] + "@host:port/db"}.lookup)
	if err == nil || strings.Contains(err.Error(), secrets[1]) {
		t.Errorf("unparsable URL: %v", err)
	}
	// A password in the query is redacted too.
	if got := redactPostgresURL("postgres://u@h/db?password=" + secrets[1]); strings.Contains(got, secrets[1]) {
		t.Errorf("redacted %q", got)
	}

	// Valid secrets never reach the redacted forms that logs use.
	cfg, err := loadConfig(envMap{
		"EXTENSION_REGISTRY_DB_PASSWORD": secrets[0],
		"EXTENSION_REGISTRY_NATS_URL":    "nats://u:" + secrets[2] + "@a:4222,nats://" + secrets[3] + "@b:4222",
	}.lookup)
	if err != nil {
		t.Fatal(err)
	}
	for _, logged := range []string{cfg.RedactedDatabaseURL(), cfg.RedactedNATSServers()} {
		for _, s := range secrets {
			if strings.Contains(logged, s) {
				t.Errorf("%q shows secret %q", logged, s)
			}
		}
	}
}

func TestConfigDatabaseURLWins(t *testing.T) {
	t.Parallel()
	url := "postgresql://app:pw@db.example:6432/registry?sslmode=require&search_path=reg"
	cfg, err := loadConfig(envMap{
		"EXTENSION_REGISTRY_DATABASE_URL": url,
		"EXTENSION_REGISTRY_DB_HOST":      "other",
		"EXTENSION_REGISTRY_DB_SCHEMA":    "ignored",
	}.lookup)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.DatabaseURL != url || cfg.Syncer.DatabaseURL != url {
		t.Errorf("DatabaseURL %q, want %q", cfg.DatabaseURL, url)
	}
	if cfg.Schema != "" {
		t.Errorf("Schema %q, want empty (the URL decides)", cfg.Schema)
	}
	if !slices.Equal(cfg.Ignored, []string{"EXTENSION_REGISTRY_DB_HOST", "EXTENSION_REGISTRY_DB_SCHEMA"}) {
		t.Errorf("Ignored %q", cfg.Ignored)
	}
	if got, want := cfg.RedactedDatabaseURL(), "postgresql://app:xxxxx@db.example:6432/registry?sslmode=require&search_path=reg"; got != want {
		t.Errorf("redacted %q, want %q", got, want)
	}
}

// TestConfigBuiltURL checks that the parts survive escaping: pgx reads back what was set.
func TestConfigBuiltURL(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name, host string
		wantHost   string
	}{
		{"Name", "db.internal", "db.internal"},
		{"IPv6", "::1", "::1"},
		{"Socket", "/var/run/postgresql", "/var/run/postgresql"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg, err := loadConfig(envMap{
				"EXTENSION_REGISTRY_DB_HOST":     tt.host,
				"EXTENSION_REGISTRY_DB_PORT":     "6543",
				"EXTENSION_REGISTRY_DB_NAME":     "reg db/é",
				"EXTENSION_REGISTRY_DB_USER":     "us@er:x",
				"EXTENSION_REGISTRY_DB_PASSWORD": "p@ss:w/rd?#% &=",
				"EXTENSION_REGISTRY_DB_SCHEMA":   "registry",
				"EXTENSION_REGISTRY_DB_SSLMODE":  "verify-full",
			}.lookup)
			if err != nil {
				t.Fatal(err)
			}
			pc, err := pgx.ParseConfig(cfg.DatabaseURL)
			if err != nil {
				t.Fatal(err)
			}
			if pc.Host != tt.wantHost || pc.Port != 6543 || pc.Database != "reg db/é" || pc.User != "us@er:x" || pc.Password != "p@ss:w/rd?#% &=" {
				t.Errorf("parsed host %q port %d db %q user %q password %q", pc.Host, pc.Port, pc.Database, pc.User, pc.Password)
			}
			if got := pc.RuntimeParams["search_path"]; got != "registry" {
				t.Errorf("search_path %q", got)
			}
			if pc.TLSConfig == nil && tt.name != "Socket" { // no TLS over a Unix socket
				t.Error("sslmode verify-full did not turn TLS on")
			}
			if strings.Contains(cfg.RedactedDatabaseURL(), "p@ss") {
				t.Errorf("redacted URL %q shows the password", cfg.RedactedDatabaseURL())
			}
		})
	}
}

// TestConfigDocs keeps the README's configuration section (between the config markers)
// generated from the spec in config.go.
func TestConfigDocs(t *testing.T) {
	t.Parallel()
	path := filepath.Join("..", "..", "README.md")
	const begin, end = "<!-- config:begin (generated: go test ./cmd/syncer -run TestConfigDocs -update) -->\n", "<!-- config:end -->"
	readme, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	text := string(readme)
	i, j := strings.Index(text, begin), strings.Index(text, end)
	if i < 0 || j < i {
		t.Fatalf("%s: configuration markers not found", path)
	}
	want := configurationDoc()
	if *update {
		text = text[:i+len(begin)] + want + text[j:]
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		i, j = strings.Index(text, begin), strings.Index(text, end)
	}
	if got := text[i+len(begin) : j]; got != want {
		t.Errorf("%s: the configuration section is out of date with the spec in config.go: run go test ./cmd/syncer -run TestConfigDocs -update", path)
	}
}

func configurationDoc() string {
	var b strings.Builder
	b.WriteString(`Every setting comes from an environment variable with the prefix ` + "`EXTENSION_REGISTRY_`" + `.
` + "`syncer run`" + ` and the other commands read all of them at start and refuse to start on any
bad value, listing every problem at once (secrets are never shown). ` + "`syncer help`" + ` prints
the same list. Durations are Go durations (` + "`500ms`, `2s`, `1m`, `168h`" + `). A variable set to
the empty string counts as set: ` + "`EXTENSION_REGISTRY_HTTP_ADDR=`" + ` disables HTTP.

| Variable | Default | Meaning |
| --- | --- | --- |
`)
	for _, v := range variables(&spec{}) {
		def := "(none)"
		if v.Default != "" {
			def = "`" + v.Default + "`"
		}
		fmt.Fprintf(&b, "| `%s` | %s | %s |\n", v.Key, def, strings.ReplaceAll(v.Desc, "|", `\|`))
	}
	b.WriteString(`
The database URL is ` + "`EXTENSION_REGISTRY_DATABASE_URL`" + ` when set; otherwise it is built from
the ` + "`DB_*`" + ` parts (each escaped) as
` + "`postgres://USER:PASSWORD@HOST:PORT/NAME?search_path=SCHEMA&sslmode=SSLMODE`" + `, so the
defaults give ` + "`postgres://postgres@localhost:5432/postgres?search_path=public&sslmode=disable`" + `.
` + "`EXTENSION_REGISTRY_DATABASE_URL`" + ` may also be a libpq keyword/value string
(` + "`host=db dbname=registry user=app password=secret search_path=registry`" + `); in either form
errors and logs show it with every password replaced by ` + "`xxxxx`" + `, and a value too malformed
to find its passwords in is not shown at all.
Variables without the prefix (` + "`DB_HOST`, `SOURCE`" + ` …) are never read.
`)
	return b.String()
}

func TestConfigErrorIsMultierror(t *testing.T) {
	t.Parallel()
	_, err := loadConfig(envMap{"EXTENSION_REGISTRY_DB_PORT": "x", "EXTENSION_REGISTRY_SOURCE": "y"}.lookup)
	var me interface{ WrappedErrors() []error }
	if !errors.As(err, &me) || len(me.WrappedErrors()) != 2 {
		t.Fatalf("want a multierror of 2 problems, got %v", err)
	}
}

// environ lists m as os.Environ would.
func (m envMap) environ() []string {
	out := make([]string, 0, len(m))
	for k, v := range m {
		out = append(out, k+"="+v)
	}
	return out
}
