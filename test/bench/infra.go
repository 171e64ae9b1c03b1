package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"

	"github.com/beamline/registry-syncer/cache"
	"github.com/beamline/registry-syncer/client"
	"github.com/beamline/registry-syncer/migrations"
	"github.com/beamline/registry-syncer/protocol"
	"github.com/beamline/registry-syncer/test/harness"
)

// adminToken is the bearer token of every syncer the benchmark starts.
const adminToken = "bench-admin-token-0123456789"

// env owns everything the run starts; close stops it all, in reverse order, exactly once.
type env struct {
	opts *options
	pg   *harness.Postgres // durable cluster (fsync on)
	nats *harness.NATS
	logs string // directory of the syncer logs

	mu       sync.Mutex
	cleanups []func()
	closed   bool
}

// onClose registers f to run at close (last registered runs first).
func (e *env) onClose(f func()) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		go f()
		return
	}
	e.cleanups = append(e.cleanups, f)
}

func (e *env) close() {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return
	}
	e.closed = true
	fs := e.cleanups
	e.cleanups = nil
	e.mu.Unlock()
	for i := len(fs) - 1; i >= 0; i-- {
		fs[i]()
	}
}

func (e *env) logf(format string, args ...any) {
	fmt.Fprintf(e.opts.log, "bench: "+format+"\n", args...)
}

// startInfra starts the durable PostgreSQL cluster and the in-process NATS server.
func startInfra(e *env) error {
	dir, err := os.MkdirTemp("", "registry-bench-logs-")
	if err != nil {
		return err
	}
	e.logs = dir
	e.onClose(func() {
		if e.opts.keepLogs {
			e.logf("syncer logs kept in %s", dir)
			return
		}
		_ = os.RemoveAll(dir)
	})
	pg, err := harness.StartPostgres(harness.PGOptions{Durable: true})
	if err != nil {
		return fmt.Errorf("start durable postgres: %w", err)
	}
	e.pg = pg
	e.onClose(pg.Stop)
	n, err := harness.StartNATS(harness.NATSOptions{})
	if err != nil {
		return fmt.Errorf("start nats: %w", err)
	}
	e.nats = n
	e.onClose(n.Close)
	return nil
}

// connectNATS opens a client connection that is closed at the end of the run.
func (e *env) connectNATS(name string) (*nats.Conn, error) {
	nc, err := nats.Connect(e.nats.URL(), nats.Name(name), nats.MaxReconnects(-1),
		nats.ReconnectWait(20*time.Millisecond))
	if err != nil {
		return nil, fmt.Errorf("connect nats: %w", err)
	}
	e.onClose(nc.Close)
	return nc, nil
}

// connectPG opens one connection that is closed at the end of the run.
func (e *env) connectPG(ctx context.Context, url string) (*pgx.Conn, error) {
	return e.connectPGApp(ctx, url, "bench")
}

// connectPGApp is connectPG with an application_name (for pg_stat_activity sampling).
func (e *env) connectPGApp(ctx context.Context, url, app string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, err
	}
	cfg.RuntimeParams["application_name"] = app
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	e.onClose(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = conn.Close(cctx)
	})
	return conn, nil
}

func (e *env) connectPGs(ctx context.Context, url string, k int) ([]*pgx.Conn, error) {
	conns := make([]*pgx.Conn, k)
	for i := range conns {
		c, err := e.connectPGApp(ctx, url, "bench-writer")
		if err != nil {
			return nil, err
		}
		conns[i] = c
	}
	return conns, nil
}

// createSchema creates (again) a schema and, with migrate, the registry in it.
func createSchema(ctx context.Context, pg *harness.Postgres, name string, migrate bool) (string, error) {
	ident := pgx.Identifier{name}.Sanitize()
	if err := pg.Exec(ctx, "DROP SCHEMA IF EXISTS "+ident+" CASCADE"); err != nil {
		return "", err
	}
	if err := pg.Exec(ctx, "CREATE SCHEMA "+ident); err != nil {
		return "", err
	}
	url := pg.URL("postgres", name)
	if !migrate {
		return url, nil
	}
	db, err := migrations.Open(url)
	if err != nil {
		return "", err
	}
	defer db.Close()
	if _, err := migrations.Up(ctx, db); err != nil {
		return "", fmt.Errorf("migrate schema %s: %w", name, err)
	}
	return url, nil
}

