package publisher_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/beamline/registry-syncer/protocol"
	"github.com/beamline/registry-syncer/publisher"
	"github.com/beamline/registry-syncer/test/harness"
)

// BenchmarkWriteSnapshot10k is one snapshot write of 10,000 extensions (4 MB) at the
// default one per second, with the writer's SnapshotWait: keeping only the previous
// snapshot (a grace of 1 ns, the retention before the grace) against the default 30 s
// grace (then about 31 snapshots are kept, and each write reads their manifests).
func BenchmarkWriteSnapshot10k(b *testing.B) {
	for _, bc := range []struct {
		name  string
		grace time.Duration
	}{{"previous-only", 1}, {"grace-30s", 30 * time.Second}} {
		b.Run(bc.name, func(b *testing.B) {
			srv := harness.NewNATS(b, harness.NATSOptions{})
			nc := srv.Connect(b)
			// A third of a second per reading of the clock: three readings per write
			// (SnapshotWait, the manifest's created_at, the purge), one write per second.
			var clock atomic.Int64
			p, err := publisher.New(nc, publisher.Config{SnapshotGrace: bc.grace, Clock: func() time.Time {
				return time.Unix(0, 1_800_000_000e9+clock.Add(int64(time.Second/3)))
			}})
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			if err := p.EnsureStreams(ctx); err != nil {
				b.Fatal(err)
			}
			base := snapshot(b, 1, 10_000)
			rev := int64(0)
			for b.Loop() {
				rev++
				if _, err := p.SnapshotWait(ctx); err != nil {
					b.Fatal(err)
				}
				// The same content under the next revision (the same cost in both cases).
				snap, _, err := base.Apply(rev, protocol.SourceDatabase, nil)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := p.WriteSnapshot(ctx, snap, false); err != nil {
					b.Fatal(err)
				}
			}
			mc := subjectCountsB(b, ctx, p)
			b.ReportMetric(float64(mc), "manifests-kept")
		})
	}
}

func subjectCountsB(b *testing.B, ctx context.Context, p *publisher.Publisher) int {
	b.Helper()
	n := 0
	for from := uint64(1); ; n++ {
		st, err := p.Reader().Next(ctx, p.Names().SnapshotStream, p.Names().Manifest(), from)
		if err != nil {
			return n
		}
		from = st.Sequence + 1
	}
}
