package client

import (
	"context"
	"encoding/binary"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/beamline/registry-syncer/cache"
	"github.com/beamline/registry-syncer/protocol"
	"github.com/beamline/registry-syncer/publisher"
	"github.com/beamline/registry-syncer/test/harness"
)

// benchClient is a client serving n synthetic extensions at revision 1,
// installed directly (not started).
func benchClient(b *testing.B, n int) *Client {
	b.Helper()
	srv := harness.NewNATS(b, harness.NATSOptions{})
	c, err := New(srv.Connect(b), Config{})
	if err != nil {
		b.Fatal(err)
	}
	snap, err := cache.New(1, protocol.SourceDatabase, cache.Synthetic(n))
	if err != nil {
		b.Fatal(err)
	}
	c.loop.timer = time.NewTimer(time.Hour)
	c.loop.timer.Stop()
	c.install(nil, snap, nil)
	return c
}

func natsMsg(data []byte) *nats.Msg {
	m := nats.NewMsg("x")
	m.Data = data
	return m
}

func benchIDs(n int) []string {
	ids := make([]string, 1024)
	for i := range ids {
		ids[i] = fmt.Sprintf("ext.%06d", (i*7919)%n)
	}
	return ids
}

func BenchmarkLookup(b *testing.B) {
	c := benchClient(b, 10_000)
	ids := benchIDs(10_000)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		_, _ = c.Lookup(ids[i&1023])
		i++
	}
}

func BenchmarkLookupParallel(b *testing.B) {
	c := benchClient(b, 10_000)
	ids := benchIDs(10_000)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			_, _ = c.Lookup(ids[i&1023])
			i++
		}
	})
}

func BenchmarkByType(b *testing.B) {
	c := benchClient(b, 10_000)
	types := []string{cache.TypePre, cache.TypeValidator, cache.TypePost, cache.TypeProvider}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		_ = c.ByType(types[i&3])
		i++
	}
}

// BenchmarkApplyDelta measures the live path of a one-row delta: signature
// verification (verify) or not (noverify, the same path after it), decode,
// Apply, checksum and count verification, install (encoding and signing the
// message are excluded). The deltas carry both checksums, as the syncer writes them;
// v1only is a delta of a syncer that predates checksum v2 (verified with v1: O(n)).
func BenchmarkApplyDelta(b *testing.B) {
	signer, _, err := protocol.GenerateSigner()
	if err != nil {
		b.Fatal(err)
	}
	for _, n := range []int{1_000, 10_000, 100_000} {
		for _, mode := range []string{"verify", "noverify", "v1only"} {
			b.Run(fmt.Sprintf("%d/%s", n, mode), func(b *testing.B) {
				benchApplyDelta(b, n, signer, mode != "noverify", mode == "v1only")
			})
		}
	}
}

func benchApplyDelta(b *testing.B, n int, signer *protocol.Signer, verify, v1only bool) {
	c := benchClient(b, n)
	trust, err := protocol.NewTrust(signer.PublicKey())
	if err != nil {
		b.Fatal(err)
	}
	c.trust.Store(trust)
	c.reader.Trust = trust
	base := c.Snapshot()
	e, _ := base.Get("ext.000042")
	var changes [2][]cache.Change
	var sums, sums2 [2]string
	for k, timeout := range []int{111, 222} {
		cp := *e
		cp.TimeoutMS = timeout
		raw, err := cache.Canonical(&cp)
		if err != nil {
			b.Fatal(err)
		}
		changes[k] = []cache.Change{{Op: cache.OpPut, Kind: cache.KindAggregate, ID: cp.ID, Value: raw}}
		next, _, err := base.Apply(2, protocol.SourceDatabase, changes[k])
		if err != nil {
			b.Fatal(err)
		}
		sums[k], sums2[k] = next.Checksum(), next.ChecksumV2()
		if v1only {
			sums2[k] = ""
		}
	}
	ctx := context.Background()
	live := c.names.Live()
	rev := base.Revision()
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		k := rev & 1
		d := &protocol.Delta{Revision: rev + 1, PrevRevision: rev, Checksum: sums[k], ChecksumV2: sums2[k], Count: n,
			Source: protocol.SourceDatabase, CommittedAt: time.Now(), Changes: changes[k]}
		data, err := publisher.EncodeDelta(d)
		if err != nil {
			b.Fatal(err)
		}
		m := d.Msg(live, data)
		if err := signer.Sign(protocol.KindDelta, m); err != nil {
			b.Fatal(err)
		}
		rev++
		b.StartTimer()
		if verify {
			c.handleDelta(ctx, m)
		} else {
			c.handleVerifiedDelta(ctx, m)
		}
	}
	if c.Revision() != rev || c.rejections.Load() != 0 {
		b.Fatalf("revision %d (want %d), rejections %d", c.Revision(), rev, c.rejections.Load())
	}
}

