package client

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

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

// BenchmarkApplyDelta measures the live path of a one-row delta: decode,
// Apply, checksum and count verification, install (encoding the message is
// excluded).
func BenchmarkApplyDelta(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			c := benchClient(b, n)
			base := c.Snapshot()
			e, _ := base.Get("ext.000042")
			var changes [2][]cache.Change
			var sums [2]string
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
				sums[k] = next.Checksum()
			}
			ctx := context.Background()
			live := c.names.Live()
			rev := base.Revision()
			b.ReportAllocs()
			for b.Loop() {
				b.StopTimer()
				k := rev & 1
				d := &protocol.Delta{Revision: rev + 1, PrevRevision: rev, Checksum: sums[k], Count: n,
					Source: protocol.SourceDatabase, CommittedAt: time.Now(), Changes: changes[k]}
				data, err := publisher.EncodeDelta(d)
				if err != nil {
					b.Fatal(err)
				}
				m := d.Msg(live, data)
				rev++
				b.StartTimer()
				c.handleDelta(ctx, m)
			}
			if c.Revision() != rev || c.rejections.Load() != 0 {
				b.Fatalf("revision %d (want %d), rejections %d", c.Revision(), rev, c.rejections.Load())
			}
		})
	}
}