// importSynthetic writes exts (cache.Synthetic) with COPY into extensions, versions and
// instances, in one transaction, and returns the time from BEGIN until COMMIT returned.
func importSynthetic(ctx context.Context, conn *pgx.Conn, table string, exts []cache.Extension) (time.Duration, error) {
	extRows := make([][]any, 0, len(exts))
	var verRows, instRows [][]any
	for i := range exts {
		x := &exts[i]
		extRows = append(extRows, []any{x.ID, x.Type, x.Subject, int32(x.TimeoutMS), int32(x.Retry), x.Enabled, x.Version,
			string(x.Config), string(x.Metadata)})
		for _, v := range x.Versions {
			verRows = append(verRows, []any{x.ID, v.Version, v.Subject, int32(v.TimeoutMS), int32(v.Retry), v.Enabled,
				string(v.Config), string(v.Metadata), string(v.RoutingRules)})
		}
		for _, in := range x.Instances {
			instRows = append(instRows, []any{x.ID, in.InstanceID, in.Subject, int32(in.Weight), in.Enabled, in.HealthStatus})
		}
	}
	start := time.Now()
	tx, err := conn.Begin(ctx)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if _, err := tx.CopyFrom(ctx, pgx.Identifier{table},
		[]string{"id", "type", "subject", "timeout_ms", "retry", "enabled", "version", "config", "metadata"},
		pgx.CopyFromRows(extRows)); err != nil {
		return 0, fmt.Errorf("copy extensions: %w", err)
	}
	if table == "extensions" {
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"extension_versions"},
			[]string{"id", "version", "subject", "timeout_ms", "retry", "enabled", "config", "metadata", "routing_rules"},
			pgx.CopyFromRows(verRows)); err != nil {
			return 0, fmt.Errorf("copy extension_versions: %w", err)
		}
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"extension_instances"},
			[]string{"extension_id", "instance_id", "subject", "weight", "enabled", "health_status"},
			pgx.CopyFromRows(instRows)); err != nil {
			return 0, fmt.Errorf("copy extension_instances: %w", err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("commit import: %w", err)
	}
	return time.Since(start), nil
}

