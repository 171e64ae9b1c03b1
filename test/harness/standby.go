package harness

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// StartStandby makes an asynchronous streaming standby of p with pg_basebackup -R, which
// replicates from upstream (host:port: p's address, or a Proxy in front of it so that a
// test can hold replication back), and starts it on a free port. Stop it like any cluster.
func (p *Postgres) StartStandby(upstream string) (*Postgres, error) {
	dir, err := processDir("pg-standby")
	if err != nil {
		return nil, err
	}
	s, err := newPostgres(dir, p.Options())
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	host, port, ok := strings.Cut(upstream, ":")
	if !ok {
		return nil, fmt.Errorf("standby upstream %q: want host:port", upstream)
	}
	bb := exec.Command(filepath.Join(p.BinDir(), "pg_basebackup"), "-h", host, "-p", port, "-U", "postgres",
		"-D", s.DataDir(), "-R", "-X", "stream", "--no-sync", "-c", "fast")
	bb.SysProcAttr = &syscall.SysProcAttr{Credential: s.Credential()}
	if out, err := bb.CombinedOutput(); err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("pg_basebackup: %w: %s", err, out)
	}
	if s.Port, err = freePort(); err != nil {
		return nil, err
	}
	if err := s.Start(); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

// Promote ends recovery on a standby and waits until it accepts writes.
func (p *Postgres) Promote(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, p.AdminURL())
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	var ok bool
	if err := conn.QueryRow(ctx, `SELECT pg_promote(true, 60)`).Scan(&ok); err != nil {
		return fmt.Errorf("promote: %w", err)
	}
	if !ok {
		return fmt.Errorf("promote: not promoted within 60s")
	}
	return nil
}

// WaitReplayed waits until standby has replayed everything p had written when called.
func (p *Postgres) WaitReplayed(ctx context.Context, standby *Postgres) error {
	var lsn string
	if err := p.queryRow(ctx, `SELECT pg_current_wal_lsn()::text`, &lsn); err != nil {
		return err
	}
	for {
		var done bool
		err := standby.queryRow(ctx, `SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn`, &done, lsn)
		if err == nil && done {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("standby did not replay up to %s: %w (last error %v)", lsn, ctx.Err(), err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (p *Postgres) queryRow(ctx context.Context, sql string, dst any, args ...any) error {
	conn, err := pgx.Connect(ctx, p.AdminURL())
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	return conn.QueryRow(ctx, sql, args...).Scan(dst)
}

// Addr is the server's host:port.
func (p *Postgres) Addr() string { return "127.0.0.1:" + strconv.Itoa(p.Port) }

// Dump runs pg_dump of one schema of the postgres database into a plain SQL file.
func (p *Postgres) Dump(ctx context.Context, schema, file string) error {
	cmd := exec.CommandContext(ctx, filepath.Join(p.BinDir(), "pg_dump"), "-h", "127.0.0.1", "-p", strconv.Itoa(p.Port),
		"-U", "postgres", "-n", schema, "-f", file, "postgres")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("pg_dump: %w: %s", err, out)
	}
	return nil
}

// Restore runs a plain SQL dump with psql, stopping at the first error.
func (p *Postgres) Restore(ctx context.Context, file string) error {
	cmd := exec.CommandContext(ctx, filepath.Join(p.BinDir(), "psql"), "-h", "127.0.0.1", "-p", strconv.Itoa(p.Port),
		"-U", "postgres", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-1", "-f", file, "postgres")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("psql restore: %w: %s", err, out)
	}
	return nil
}
