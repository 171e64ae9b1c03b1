package devstack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// PGOptions tunes a private cluster.
type PGOptions struct {
	// Durable keeps fsync on (benchmarks that compare commit rates want it, and so does
	// `syncer dev`, whose data outlives a crash); tests leave it off because a throwaway
	// cluster never survives an OS crash anyway.
	Durable bool
}

// Postgres is a private PostgreSQL cluster owned by the current process.
type Postgres struct {
	Dir  string // cluster root (data directory, socket and server.log live below it)
	Port int

	bin  string
	cred *syscall.Credential
	opts PGOptions

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	log  *os.File
}

// PGBinDir finds the newest installed PostgreSQL server binaries: $PG_BIN if set, else
// the directory of `pg_config --bindir`, else /usr/lib/postgresql/<newest>/bin.
func PGBinDir() (string, error) {
	if d := os.Getenv("PG_BIN"); d != "" {
		return d, checkPGBin(d)
	}
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		d := strings.TrimSpace(string(out))
		if checkPGBin(d) == nil {
			return d, nil
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return pgMajor(dirs[i]) > pgMajor(dirs[j]) })
	for _, d := range dirs {
		if checkPGBin(d) == nil {
			return d, nil
		}
	}
	return "", errors.New("PostgreSQL server binaries (initdb, postgres) not found: install postgresql (>= 14) or set PG_BIN to their directory")
}

func pgMajor(dir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(dir)))
	return n
}

func checkPGBin(d string) error {
	for _, b := range []string{"initdb", "postgres"} {
		if _, err := os.Stat(filepath.Join(d, b)); err != nil {
			return fmt.Errorf("%s: %w", b, err)
		}
	}
	return nil
}

// credential returns the postgres system user when running as root (PostgreSQL refuses to
// run as root), nil otherwise.
func credential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root needs a 'postgres' system user to run the server: %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// NewPostgres describes a cluster rooted at dir (which must exist), owned by the user the
// server will run as. Nothing runs yet: Init creates the data directory, Start starts
// the server (set Port first).
func NewPostgres(dir string, opts PGOptions) (*Postgres, error) {
	bin, err := PGBinDir()
	if err != nil {
		return nil, err
	}
	cred, err := credential()
	if err != nil {
		return nil, err
	}
	if cred != nil {
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			return nil, err
		}
	}
	return &Postgres{Dir: dir, bin: bin, cred: cred, opts: opts}, nil
}

// Init runs initdb into the data directory (superuser postgres, trust authentication).
func (p *Postgres) Init() error {
	initdb := exec.Command(filepath.Join(p.bin, "initdb"), "-D", p.DataDir(), "-U", "postgres",
		"-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: p.cred}
	if out, err := initdb.CombinedOutput(); err != nil {
		return fmt.Errorf("initdb: %w: %s", err, out)
	}
	return nil
}

// DataDir is the cluster's data directory (PGDATA).
func (p *Postgres) DataDir() string { return filepath.Join(p.Dir, "data") }

// BinDir is the directory of the server binaries (pg_basebackup, pg_dump, psql live
// there too).
func (p *Postgres) BinDir() string { return p.bin }

// Credential is the user the server runs as (nil: the current user).
func (p *Postgres) Credential() *syscall.Credential { return p.cred }

// Options are the options the cluster was described with.
func (p *Postgres) Options() PGOptions { return p.opts }

// FreePort is a TCP port free on the loopback interface right now.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Start starts the server (again) on its port and waits until it accepts connections.
func (p *Postgres) Start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		return errors.New("postgres already running")
	}
	fsync := "off"
	if p.opts.Durable {
		fsync = "on"
	}
	logf, err := os.OpenFile(filepath.Join(p.Dir, "server.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(filepath.Join(p.bin, "postgres"), "-D", p.DataDir(),
		"-p", strconv.Itoa(p.Port),
		"-c", "listen_addresses=127.0.0.1",
		"-c", "unix_socket_directories="+p.DataDir(),
		"-c", "fsync="+fsync,
		"-c", "full_page_writes="+fsync,
		"-c", "max_connections=300",
		"-c", "shared_buffers=128MB",
		"-c", "max_wal_size=2GB",
		"-c", "log_min_messages=warning",
	)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Pdeathsig: if the owning process dies without cleaning up (a test binary killed,
	// `syncer dev` killed with SIGKILL), the postmaster dies with it (its backends exit
	// when they notice the postmaster is gone; OpenPostgres clears what is left). Setpgid:
	// the postmaster and its backends form one process group of their own.
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: p.cred, Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start postgres: %w", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	p.cmd, p.done, p.log = cmd, done, logf

	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		conn, err := pgx.Connect(ctx, p.AdminURL())
		cancel()
		if err == nil {
			conn.Close(context.Background())
			return nil
		}
		select {
		case <-done:
			p.cmd = nil
			logf.Close()
			return fmt.Errorf("postgres exited during start-up: %s(see %s)", lastLines(filepath.Join(p.Dir, "server.log"), 3), filepath.Join(p.Dir, "server.log"))
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("postgres did not accept connections within 30s: %v", err)
		}
	}
}

