package main

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/beamline/registry-syncer/migrations"
	"github.com/beamline/registry-syncer/test/harness"
)

const urlSecret = "Zq8-hunter2-pw"

// TestDatabaseURLForms: both forms pgx parses are accepted; neither the accepted nor the
// refused ones ever show the password, in errors or in the form logs use.
func TestDatabaseURLForms(t *testing.T) {
	t.Parallel()
	const key = "EXTENSION_REGISTRY_DATABASE_URL"
	accepted := []struct{ in, shown string }{
		{"host=db port=5432 dbname=registry user=app password=" + urlSecret + " search_path=registry",
			"host=db port=5432 dbname=registry user=app password='xxxxx' search_path=registry"},
		{"host=db password = '" + urlSecret + ` it\'s' dbname=r`, "host=db password = 'xxxxx' dbname=r"},
		{"password=" + urlSecret + `\ x sslpassword=` + urlSecret, "password='xxxxx' sslpassword='xxxxx'"},
		{"  host=/tmp  user=app  ", "  host=/tmp  user=app  "},
		{"postgres://app:" + urlSecret + "@db/registry?search_path=r", "postgres://app:xxxxx@db/registry?search_path=r"},
		{"postgres://app@db/registry?password=" + urlSecret, "postgres://app@db/registry?password=xxxxx"},
		{"postgresql://app@db/registry?sslmode=require&sslpassword=" + urlSecret, "postgresql://app@db/registry?sslmode=require&sslpassword=xxxxx"},
	}
	for _, c := range accepted {
		cfg, err := loadConfig(envMap{key: c.in, "EXTENSION_REGISTRY_DB_HOST": "other"}.lookup)
		if err != nil {
			t.Errorf("%s refused: %v", cfg.redactedOrNil(), err)
			continue
		}
		if got := cfg.RedactedDatabaseURL(); got != c.shown {
			t.Errorf("shown as %q, want %q", got, c.shown)
		}
		if cfg.DatabaseURL != c.in {
			t.Errorf("the connection string was changed: %q", cfg.DatabaseURL)
		}
	}
	refused := []struct{ in, want string }{
		{"host=db " + urlSecret + " dbname=r", "item 2 is not keyword=value"},
		{"host=db " + urlSecret + "=x dbname", "item 3 has no '='"},
		{"host=db password='" + urlSecret + " dbname=r", "the value of password has no closing quote"},
		{"host=db password=" + urlSecret + " sslmode=sometimes", "keyword/value string"},
		{"host=db pass word=" + urlSecret, "not keyword=value"},
		{"postgres://app:" + urlSecret + "/x@db/r", "does not parse"},
		{"postgres://app:" + urlSecret + "#x@db/r", "does not parse"},
		{"postgres://app:" + urlSecret + "@db:port/r", "does not parse"},
		{"postgres://app:" + urlSecret + "@db/r?sslmode=sometimes", "must be a valid PostgreSQL URL"},
		{"postgres://app:" + urlSecret + "@[::1/r", "does not parse"},
		{"mysql://root:" + urlSecret + "@db/x", "must be a postgres:// or postgresql:// URL or a keyword/value string"},
		{"   ", "must not be blank"},
	}
	for _, c := range refused {
		_, err := loadConfig(envMap{key: c.in}.lookup)
		if err == nil {
			t.Errorf("accepted a bad value (case %q)", c.want)
			continue
		}
		msg := err.Error()
		if strings.Contains(msg, urlSecret) || strings.Contains(msg, "hunter2") {
			t.Errorf("the error shows the password: %s", msg)
		}
		if !strings.Contains(msg, key+": ") || !strings.Contains(msg, c.want) {
			t.Errorf("got %s, want %q", msg, c.want)
		}
		if shown := redactPostgresURL(c.in); strings.Contains(shown, "hunter2") {
			t.Errorf("redacted to %q", shown)
		}
	}
}

// redactedOrNil names a config in a test failure without its secrets.
func (c *config) redactedOrNil() string {
	if c == nil {
		return "(config)"
	}
	return c.RedactedDatabaseURL()
}

