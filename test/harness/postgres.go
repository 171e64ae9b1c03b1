// Package harness starts the real dependencies that integration tests run against: a private
// PostgreSQL cluster from the installed server binaries and an in-process NATS server with
// JetStream, with helpers to inject faults (terminate backends, restart PostgreSQL, stop and
// start NATS). Nothing it starts outlives the test binary. The servers themselves are
// package devstack's (which `syncer dev` runs too); this package adds throwaway
// directories, per-test schemas, standbys, real nats-server binaries and testing hooks.
package harness

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/beamline/registry-syncer/devstack"
)

// PGOptions tunes a private cluster.
type PGOptions = devstack.PGOptions

// StopMode selects how the server is shut down.
type StopMode = devstack.StopMode

const (
	StopFast      = devstack.StopFast      // SIGINT: abort transactions, checkpoint, exit
	StopImmediate = devstack.StopImmediate // SIGQUIT: exit without checkpoint (crash recovery on start)
	StopKill      = devstack.StopKill      // SIGKILL of the postmaster
)

// Postgres is a private PostgreSQL cluster owned by the current process (a
// devstack.Postgres in a throwaway directory).
type Postgres struct {
	*devstack.Postgres
}

// rootDir holds every directory the harness creates, one sub-directory per process id, so
// that a run killed before its cleanup (a test timeout, SIGKILL) is swept by the next one.
func rootDir() string { return filepath.Join(os.TempDir(), "registry-syncer-harness") }

// PGBinDir finds the newest installed PostgreSQL server binaries: $PG_BIN if set, else
// the directory of `pg_config --bindir`, else /usr/lib/postgresql/<newest>/bin.
func PGBinDir() (string, error) { return devstack.PGBinDir() }

// sweepStale removes directories left by harness processes that no longer exist.
func sweepStale() {
	entries, _ := os.ReadDir(rootDir())
	for _, e := range entries {
		pid, err := strconv.Atoi(strings.SplitN(e.Name(), "-", 2)[0])
		if err != nil || pid == os.Getpid() {
			continue
		}
		if syscall.Kill(pid, 0) == nil {
			continue
		}
		_ = os.RemoveAll(filepath.Join(rootDir(), e.Name()))
	}
}

// processDir makes a fresh directory for this process, readable by the postgres user.
func processDir(kind string) (string, error) {
	sweepStale()
	if err := os.MkdirAll(rootDir(), 0o777); err != nil {
		return "", err
	}
	_ = os.Chmod(rootDir(), 0o1777)
	dir, err := os.MkdirTemp(rootDir(), fmt.Sprintf("%d-%s-", os.Getpid(), kind))
	if err != nil {
		return "", err
	}
	return dir, os.Chmod(dir, 0o755)
}

func freePort() (int, error) { return devstack.FreePort() }

// newPostgres describes a cluster rooted at dir (which must exist).
func newPostgres(dir string, opts PGOptions) (*Postgres, error) {
	p, err := devstack.NewPostgres(dir, opts)
	if err != nil {
		return nil, err
	}
	return &Postgres{p}, nil
}

// StartPostgres runs initdb into a new directory and starts the server on a free loopback
// port. Call Stop when done (TestMain: after m.Run).
func StartPostgres(opts PGOptions) (*Postgres, error) {
	dir, err := processDir("pg")
	if err != nil {
		return nil, fmt.Errorf("create cluster directory: %w", err)
	}
	p, err := newPostgres(dir, opts)
	if err == nil {
		err = p.Init()
	}
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	if p.Port, err = freePort(); err != nil {
		return nil, err
	}
	if err := p.Start(); err != nil {
		p.Stop()
		return nil, err
	}
	return p, nil
}

// Stop shuts the server down and removes its directory. Safe to call twice.
func (p *Postgres) Stop() {
	if p == nil || p.Postgres == nil {
		return
	}
	p.Shutdown(StopFast)
	if p.Dir != "" {
		_ = os.RemoveAll(p.Dir)
	}
}
