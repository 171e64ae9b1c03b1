package publisher_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/beamline/registry-syncer/protocol"
	"github.com/beamline/registry-syncer/publisher"
	"github.com/beamline/registry-syncer/test/harness"
)

// TestSigned: with a signer, the stored and the live copy of a delta carry the same valid
// signature, heartbeats and manifests are signed, and the key record names the key; after
// the record is lost, the next snapshot writes it again.
func TestSigned(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	srv := harness.NewNATS(t, harness.NATSOptions{})
	nc := srv.Connect(t)
	signer, _, err := protocol.GenerateSigner()
	if err != nil {
		t.Fatal(err)
	}
	p, err := publisher.New(nc, publisher.Config{Prefix: "test.signed", Signer: signer})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.EnsureStreams(ctx); err != nil {
		t.Fatal(err)
	}
	n := p.Names()
	trust, err := p.Reader().Key(ctx)
	if err != nil {
		t.Fatalf("key record after EnsureStreams: %v", err)
	}
	if keys := trust.Keys(); len(keys) != 1 || keys[0] != signer.PublicKey() {
		t.Fatalf("key record names %v, want %s", keys, signer.PublicKey())
	}
	live := subscribe(t, nc, n.Live())
	beats := subscribe(t, nc, n.Heartbeat())

	d := delta(1, "one")
	if err := p.PublishDelta(ctx, d, encode(t, d)); err != nil {
		t.Fatal(err)
	}
	stored, err := p.Reader().Last(ctx, n.DeltaStream, n.DeltaSubject(1))
	if err != nil {
		t.Fatal(err)
	}
	announced, err := live.NextMsg(waitTimeout)
	if err != nil {
		t.Fatal(err)
	}
	for what, err := range map[string]error{
		"stored delta":    trust.Verify(protocol.KindDelta, stored.Header, stored.Data),
		"announced delta": trust.Verify(protocol.KindDelta, announced.Header, announced.Data),
	} {
		if err != nil {
			t.Errorf("%s: %v", what, err)
		}
	}
	if a, b := stored.Header.Get(protocol.HeaderSignature), announced.Header.Get(protocol.HeaderSignature); a != b {
		t.Errorf("stored and live signatures differ: %s, %s", a, b)
	}

	if err := p.Heartbeat(&protocol.Heartbeat{Revision: 1, Checksum: d.Checksum, Source: protocol.SourceDatabase,
		Time: time.Now(), IntervalMS: 1000, Syncer: "test"}); err != nil {
		t.Fatal(err)
	}
	hb, err := beats.NextMsg(waitTimeout)
	if err != nil {
		t.Fatal(err)
	}
	if err := trust.Verify(protocol.KindHeartbeat, hb.Header, hb.Data); err != nil {
		t.Errorf("heartbeat: %v", err)
	}

	// The key record lost (a stream with a size limit dropped it): the next snapshot
	// stores it again, and the manifest verifies.
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := js.Stream(ctx, n.SnapshotStream)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Purge(ctx, jetstream.WithPurgeSubject(n.KeySubject())); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Reader().Key(ctx); err == nil {
		t.Fatal("the key record survived the purge")
	}
	if _, err := p.WriteSnapshot(ctx, snapshot(t, 1, 3), true); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Reader().Key(ctx); err != nil {
		t.Fatalf("key record after the snapshot: %v", err)
	}
	r := &protocol.Reader{NC: nc, Names: n, Trust: trust}
	if _, _, err := r.Snapshot(ctx); err != nil {
		t.Fatalf("signed snapshot: %v", err)
	}

	// A publisher without a signer sends unsigned messages, which a trusting reader refuses.
	unsigned := p.WithSigner(nil)
	d2 := delta(2, "two")
	if err := unsigned.PublishDelta(ctx, d2, encode(t, d2)); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Delta(ctx, 2); err == nil {
		t.Fatal("an unsigned stored delta verified")
	}
}
