package client

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/beamline/registry-syncer/cache"
	"github.com/beamline/registry-syncer/protocol"
	"github.com/beamline/registry-syncer/publisher"
	"github.com/beamline/registry-syncer/test/harness"
)

// TestInvokeServerMatrix: a call, a retried timeout and no responders behave
// the same on every supported nats-server release (real binaries).
func TestInvokeServerMatrix(t *testing.T) {
	t.Parallel()
	for _, bin := range harness.Servers(t) {
		t.Run(bin.Name(), func(t *testing.T) {
			t.Parallel()
			proc := harness.NewNATSProc(t, bin, harness.NATSProcOptions{})
			nc := proc.Connect(t)
			signer, _, err := protocol.GenerateSigner()
			if err != nil {
				t.Fatal(err)
			}
			pub, err := publisher.New(nc, publisher.Config{Signer: signer})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := pub.EnsureStreams(ctx); err != nil {
				t.Fatal(err)
			}
			ok := ext("ok", cache.TypePost, inst("a", 1, cache.HealthHealthy))
			slow := ext("slow", cache.TypePost)
			slow.TimeoutMS, slow.Retry = 30, 1
			gone := ext("gone", cache.TypePost)
			snap, err := cache.New(1, protocol.SourceDatabase, []cache.Extension{*ok, *slow, *gone})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := pub.WriteSnapshot(ctx, snap, false); err != nil {
				t.Fatal(err)
			}
			if _, err := nc.Subscribe("beamline.inst.a", func(m *nats.Msg) { _ = m.Respond([]byte(`{"payload":1}`)) }); err != nil {
				t.Fatal(err)
			}
			if _, err := nc.Subscribe(slow.Subject, func(*nats.Msg) {}); err != nil {
				t.Fatal(err)
			}
			if err := nc.Flush(); err != nil {
				t.Fatal(err)
			}
			c := startClient(t, proc.Connect(t), Config{WaitBootstrap: true})

			if res, err := c.Invoke(ctx, "ok", Request{}, nil); err != nil || string(res.Payload) != "1" || res.Target != "a" {
				t.Errorf("ok: %+v %v", res, err)
			}
			var ie *InvokeError
			if _, err := c.Invoke(ctx, "slow", Request{}, nil); !errors.As(err, &ie) || ie.Code != CodeExtensionTimeout || ie.Attempts != 2 {
				t.Errorf("slow: %v, want extension_timeout after 2 attempts", err)
			}
			if _, err := c.Invoke(ctx, "gone", Request{}, nil); !errors.As(err, &ie) || ie.Code != CodeExtensionError ||
				!errors.Is(err, nats.ErrNoResponders) {
				t.Errorf("gone: %v, want extension_error (no responders)", err)
			}
		})
	}
}
