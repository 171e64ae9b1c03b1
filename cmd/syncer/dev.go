package main

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/beamline/registry-syncer/devstack"
	"github.com/beamline/registry-syncer/fixtures"
	"github.com/beamline/registry-syncer/migrations"
)

// cmdDev brings the whole product up on this machine: a private PostgreSQL cluster from
// the installed server binaries and an embedded NATS server (both keeping their data in
// DIR, reused on the next start), migrations, the default fixtures (into an empty
// registry only), and the syncer itself. Ctrl-C stops everything.
func cmdDev(ctx context.Context, e *env, args []string) error {
	fs := newFlags("dev")
	dir := fs.String("dir", ".dev", "directory for the PostgreSQL cluster and the NATS store")
	pgPort := fs.Int("pg-port", 15432, "PostgreSQL port (a free one is picked if it is taken)")
	natsPort := fs.Int("nats-port", 14222, "NATS port (a free one is picked if it is taken)")
	httpAddr := fs.String("http", "127.0.0.1:9090", "HTTP address of the syncer (status page at /, /metrics, /readyz, POST /admin/sync)")
	if _, err := parseInto(fs, args, 0, 0); err != nil {
		return err
	}
	abs, err := filepath.Abs(*dir)
	if err != nil {
		return err
	}
	out := e.stdout
	fmt.Fprintf(out, "syncer dev: data in %s (kept; the next start reuses it; `make clean` removes it)\n", abs)

	// A previous dev killed without a shutdown (SIGKILL, a crash) left its pid file and
	// maybe backends: say what is cleared (OpenPostgres clears it).
	if st, err := devstack.ClearStale(filepath.Join(abs, "postgres", "data")); err != nil {
		return fmt.Errorf("dev: start PostgreSQL: %w", err)
	} else if st.PidFile {
		fmt.Fprintf(out, "  the previous PostgreSQL was not shut down: removed its stale postmaster.pid; it recovers from its WAL\n")
		if len(st.Killed) > 0 {
			fmt.Fprintf(out, "  stopped %d process(es) of it still running: %v\n", len(st.Killed), st.Killed)
		}
	}
	pg, err := devstack.OpenPostgres(filepath.Join(abs, "postgres"), portOrFree(*pgPort), devstack.PGOptions{Durable: true})
	if err != nil {
		return fmt.Errorf("dev: start PostgreSQL: %w", err)
	}
	defer pg.Shutdown(devstack.StopFast)
	ns, err := devstack.OpenNATS(filepath.Join(abs, "nats"), portOrFree(*natsPort))
	if err != nil {
		return fmt.Errorf("dev: start NATS: %w", err)
	}
	defer ns.Shutdown()

	dbURL := pg.URL("postgres", "public")
	if err := devPrepare(ctx, dbURL, out); err != nil {
		return err
	}
	overlay := map[string]string{
		"EXTENSION_REGISTRY_DATABASE_URL": dbURL,
		"EXTENSION_REGISTRY_NATS_URL":     ns.URL(),
		"EXTENSION_REGISTRY_HTTP_ADDR":    *httpAddr,
		"EXTENSION_REGISTRY_ADMIN_TOKEN":  devAdminToken,
		"EXTENSION_REGISTRY_SOURCE":       "database",
	}
	de := *e
	de.lookup = func(k string) (string, bool) {
		if v, ok := overlay[k]; ok {
			return v, true
		}
		return e.lookup(k)
	}
	cfg, err := de.config()
	if err != nil {
		return err
	}
	psql := fmt.Sprintf("postgresql://postgres@127.0.0.1:%d/postgres", pg.Port)
	fmt.Fprintf(out, `
  PostgreSQL  %s   (registry in schema public)
  NATS        %s   (JetStream; subjects %s.*)
  HTTP        http://%s/  (status page)  /metrics  /healthz  /readyz  POST /admin/sync (Bearer %s)

Every other syncer command talks to this stack with these variables (paste them into
another shell):

%s
Then, in that shell:
  ./bin/syncer status
  ./bin/syncer watch
  ./bin/syncer history --limit 5
  psql "%s" -c "UPDATE extensions SET timeout_ms = 250 WHERE id = 'pii_guard'"

Ctrl-C stops everything.

`, dbURL, ns.URL(), cfg.Publisher.Prefix, cfg.HTTPAddr, devAdminToken, devExports(overlay, cfg), psql)
	return daemon(ctx, cfg, newLogger(e.stderr, cfg))
}

// devAdminToken is the admin token of the dev stack (printed; never use it elsewhere).
const devAdminToken = "dev-admin-token-please-change"

// devExports is the block of shell exports that points every other command at the dev
// stack: the variables dev set, and the subject prefix it publishes under.
func devExports(overlay map[string]string, cfg *config) string {
	vars := maps.Clone(overlay)
	vars[envPrefix+"_SUBJECT_PREFIX"] = cfg.Publisher.Prefix
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(vars)) {
		fmt.Fprintf(&b, "export %s=%s\n", k, shellQuote(vars[k]))
	}
	return b.String()
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// devPrepare applies the migrations and imports the default fixtures into an empty
// registry (a registry someone changed is left as it is).
func devPrepare(ctx context.Context, dbURL string, out io.Writer) error {
	db, err := migrations.Open(dbURL)
	if err != nil {
		return err
	}
	applied, err := migrations.Up(ctx, db)
	db.Close()
	if err != nil {
		return fmt.Errorf("dev: %w", err)
	}
	for _, m := range applied {
		fmt.Fprintf(out, "  migrated %d %s\n", m.Version, m.Name)
	}
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		return err
	}
	defer pool.Close()
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM extensions`).Scan(&n); err != nil {
		return fmt.Errorf("dev: %w", err)
	}
	if n > 0 {
		fmt.Fprintf(out, "  registry has %d extensions; fixtures not imported\n", n)
		return nil
	}
	recs, err := fixtures.Load(fixtures.Defaults())
	if err != nil {
		return err
	}
	rep, err := fixtures.Import(ctx, pool, recs, "syncer dev")
	if err != nil {
		return fmt.Errorf("dev: import fixtures: %w", err)
	}
	fmt.Fprintf(out, "  default fixtures imported: %s\n", rep)
	return nil
}

// portOrFree returns port when nothing listens on it, else a free port.
func portOrFree(port int) int {
	l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
	if err == nil {
		l.Close()
		return port
	}
	l, err = net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return port
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
