package client

import (
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/beamline/registry-syncer/cache"
	"github.com/beamline/registry-syncer/protocol"
	"github.com/beamline/registry-syncer/publisher"
	"github.com/beamline/registry-syncer/test/harness"
)

// TestChecksumV2 follows a syncer that publishes both checksums: the client
// verifies v2 (and never computes the O(n) v1 checksum), refuses a delta whose
// v2 is wrong even when its v1 is right, reports checksum_v2, and still follows
// a syncer that predates v2.
func TestChecksumV2(t *testing.T) {
	t.Parallel()
	srv := harness.NewNATS(t, harness.NATSOptions{})
	src := newSource(t, srv, 10, "")
	c := startClient(t, srv.Connect(t), Config{WaitBootstrap: true})
	reach := func(want *cache.Snapshot) {
		t.Helper()
		waitFor(t, "the client to reach the source's state", func() bool {
			s := c.Snapshot()
			return s != nil && s.Revision() == want.Revision() && s.ChecksumV2() == want.ChecksumV2()
		})
	}

	src.commit(src.touch("ext.000001", 777))
	reach(src.state())
	if got := c.Snapshot().KnownChecksum(); got != "" {
		t.Errorf("the client computed the v1 checksum (%s) while following a v2 syncer", got)
	}
	rep := c.buildReport(time.Now())
	if !slices.Contains(rep.Features, protocol.FeatureChecksumV2) || rep.ChecksumV2 != src.state().ChecksumV2() || rep.Checksum != "" {
		t.Errorf("report features %v, checksum %q, checksum_v2 %q; want checksum_v2 %s and no v1",
			rep.Features, rep.Checksum, rep.ChecksumV2, src.state().ChecksumV2())
	}

	// Right v1, wrong v2: rejected, the last good snapshot kept.
	good := c.Snapshot()
	ch := src.touch("ext.000002", 555)
	next, _, err := src.state().Apply(good.Revision()+1, protocol.SourceDatabase, []cache.Change{ch})
	if err != nil {
		t.Fatal(err)
	}
	bad := &protocol.Delta{Revision: next.Revision(), PrevRevision: good.Revision(), Checksum: next.Checksum(),
		ChecksumV2: otherChecksum("v2"), Count: next.Len(), Source: protocol.SourceDatabase,
		CommittedAt: time.Now().UTC(), Changes: []cache.Change{ch}}
	data, err := publisher.EncodeDelta(bad)
	if err != nil {
		t.Fatal(err)
	}
	src.announce(data)
	waitFor(t, "the rejection", func() bool { return c.rejections.Load() == 1 })
	if c.Snapshot() != good {
		t.Fatal("a delta with a wrong checksum_v2 replaced the served snapshot")
	}

	// The next revisions converge, through v2 and from a syncer that predates it.
	src.commit(src.touch("ext.000002", 556))
	reach(src.state())
	src.mu.Lock()
	src.v1only = true
	src.mu.Unlock()
	src.commit(src.touch("ext.000003", 557))
	src.heartbeat()
	reach(src.state())
	if got, want := c.Snapshot().KnownChecksum(), src.state().Checksum(); got != want {
		t.Errorf("after a v1-only delta the client knows checksum %q, want %s (verified)", got, want)
	}
}

// TestSnapshotDigest: a v2 manifest's sha256 must match the assembled document
// (checksum v2 alone does not authenticate unsigned chunks); with it, the v2
// checksum is what is verified, not v1.
func TestSnapshotDigest(t *testing.T) {
	t.Parallel()
	srv := harness.NewNATS(t, harness.NATSOptions{})
	src := newSource(t, srv, 10, "")
	snap3, err := cache.New(3, protocol.SourceDatabase, cache.Synthetic(10))
	if err != nil {
		t.Fatal(err)
	}
	doc, err := snap3.Encode()
	if err != nil {
		t.Fatal(err)
	}
	writeRawSnapshotWith(t, src, 3, doc, func(m *protocol.Manifest) {
		m.Checksum, m.ChecksumV2, m.SHA256 = snap3.Checksum(), snap3.ChecksumV2(), otherChecksum("another document")
	})
	c := startClient(t, srv.Connect(t), Config{})
	waitFor(t, "the rejection", func() bool { return c.rejections.Load() == 1 && len(c.Errors()) == 1 })
	if c.Snapshot() != nil || !strings.Contains(c.Errors()[0].Error(), "SHA-256") {
		t.Fatalf("snapshot %v installed, errors %v", c.Snapshot(), c.Errors())
	}

	snap4, _, err := snap3.Apply(4, protocol.SourceDatabase, nil)
	if err != nil {
		t.Fatal(err)
	}
	doc4, err := snap4.Encode()
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256(doc4)
	writeRawSnapshotWith(t, src, 4, doc4, func(m *protocol.Manifest) {
		m.Checksum, m.ChecksumV2, m.SHA256 = otherChecksum("not v1"), snap4.ChecksumV2(), hex.EncodeToString(digest[:])
	})
	waitFor(t, "the v2 snapshot", func() bool { s := c.Snapshot(); return s != nil && s.Revision() == 4 })
	if c.Snapshot().ChecksumV2() != snap4.ChecksumV2() {
		t.Fatal("wrong content installed")
	}
}