// readRegistry reads the whole registry at one revision, as the syncer's reconcile does,
// and builds the snapshot a router must end up with.
func readRegistry(ctx context.Context, conn *pgx.Conn) (*cache.Snapshot, error) {
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	var rev int64
	if err := tx.QueryRow(ctx, `SELECT revision FROM registry_counter`).Scan(&rev); err != nil {
		return nil, err
	}
	var exts []cache.Extension
	index := map[string]int{}
	rows, _ := tx.Query(ctx, `SELECT id, type, subject, timeout_ms, retry, enabled, version, config::text, metadata::text FROM extensions ORDER BY id`)
	for rows.Next() {
		var x cache.Extension
		var cfg, md string
		if err := rows.Scan(&x.ID, &x.Type, &x.Subject, &x.TimeoutMS, &x.Retry, &x.Enabled, &x.Version, &cfg, &md); err != nil {
			rows.Close()
			return nil, err
		}
		x.Config, x.Metadata = []byte(cfg), []byte(md)
		x.Versions, x.Instances = []cache.Version{}, []cache.Instance{}
		index[x.ID] = len(exts)
		exts = append(exts, x)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	rows, _ = tx.Query(ctx, `SELECT id, version, subject, timeout_ms, retry, enabled, config::text, metadata::text, routing_rules::text FROM extension_versions ORDER BY id, version`)
	for rows.Next() {
		var id, cfg, md, rr string
		var v cache.Version
		if err := rows.Scan(&id, &v.Version, &v.Subject, &v.TimeoutMS, &v.Retry, &v.Enabled, &cfg, &md, &rr); err != nil {
			rows.Close()
			return nil, err
		}
		v.Config, v.Metadata, v.RoutingRules = []byte(cfg), []byte(md), []byte(rr)
		if i, ok := index[id]; ok {
			exts[i].Versions = append(exts[i].Versions, v)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	rows, _ = tx.Query(ctx, `SELECT extension_id, instance_id, subject, weight, enabled, health_status FROM extension_instances ORDER BY extension_id, instance_id`)
	for rows.Next() {
		var id string
		var in cache.Instance
		if err := rows.Scan(&id, &in.InstanceID, &in.Subject, &in.Weight, &in.Enabled, &in.HealthStatus); err != nil {
			rows.Close()
			return nil, err
		}
		if i, ok := index[id]; ok {
			exts[i].Instances = append(exts[i].Instances, in)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return cache.New(rev, protocol.SourceDatabase, exts)
}

func counter(ctx context.Context, conn *pgx.Conn) (int64, error) {
	var rev int64
	err := conn.QueryRow(ctx, `SELECT revision FROM registry_counter`).Scan(&rev)
	return rev, err
}

// syncerProc is one `syncer run` process.
type syncerProc struct {
	name    string
	cmd     *exec.Cmd
	http    string // host:port
	logPath string
	done    chan struct{}
	exitErr error
	cancel  context.CancelFunc // in-process syncer (-syncer-inprocess)

	stopOnce sync.Once
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// startSyncer starts `syncer run` on the registry in dbURL, publishing under prefix, and
// waits until it reports ready.
func (e *env) startSyncer(ctx context.Context, name, dbURL, prefix string, readyTimeout time.Duration) (*syncerProc, error) {
	return e.startSyncerWith(ctx, name, dbURL, prefix, readyTimeout, nil)
}

// startSyncerWith is startSyncer with extra KEY=VALUE settings (before -syncer-env; not
// applied to an in-process syncer).
func (e *env) startSyncerWith(ctx context.Context, name, dbURL, prefix string, readyTimeout time.Duration, extra []string) (*syncerProc, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	p := &syncerProc{name: name, http: fmt.Sprintf("127.0.0.1:%d", port), done: make(chan struct{}),
		logPath: filepath.Join(e.logs, "syncer-"+name+".log")}
	if e.opts.inprocess {
		if err := e.startInprocSyncer(ctx, p, dbURL, prefix, readyTimeout); err != nil {
			return nil, err
		}
		return p, nil
	}
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, err
	}
	var environ []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "EXTENSION_REGISTRY_") {
			environ = append(environ, kv)
		}
	}
	environ = append(environ,
		"EXTENSION_REGISTRY_DATABASE_URL="+dbURL,
		"EXTENSION_REGISTRY_NATS_URL="+e.nats.URL(),
		"EXTENSION_REGISTRY_SUBJECT_PREFIX="+prefix,
		"EXTENSION_REGISTRY_HTTP_ADDR="+p.http,
		"EXTENSION_REGISTRY_ADMIN_TOKEN="+adminToken,
		// The periodic reconcile would land in the middle of latency measurements; the
		// benchmark forces reconciles itself (POST /admin/sync) where it measures them.
		"EXTENSION_REGISTRY_SYNC_INTERVAL_SECONDS=3600",
		"EXTENSION_REGISTRY_SNAPSHOT_INTERVAL=1s",
		"EXTENSION_REGISTRY_HEARTBEAT_INTERVAL=2s",
		"EXTENSION_REGISTRY_LOG_LEVEL=info",
	)
	environ = append(environ, extra...)
	environ = append(environ, e.opts.syncerEnv...) // the last value of a key wins
	cmd := exec.Command(e.opts.syncerBin, "run")
	cmd.Env = environ
	cmd.Stdout, cmd.Stderr = logf, logf
	// Pdeathsig: if the benchmark dies without cleaning up, the syncer dies with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", e.opts.syncerBin, err)
	}
	p.cmd = cmd
	go func() {
		p.exitErr = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	e.onClose(p.stop)
	if err := p.waitReady(ctx, readyTimeout); err != nil {
		p.stop()
		return nil, err
	}
	return p, nil
}

// stop sends SIGTERM and waits (SIGKILL after 10 s). Safe to call twice.
func (p *syncerProc) stop() {
	p.stopOnce.Do(func() {
		if p.cancel != nil {
			p.cancel()
			<-p.done
			return
		}
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
			<-p.done
		}
	})
}

func (p *syncerProc) logTail() string {
	data, _ := os.ReadFile(p.logPath)
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	return strings.Join(lines, "\n")
}

var httpClient = &http.Client{Timeout: 2 * time.Minute}

func (p *syncerProc) waitReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		select {
		case <-p.done:
			return fmt.Errorf("syncer %s exited during start-up (%v):\n%s", p.name, p.exitErr, p.logTail())
		default:
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.http+"/readyz", nil)
		resp, err := httpClient.Do(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("syncer %s not ready within %s:\n%s", p.name, timeout, p.logTail())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// metrics scrapes /metrics and returns the unlabelled samples by name.
func (p *syncerProc) metrics(ctx context.Context) (map[string]float64, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.http+"/metrics", nil)
	resp, err := httpClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' || strings.Contains(line, "{") {
			continue
		}
		name, val, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		if f, err := strconv.ParseFloat(strings.TrimSpace(val), 64); err == nil {
			out[name] = f
		}
	}
	return out, sc.Err()
}

