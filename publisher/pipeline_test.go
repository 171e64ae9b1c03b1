package publisher_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/beamline/registry-syncer/protocol"
	"github.com/beamline/registry-syncer/publisher"
	"github.com/beamline/registry-syncer/test/harness"
)

// TestPipelinedDeltasOnEveryServer stores deltas several at a time (BeginDelta, then
// Finish in revision order) against every real nats-server binary of the matrix: each is
// stored once, in revision order of stream sequences, and announced on the live subject
// only by Finish, in revision order. Deltas sent again while the first stores are in
// flight (a retry whose ack was lost) are accepted once stored, and a different delta for
// a stored revision is refused, through the asynchronous acknowledgements of each
// server version (duplicate window, expected last-subject sequence 0).
func TestPipelinedDeltasOnEveryServer(t *testing.T) {
	t.Parallel()
	for _, bin := range harness.Servers(t) {
		t.Run(bin.Name(), func(t *testing.T) {
			t.Parallel()
			srv := harness.NewNATSProc(t, bin, harness.NATSProcOptions{})
			nc := srv.Connect(t)
			ctx, cancel := context.WithTimeout(t.Context(), 3*waitTimeout)
			defer cancel()
			p, err := publisher.New(nc, publisher.Config{})
			if err != nil {
				t.Fatal(err)
			}
			if err := p.EnsureStreams(ctx); err != nil {
				t.Fatalf("EnsureStreams: %v", err)
			}
			names := p.Names()
			live := subscribe(t, nc, names.Live())
			js, err := jetstream.New(nc)
			if err != nil {
				t.Fatal(err)
			}

			const n = 300
			writes := make([]*publisher.DeltaWrite, 0, n)
			for rev := int64(1); rev <= n; rev++ {
				d := delta(rev, "content")
				w, err := p.BeginDelta(d, encode(t, d))
				if err != nil {
					t.Fatalf("BeginDelta %d: %v", rev, err)
				}
				writes = append(writes, w)
			}
			// Every store is acknowledged without Finish; nothing is announced before it.
			deadline := time.Now().Add(waitTimeout)
			for sum(subjectCounts(t, ctx, js, names.DeltaStream, names.DeltaSubjects())) < n {
				if time.Now().After(deadline) {
					t.Fatalf("the stream holds %d deltas, want %d", sum(subjectCounts(t, ctx, js, names.DeltaStream, names.DeltaSubjects())), n)
				}
				time.Sleep(5 * time.Millisecond)
			}
			if err := nc.Flush(); err != nil {
				t.Fatal(err)
			}
			if k, _, _ := live.Pending(); k != 0 {
				t.Fatalf("%d deltas announced before Finish", k)
			}
			// Retries of the first ten while they are stored: accepted, not stored again.
			var again []*publisher.DeltaWrite
			for rev := int64(1); rev <= 10; rev++ {
				d := delta(rev, "content")
				w, err := p.BeginDelta(d, encode(t, d))
				if err != nil {
					t.Fatalf("BeginDelta again %d: %v", rev, err)
				}
				again = append(again, w)
			}
			var last uint64
			for i, w := range writes {
				seq, err := w.Finish(ctx)
				if err != nil {
					t.Fatalf("Finish %d: %v", i+1, err)
				}
				if seq <= last {
					t.Fatalf("delta %d stored at sequence %d, not after the previous one (%d)", i+1, seq, last)
				}
				last = seq
			}
			for i := int64(1); i <= n; i++ {
				m, err := live.NextMsg(waitTimeout)
				if err != nil {
					t.Fatalf("live announcement %d: %v", i, err)
				}
				got, err := protocol.DeltaFromMsg(m)
				if err != nil {
					t.Fatal(err)
				}
				if got.Revision != i {
					t.Fatalf("announcement %d is revision %d: not in revision order", i, got.Revision)
				}
			}
			for i, w := range again {
				seq, err := w.Finish(ctx)
				if err != nil || seq != 0 {
					t.Fatalf("Finish of the retry of %d: sequence %d, %v; want 0 (already stored), no error", i+1, seq, err)
				}
			}
			other := delta(5, "another")
			w, err := p.BeginDelta(other, encode(t, other))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := w.Finish(ctx); err == nil || !strings.Contains(err.Error(), "different delta") {
				t.Fatalf("a different delta for stored revision 5: %v, want a refusal", err)
			}
			if got := sum(subjectCounts(t, ctx, js, names.DeltaStream, names.DeltaSubjects())); got != n {
				t.Fatalf("the stream holds %d deltas, want %d (each once)", got, n)
			}
		})
	}
}

// TestPipelinedFence: a deposed publisher (fence failing) neither sends another store nor
// announces one whose store it sent before it was deposed.
func TestPipelinedFence(t *testing.T) {
	t.Parallel()
	srv := harness.NewNATS(t, harness.NATSOptions{})
	nc := srv.Connect(t)
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	defer cancel()
	base, err := publisher.New(nc, publisher.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := base.EnsureStreams(ctx); err != nil {
		t.Fatal(err)
	}
	errDeposed := errors.New("deposed")
	var deposed atomic.Bool
	p := base.WithFence(func() error {
		if deposed.Load() {
			return errDeposed
		}
		return nil
	})
	live := subscribe(t, nc, p.Names().Live())
	d1 := delta(1, "one")
	w, err := p.BeginDelta(d1, encode(t, d1))
	if err != nil {
		t.Fatal(err)
	}
	deposed.Store(true)
	d2 := delta(2, "two")
	if _, err := p.BeginDelta(d2, encode(t, d2)); !errors.Is(err, errDeposed) {
		t.Fatalf("BeginDelta while deposed: %v, want the fence's error", err)
	}
	if _, err := w.Finish(ctx); !errors.Is(err, errDeposed) {
		t.Fatalf("Finish while deposed: %v, want the fence's error", err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if k, _, _ := live.Pending(); k != 0 {
		t.Fatalf("a deposed publisher announced %d deltas", k)
	}
	if _, err := p.Reader().Delta(ctx, 2); !errors.Is(err, protocol.ErrNotFound) {
		t.Fatalf("delta 2 read back: %v, want not found (never sent)", err)
	}
}