// TestDatabaseURLKeywordValue: a keyword/value DATABASE_URL works for migrate and run,
// and nothing the commands print, the start log with its ignored variables included,
// holds the password; a connection failure does not show it either.
func TestDatabaseURLKeywordValue(t *testing.T) {
	t.Parallel()
	pg := harness.PG(t)
	schema := newSchema(t)
	nats := harness.NewNATS(t, harness.NATSOptions{})
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	// Trust authentication ignores the password.
	dsn := fmt.Sprintf("host=127.0.0.1 port=%d user=postgres password='%s' dbname=postgres sslmode=disable search_path=%s", pg.Port, urlSecret, schema)
	env := envMap{
		"EXTENSION_REGISTRY_DATABASE_URL":   dsn,
		"EXTENSION_REGISTRY_DB_PASSWORD":    urlSecret + "-parts",
		"EXTENSION_REGISTRY_DB_HOST":        "ignored.example",
		"EXTENSION_REGISTRY_NATS_URL":       nats.URL(),
		"EXTENSION_REGISTRY_HTTP_ADDR":      "127.0.0.1:0",
		"EXTENSION_REGISTRY_SUBJECT_PREFIX": "test.kv",
		"EXTENSION_REGISTRY_LEADER_RETRY":   "50ms",
		"EXTENSION_REGISTRY_LOG_FORMAT":     "json",
	}
	var output []string
	r := runCLI(t, ctx, env, "migrate")
	if r.code != exitOK || !strings.Contains(r.stdout, "applied") {
		t.Fatalf("migrate with a keyword/value string: exit %d", r.code)
	}
	output = append(output, r.stdout, r.stderr)
	db, err := migrations.Open(pg.URL("postgres", schema))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if st, err := migrations.Status(ctx, db); err != nil || !st[len(st)-1].Applied {
		t.Fatalf("schema %s not migrated by the keyword/value string: %v %v", schema, st, err)
	}

	d := startDaemon(t, "kv", env)
	waitReady(t, d.base)
	code, log := d.stop(t)
	if code != exitOK {
		t.Fatalf("run exit %d", code)
	}
	output = append(output, log)
	if !strings.Contains(log, "password='xxxxx'") || !strings.Contains(log, "EXTENSION_REGISTRY_DB_HOST") {
		t.Errorf("the start log does not show the redacted string and the ignored variables")
	}

	// Nothing listens on this port: the connection error must not show the password.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	for _, bad := range []string{
		fmt.Sprintf("host=127.0.0.1 port=%d user=app password=%s dbname=x connect_timeout=5", port, urlSecret),
		fmt.Sprintf("postgres://app:%s@127.0.0.1:%d/x?connect_timeout=5", urlSecret, port),
	} {
		for _, cmd := range [][]string{{"migrate"}, {"fixtures", "verify"}, {"run"}} {
			env := envMap{"EXTENSION_REGISTRY_DATABASE_URL": bad, "EXTENSION_REGISTRY_NATS_URL": nats.URL(),
				"EXTENSION_REGISTRY_HTTP_ADDR": "", "EXTENSION_REGISTRY_SUBJECT_PREFIX": "test.kvbad"}
			cctx := ctx
			var stop context.CancelFunc = func() {}
			if cmd[0] == "run" {
				// run retries the database: it runs until cancelled, logging each failure.
				cctx, stop = context.WithTimeout(ctx, 2*time.Second)
			}
			r := runCLI(t, cctx, env, cmd...)
			stop()
			if cmd[0] != "run" && r.code == exitOK {
				t.Errorf("%s against a closed port succeeded", cmd)
			}
			output = append(output, r.stdout, r.stderr)
		}
	}
	for _, o := range output {
		if strings.Contains(o, "hunter2") {
			t.Fatalf("output shows the password:\n%s", o)
		}
	}
}

// TestRunRefusesStreamOfAnotherPrefix: run exits at once, naming the variable and both
// prefixes, when its stream serves another prefix (what an earlier version made for a
// prefix whose name collided), and leaves that stream alone.
func TestRunRefusesStreamOfAnotherPrefix(t *testing.T) {
	t.Parallel()
	nats := harness.NewNATS(t, harness.NATSOptions{})
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	js, err := jetstream.New(nats.Connect(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "TEST_OWNER_DELTAS", Subjects: []string{"test-owner.delta.>"}}); err != nil {
		t.Fatal(err)
	}
	r := runCLI(t, ctx, envMap{
		"EXTENSION_REGISTRY_DATABASE_URL":   harness.PG(t).URL("postgres", newSchema(t)),
		"EXTENSION_REGISTRY_NATS_URL":       nats.URL(),
		"EXTENSION_REGISTRY_HTTP_ADDR":      "",
		"EXTENSION_REGISTRY_SUBJECT_PREFIX": "test.owner",
	}, "run")
	if r.code == exitOK {
		t.Fatal("run started on another prefix's stream")
	}
	for _, want := range []string{"EXTENSION_REGISTRY_SUBJECT_PREFIX", "TEST_OWNER_DELTAS", `"test-owner"`, `"test.owner"`} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr does not name %s", want)
		}
	}
	s, err := js.Stream(ctx, "TEST_OWNER_DELTAS")
	if err != nil || s.CachedInfo().Config.Subjects[0] != "test-owner.delta.>" {
		t.Fatalf("the other prefix's stream was changed: %v", err)
	}
}