// forceSync runs POST /admin/sync and returns its round-trip time.
func (p *syncerProc) forceSync(ctx context.Context) (time.Duration, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+p.http+"/admin/sync", nil)
	req.Header.Set("Authorization", "Bearer "+adminToken)
	start := time.Now()
	resp, err := httpClient.Do(req)
	if err != nil {
		return 0, err
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	rtt := time.Since(start)
	if resp.StatusCode != http.StatusOK {
		return rtt, fmt.Errorf("POST /admin/sync: %s: %s", resp.Status, bytes.TrimSpace(body))
	}
	return rtt, nil
}

// procStatus returns a field of /proc/<pid>/status in bytes (VmHWM, VmRSS).
func (p *syncerProc) procStatus(field string) (int64, error) {
	if p.cmd == nil {
		return procStatusKB(os.Getpid(), field) // in-process: the benchmark's own
	}
	return procStatusKB(p.cmd.Process.Pid, field)
}

// cpu is the syncer process's CPU time so far (user + system); in-process, 0 (its CPU is
// the benchmark's own).
func (p *syncerProc) cpu() time.Duration {
	if p.cmd == nil {
		return 0
	}
	return processCPU(p.cmd.Process.Pid)
}

// processCPU is a process's CPU time so far, user + system, from /proc/<pid>/stat (0 when
// it cannot be read).
func processCPU(pid int) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name (field 2) is in parentheses and may hold spaces: fields count
	// from after its closing one; utime and stime are fields 14 and 15, in clock ticks.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 13 {
		return 0
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	s, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0
	}
	const ticksPerSecond = 100 // USER_HZ on Linux
	return time.Duration(u+s) * time.Second / ticksPerSecond
}

func procStatusKB(pid int, field string) (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			f := strings.Fields(v)
			if len(f) == 0 {
				break
			}
			kb, err := strconv.ParseInt(f[0], 10, 64)
			return kb * 1024, err
		}
	}
	return 0, fmt.Errorf("/proc/%d/status has no %s", pid, field)
}

// revisionBuilder creates procedure name(n int, ids text[], base bigint) in reg's schema:
// n one-row revisions, each its own transaction (COMMIT inside the procedure), the k-th
// (k = base + i) setting extension ids[1 + k % len(ids)]'s metadata to metadata, an SQL
// expression in k that must differ for every k (an update that leaves a row as it was
// makes no revision). It returns a connection to call it on, with synchronous_commit off:
// many revisions are built fast, and their flushes are not what a section measures.
func revisionBuilder(ctx context.Context, e *env, reg *registry, name, metadata string) (*pgx.Conn, error) {
	conn, err := e.connectPG(ctx, reg.url)
	if err != nil {
		return nil, err
	}
	proc := fmt.Sprintf(`CREATE OR REPLACE PROCEDURE %s(n int, ids text[], base bigint) LANGUAGE plpgsql AS $$
DECLARE k bigint;
BEGIN
  FOR i IN 1..n LOOP
    k := base + i;
    UPDATE extensions SET metadata = %s WHERE id = ids[1 + (k %% array_length(ids, 1))];
    COMMIT;
  END LOOP;
END $$`, name, metadata)
	for _, q := range []string{proc, `SET synchronous_commit = off`} {
		if _, err := conn.Exec(ctx, q); err != nil {
			return nil, fmt.Errorf("%s: %w", q, err)
		}
	}
	return conn, nil
}

