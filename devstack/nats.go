package devstack

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// NATS is an in-process NATS server with JetStream that can be stopped and started again
// on the same port with the same store (broker outages in tests, restarts of `syncer
// dev`).
type NATS struct {
	StoreDir string
	Port     int

	mu         sync.Mutex
	srv        *server.Server
	maxPayload int32
	configure  func(*server.Options)
}

// NATSOptions tunes an in-process server.
type NATSOptions struct {
	// Port to listen on (0: a free one, kept across restarts).
	Port       int
	MaxPayload int32 // 0: server default (1 MiB)
	// Configure, when set, adjusts the server's options before each start
	// (authentication, TLS). Reconfigure replaces it for the next starts.
	Configure func(*server.Options)
}

// StartNATS starts a server whose JetStream store is storeDir (created when missing; its
// content survives Shutdown).
func StartNATS(storeDir string, opts NATSOptions) (*NATS, error) {
	abs, err := filepath.Abs(storeDir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(abs, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", abs, err)
	}
	port := opts.Port
	if port == 0 {
		port = -1 // the server picks one
	}
	n := &NATS{StoreDir: abs, Port: port, maxPayload: opts.MaxPayload, configure: opts.Configure}
	if err := n.Start(); err != nil {
		return nil, err
	}
	return n, nil
}

// OpenNATS starts an in-process NATS server whose JetStream store lives in dir and
// survives Shutdown (port 0 picks a free one). `syncer dev` uses it.
func OpenNATS(dir string, port int) (*NATS, error) {
	return StartNATS(dir, NATSOptions{Port: port})
}

// Start (re)starts the server. The first start picks a free port unless one was given;
// later starts reuse it.
func (n *NATS) Start() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.srv != nil {
		return errors.New("nats already running")
	}
	o := &server.Options{
		Host:      "127.0.0.1",
		Port:      n.Port,
		JetStream: true,
		StoreDir:  n.StoreDir,
		NoLog:     true,
		NoSigs:    true,
		// Small enough to exercise multi-chunk snapshots in tests that set it lower.
		MaxPayload: n.maxPayload,
	}
	if n.configure != nil {
		n.configure(o)
	}
	var lastErr error
	for attempt := 0; attempt < 50; attempt++ {
		srv, err := server.NewServer(o)
		if err != nil {
			return fmt.Errorf("configure nats: %w", err)
		}
		go srv.Start()
		if srv.ReadyForConnections(10 * time.Second) {
			n.srv = srv
			n.Port = srv.Addr().(*net.TCPAddr).Port
			return nil
		}
		srv.Shutdown()
		lastErr = errors.New("nats server not ready within 10s")
		// The port of a just-stopped server can linger briefly; try again.
		time.Sleep(100 * time.Millisecond)
	}
	return lastErr
}

// Reconfigure replaces NATSOptions.Configure for the next Start (a Restart with new
// credentials, say).
func (n *NATS) Reconfigure(configure func(*server.Options)) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.configure = configure
}

// URL is the client URL of the server.
func (n *NATS) URL() string { return fmt.Sprintf("nats://127.0.0.1:%d", n.Port) }

// Server is the running server (nil while stopped).
func (n *NATS) Server() *server.Server {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.srv
}

// Shutdown stops the server, keeping its store for the next Start.
func (n *NATS) Shutdown() {
	n.mu.Lock()
	srv := n.srv
	n.srv = nil
	n.mu.Unlock()
	if srv != nil {
		srv.Shutdown()
		srv.WaitForShutdown()
	}
}

// Restart stops and starts the server on the same port and store.
func (n *NATS) Restart() error {
	n.Shutdown()
	return n.Start()
}

// ConsumerCount is the number of JetStream consumers on the server, over all streams.
func (n *NATS) ConsumerCount() (int, error) {
	srv := n.Server()
	if srv == nil {
		return 0, errors.New("nats not running")
	}
	info, err := srv.Jsz(&server.JSzOptions{})
	if err != nil {
		return 0, err
	}
	return info.Consumers, nil
}
