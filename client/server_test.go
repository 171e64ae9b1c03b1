package client_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/beamline/registry-syncer/client"
	"github.com/beamline/registry-syncer/protocol"
	"github.com/beamline/registry-syncer/test/harness"
)

// TestStartRefusesServerWithoutJetStream: on a real server started without JetStream
// (every binary of the matrix), Start fails at once with an error that says so instead of
// retrying the bootstrap forever, with WaitBootstrap as without.
func TestStartRefusesServerWithoutJetStream(t *testing.T) {
	t.Parallel()
	for _, bin := range harness.Servers(t) {
		t.Run(bin.Name(), func(t *testing.T) {
			t.Parallel()
			nc := harness.NewNATSProc(t, bin, harness.NATSProcOptions{NoJetStream: true}).Connect(t)
			for _, wait := range []bool{false, true} {
				c, err := client.New(nc, client.Config{WaitBootstrap: wait})
				if err != nil {
					t.Fatal(err)
				}
				ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
				start := time.Now()
				err = c.Start(ctx)
				cancel()
				c.Stop()
				if !errors.Is(err, protocol.ErrNoJetStream) {
					t.Fatalf("Start (WaitBootstrap %v) on a server without JetStream: %v, want ErrNoJetStream", wait, err)
				}
				if !strings.Contains(err.Error(), "JetStream not enabled") {
					t.Errorf("Start: %q does not say that JetStream is missing", err)
				}
				if d := time.Since(start); d > 5*time.Second {
					t.Errorf("Start took %s to refuse", d)
				}
			}
		})
	}
}