// registry is a migrated schema with a synthetic registry and a syncer following it.
type registry struct {
	name   string
	url    string
	prefix string
	names  protocol.Names
	ids    []string // extension ids, ascending
	syncer *syncerProc
}

// newRegistry creates schema bench_<name> with n synthetic extensions and starts a
// syncer publishing it under bench.<name>.
func (e *env) newRegistry(ctx context.Context, name string, n int) (*registry, error) {
	url, err := createSchema(ctx, e.pg, "bench_"+name, true)
	if err != nil {
		return nil, err
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	exts := cache.Synthetic(n)
	if _, err := importSynthetic(ctx, conn, "extensions", exts); err != nil {
		return nil, err
	}
	if _, err := conn.Exec(ctx, `VACUUM ANALYZE extensions`); err != nil {
		return nil, err
	}
	r := &registry{name: name, url: url, prefix: "bench." + name}
	r.names, _ = protocol.NewNames(r.prefix)
	for i := range exts {
		r.ids = append(r.ids, exts[i].ID)
	}
	r.syncer, err = e.startSyncer(ctx, name, url, r.prefix, 2*time.Minute)
	if err != nil {
		return nil, err
	}
	return r, nil
}

// startClient starts a router client on nc and waits for its first snapshot. The client
// runs until Stop or until ctx ends.
func startClient(ctx context.Context, nc *nats.Conn, prefix string, onChange func(old, new *cache.Snapshot, changed []string)) (*client.Client, error) {
	c, err := client.New(nc, client.Config{Prefix: prefix, OnChange: onChange, RequestTimeout: 10 * time.Second})
	if err != nil {
		return nil, err
	}
	if err := c.Start(ctx); err != nil {
		c.Stop()
		return nil, err
	}
	if !waitUntil(ctx, 2*time.Minute, c.Ready) {
		c.Stop()
		return nil, fmt.Errorf("client on %s: no snapshot within 2 minutes: %w", prefix, cmpErr(ctx.Err(), errTimeout))
	}
	return c, nil
}

func cmpErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// lateClientAgrees starts a router client now, on its own NATS connection named name,
// and reports whether it gets the database's content (read on conn).
func lateClientAgrees(ctx context.Context, e *env, reg *registry, conn *pgx.Conn, name string) (bool, error) {
	nc, err := e.connectNATS(name)
	if err != nil {
		return false, err
	}
	c, err := startClient(ctx, nc, reg.prefix, nil)
	if err != nil {
		return false, err
	}
	defer c.Stop()
	_, _, ok, err := verifyClients(ctx, conn, []*clientT{c}, 30*time.Second)
	return ok, err
}

// verifyClients compares every client's snapshot with the database's content.
func verifyClients(ctx context.Context, conn *pgx.Conn, clients []*clientT, timeout time.Duration) (dbRev int64, dbSum string, ok bool, err error) {
	db, err := readRegistry(ctx, conn)
	if err != nil {
		return 0, "", false, err
	}
	deadline := time.Now().Add(timeout)
	for {
		ok = true
		for _, c := range clients {
			s := c.Snapshot()
			if s == nil || s.Revision() != db.Revision() || s.Checksum() != db.Checksum() {
				ok = false
				break
			}
		}
		if ok || time.Now().After(deadline) || ctx.Err() != nil {
			return db.Revision(), db.Checksum(), ok, ctx.Err()
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// parseSeq reads the benchmark's sequence number from an extension's canonical
// metadata, {"seq":N}; -1 when there is none.
func parseSeq(md []byte) int64 {
	i := bytes.Index(md, []byte(`"seq":`))
	if i < 0 {
		return -1
	}
	var n int64
	j := i + 6
	for j < len(md) && md[j] == ' ' {
		j++
	}
	if j >= len(md) || md[j] < '0' || md[j] > '9' {
		return -1
	}
	for ; j < len(md) && md[j] >= '0' && md[j] <= '9'; j++ {
		n = n*10 + int64(md[j]-'0')
	}
	return n
}

var errTimeout = errors.New("timed out")

// clientT is the router client.
type clientT = client.Client
