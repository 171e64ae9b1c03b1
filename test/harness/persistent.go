package harness

import (
	"fmt"
	"os"
	"path/filepath"
)

// OpenPostgres starts a cluster that lives in dir and survives Stop: the first call runs
// initdb, later calls reuse the data. `syncer dev` uses it. Stop it with Shutdown.
func OpenPostgres(dir string, port int, opts PGOptions) (*Postgres, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(abs, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", abs, err)
	}
	p, err := newPostgres(abs, opts)
	if err != nil {
		return nil, err
	}
	p.Port = port
	if _, err := os.Stat(filepath.Join(p.dataDir(), "PG_VERSION")); os.IsNotExist(err) {
		if err := p.initdb(); err != nil {
			return nil, err
		}
	}
	// A server killed without shutting down leaves its pid file; postgres refuses to start
	// while the pid in it is alive, and recovers on its own otherwise.
	if err := p.Start(); err != nil {
		return nil, err
	}
	return p, nil
}

// OpenNATS starts an in-process NATS server whose JetStream store lives in dir and
// survives Shutdown (port 0 picks a free one).
func OpenNATS(dir string, port int) (*NATS, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(abs, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", abs, err)
	}
	if port == 0 {
		port = -1
	}
	n := &NATS{StoreDir: abs, Port: port}
	if err := n.Start(); err != nil {
		return nil, err
	}
	return n, nil
}