// BenchmarkBootstrap100k measures a first bootstrap of 100,000 extensions from
// the stream (manifest, chunks, decode, validation, checksum): with signature
// verification (verify: the key record read and checked, then the manifest's
// signature) and without (noverify).
func BenchmarkBootstrap100k(b *testing.B) {
	srv := harness.NewNATS(b, harness.NATSOptions{})
	src := newSource(b, srv, 100_000, "")
	nc := srv.Connect(b)
	ctx := context.Background()
	for _, verify := range []bool{true, false} {
		b.Run(map[bool]string{true: "verify", false: "noverify"}[verify], func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				r := &protocol.Reader{NC: nc, Names: src.names()}
				if verify {
					t, err := r.Key(ctx)
					if err != nil {
						b.Fatal(err)
					}
					r.Trust = t
				}
				snap, _, err := r.Snapshot(ctx)
				if err != nil || snap.Len() != 100_000 {
					b.Fatalf("snapshot: %v", err)
				}
			}
		})
	}
}

// BenchmarkVerify is the cost of one signature check on a delta-sized payload.
func BenchmarkVerify(b *testing.B) {
	signer, _, _ := protocol.GenerateSigner()
	trust, _ := protocol.NewTrust(signer.PublicKey())
	// Distinct messages: each check is a real Ed25519 verification ("cached" below is the
	// same message again, as a second client of the process sees it).
	const n = 8192
	msgs := make([]*nats.Msg, n)
	for i := range msgs {
		data := make([]byte, 700)
		binary.BigEndian.PutUint64(data, uint64(i))
		msgs[i] = natsMsg(data)
		if err := signer.Sign(protocol.KindDelta, msgs[i]); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("first", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			b.StopTimer()
			m := msgs[i%n]
			i++
			m.Data[8]++ // a new payload each time: never a repeat
			if err := signer.Sign(protocol.KindDelta, m); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			if err := trust.Verify(protocol.KindDelta, m.Header, m.Data); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("cached", func(b *testing.B) {
		m := msgs[0]
		_ = trust.Verify(protocol.KindDelta, m.Header, m.Data)
		b.ReportAllocs()
		for b.Loop() {
			if err := trust.Verify(protocol.KindDelta, m.Header, m.Data); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkCatchUpCrossover starts a client on n synthetic extensions (a real
// bootstrap), has it catch up 200 stored one-row deltas, and reports its cost
// model once stopped: a direct get, one delta's apply, the snapshot read
// (per byte x the stored snapshot's size) and the crossover, the number of
// deltas behind from which the snapshot is read (twice the chain's estimate:
// snapshotAdvantage).
func BenchmarkCatchUpCrossover(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			srv := harness.NewNATS(b, harness.NATSOptions{})
			src := newSource(b, srv, n, "")
			var get, apply, snap, crossover float64
			for b.Loop() {
				c, err := New(srv.Connect(b), Config{WaitBootstrap: true, Logger: testLogger(b)})
				if err != nil {
					b.Fatal(err)
				}
				if err := c.Start(context.Background()); err != nil {
					b.Fatal(err)
				}
				for i := range 200 {
					src.store(src.next(src.touch(fmt.Sprintf("ext.%06d", i), 1000+i)))
				}
				src.heartbeat()
				want := src.state().Revision()
				waitFor(b, "the catch-up", func() bool { return c.Revision() == want })
				c.Stop()
				m, err := c.reader.Manifest(context.Background())
				if err != nil {
					b.Fatal(err)
				}
				cm := &c.loop.cost
				get, apply = cm.get.or(0), cm.apply.or(0)
				snap = float64(cm.snapshot(m, m.Revision))
				crossover = snapshotAdvantage * snap / (get + apply)
			}
			b.ReportMetric(get/1e3, "get-µs")
			b.ReportMetric(apply/1e3, "apply-µs")
			b.ReportMetric(snap/1e6, "snapshot-ms")
			b.ReportMetric(crossover, "crossover-deltas")
		})
	}
}
