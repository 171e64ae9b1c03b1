package client

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/beamline/registry-syncer/protocol"
	"github.com/beamline/registry-syncer/test/harness"
)

// useKey makes the source sign with signer from now on (a key rotation on the
// syncer side); the next snapshot stores its key record.
func (s *source) useKey(signer *protocol.Signer) {
	s.pub = s.pub.WithSigner(signer)
	s.signer = signer
}

func TestTrustOnFirstUse(t *testing.T) {
	t.Parallel()
	srv := harness.NewNATS(t, harness.NATSOptions{})
	src := newSource(t, srv, 10, "")
	c := startClient(t, srv.Connect(t), Config{WaitBootstrap: true})
	if got := c.TrustedKeys(); !slices.Equal(got, []string{src.signer.PublicKey()}) {
		t.Fatalf("trusted %v, want the stored key %s", got, src.signer.PublicKey())
	}
	src.commit(src.touch("ext.000001", 321))
	waitSame(t, c, src)

	// Another key replaces the key record (an attacker able to write the stream,
	// or a syncer configured with a new key): the running client keeps the key
	// it trusted and refuses everything else.
	other, _, _ := protocol.GenerateSigner()
	src.useKey(other)
	src.writeSnapshot()
	d := src.commit(src.touch("ext.000001", 322))
	waitRejections(t, c, 1, 5*time.Second)
	if c.Revision() == d.Revision {
		t.Fatal("applied a delta signed by a key the client did not trust first")
	}
	if !errors.Is(c.Errors()[0], protocol.ErrUntrusted) {
		t.Fatalf("error %v, want ErrUntrusted", c.Errors()[0])
	}
}

func TestNoKeyRecordNoBootstrap(t *testing.T) {
	t.Parallel()
	srv := harness.NewNATS(t, harness.NATSOptions{})
	src := newSource(t, srv, 10, "")
	s, err := src.js.Stream(t.Context(), src.names().SnapshotStream)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Purge(t.Context()); err != nil {
		t.Fatal(err)
	}
	src.useKey(nil) // an unsigned publisher (an old syncer)
	src.writeSnapshot()
	c := startClient(t, srv.Connect(t), Config{})
	src.commit(src.touch("ext.000001", 321))
	deadline := time.Now().Add(300 * time.Millisecond)
	for time.Now().Before(deadline) {
		if c.Ready() {
			t.Fatal("bootstrapped from an unsigned registry")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestConfiguredKeysAndRotation(t *testing.T) {
	t.Parallel()
	srv := harness.NewNATS(t, harness.NATSOptions{})
	src := newSource(t, srv, 10, "")
	old := src.signer
	next, _, err := protocol.GenerateSigner()
	if err != nil {
		t.Fatal(err)
	}

	// A client that trusts another key only does not bootstrap, and says why.
	stranger, _, _ := protocol.GenerateSigner()
	refusing := startClient(t, srv.Connect(t), Config{TrustedKeys: []string{stranger.PublicKey()}})
	waitRejections(t, refusing, 1, 5*time.Second)
	if refusing.Ready() || !errors.Is(refusing.Errors()[0], protocol.ErrUntrusted) {
		t.Fatalf("ready %v, errors %v", refusing.Ready(), refusing.Errors())
	}

	// During a rotation both keys are trusted: messages signed by the old key,
	// then by the new one, are applied.
	both := startClient(t, srv.Connect(t), Config{WaitBootstrap: true, TrustedKeys: []string{old.PublicKey(), " " + next.PublicKey()}})
	src.commit(src.touch("ext.000001", 401))
	waitSame(t, both, src)
	src.useKey(next)
	src.commit(src.touch("ext.000001", 402))
	src.writeSnapshot()
	src.heartbeat()
	src.commit(src.touch("ext.000001", 403))
	waitSame(t, both, src)
	if both.rejections.Load() != 0 {
		t.Fatalf("rejections during the rotation: %v", both.Errors())
	}

	// After the rotation only the new key is trusted: the old one is refused.
	after := startClient(t, srv.Connect(t), Config{WaitBootstrap: true, TrustedKeys: []string{next.PublicKey()}})
	waitSame(t, after, src)
	d, data := src.next(src.touch("ext.000001", 404))
	src.useKey(old)
	src.announce(data)
	waitRejections(t, after, 1, 5*time.Second)
	if after.Revision() == d.Revision {
		t.Fatal("applied a delta signed by the retired key")
	}
	src.useKey(next)
	src.announce(data)
	waitSame(t, after, src)

	if err := (Config{TrustedKeys: []string{"SUAB"}}).WithDefaults().validate(); err == nil {
		t.Fatal("a seed accepted as a trusted key")
	}
}
