package harness

import (
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/beamline/registry-syncer/devstack"
)

// NATS is an in-process NATS server with JetStream (a devstack.NATS in a throwaway
// directory) that can be stopped and started again on the same port with the same store,
// to inject broker outages.
type NATS struct {
	*devstack.NATS
}

// NATSOptions tunes an in-process server.
type NATSOptions = devstack.NATSOptions

// StartNATS starts a server on a free port (unless opts.Port) with a store in a new
// directory.
func StartNATS(opts NATSOptions) (*NATS, error) {
	dir, err := processDir("nats")
	if err != nil {
		return nil, err
	}
	n, err := devstack.StartNATS(dir, opts)
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	return &NATS{n}, nil
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
