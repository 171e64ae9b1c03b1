package harness

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// NATS is an in-process NATS server with JetStream that can be stopped and started again
// on the same port with the same store, to inject broker outages.
type NATS struct {
	StoreDir string
	Port     int

	mu  sync.Mutex
	srv *server.Server
	// MaxPayload overrides the server's max_payload when set before Start.
	maxPayload int32
	configure  func(*server.Options)
}

// NATSOptions tunes an in-process server.
type NATSOptions struct {
	MaxPayload int32 // 0: server default (1 MiB)
	// Configure, when set, adjusts the server's options before each start
	// (authentication, TLS). Reconfigure replaces it for the next starts.
	Configure func(*server.Options)
}

// StartNATS starts a server on a free port with a store in a new directory.
func StartNATS(opts NATSOptions) (*NATS, error) {
	dir, err := processDir("nats")
	if err != nil {
		return nil, err
	}
	n := &NATS{StoreDir: dir, Port: -1, maxPayload: opts.MaxPayload, configure: opts.Configure}
	if err := n.Start(); err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	return n, nil
}

// NewNATS starts a server for one test and stops it when the test ends.
func NewNATS(tb testing.TB, opts NATSOptions) *NATS {
	tb.Helper()
	n, err := StartNATS(opts)
	if err != nil {
		tb.Fatalf("start nats: %v", err)
	}
	tb.Cleanup(n.Close)
	return n
}

// Start (re)starts the server. The first start picks a free port; later starts reuse it.
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

// Close stops the server and removes its store. Safe to call twice.
func (n *NATS) Close() {
	n.Shutdown()
	if n.StoreDir != "" {
		_ = os.RemoveAll(n.StoreDir)
	}
}

// Connect opens a client connection that keeps reconnecting for as long as the test runs.
func (n *NATS) Connect(tb testing.TB, opts ...nats.Option) *nats.Conn {
	tb.Helper()
	opts = append([]nats.Option{nats.MaxReconnects(-1), nats.ReconnectWait(20 * time.Millisecond)}, opts...)
	nc, err := nats.Connect(n.URL(), opts...)
	if err != nil {
		tb.Fatalf("connect nats: %v", err)
	}
	tb.Cleanup(nc.Close)
	return nc
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