// lastLines is the end of a log file, for an error message ("" when unreadable).
func lastLines(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n") + "\n"
}

// Pid is the postmaster's process id (0 while stopped).
func (p *Postgres) Pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// StopMode selects how the server is shut down.
type StopMode int

const (
	StopFast      StopMode = iota // SIGINT: abort transactions, checkpoint, exit
	StopImmediate                 // SIGQUIT: exit without checkpoint (crash recovery on start)
	StopKill                      // SIGKILL of the postmaster
)

// Shutdown stops the server but keeps its data, so Start can bring it back.
func (p *Postgres) Shutdown(mode StopMode) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return
	}
	sig := map[StopMode]syscall.Signal{StopFast: syscall.SIGINT, StopImmediate: syscall.SIGQUIT, StopKill: syscall.SIGKILL}[mode]
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
	if mode == StopKill {
		// Orphaned backends exit on their own once they notice; kill the group to be sure
		// the port and shared memory are free for the restart.
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		_ = os.Remove(filepath.Join(p.DataDir(), "postmaster.pid"))
	}
	p.log.Close()
	p.cmd = nil
}

// Restart stops the server with mode and starts it again on the same port.
func (p *Postgres) Restart(mode StopMode) error {
	p.Shutdown(mode)
	return p.Start()
}

// AdminURL connects to the postgres database as the superuser.
func (p *Postgres) AdminURL() string { return p.URL("postgres", "") }

// URL builds a connection URL for database db; a non-empty schema becomes the search_path.
func (p *Postgres) URL(db, schema string) string {
	u := url.URL{Scheme: "postgres", User: url.User("postgres"), Host: fmt.Sprintf("127.0.0.1:%d", p.Port), Path: "/" + db}
	q := url.Values{"sslmode": {"disable"}}
	if schema != "" {
		q.Set("search_path", schema)
	}
	u.RawQuery = q.Encode()
	return u.String()
}

// Exec runs one SQL statement as the superuser in the postgres database.
func (p *Postgres) Exec(ctx context.Context, sql string, args ...any) error {
	conn, err := pgx.Connect(ctx, p.AdminURL())
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, sql, args...)
	return err
}

// TerminateBackends kills every client backend whose application_name is appName (all
// client backends but the caller's when appName is empty). It returns how many it killed.
func (p *Postgres) TerminateBackends(ctx context.Context, appName string) (int, error) {
	conn, err := pgx.Connect(ctx, p.AdminURL())
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.Background())
	var n int
	err = conn.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
		AND ($1 = '' OR application_name = $1)`, appName).Scan(&n)
	return n, err
}
