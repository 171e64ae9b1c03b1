package syncer_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/beamline/registry-syncer/cache"
	"github.com/beamline/registry-syncer/protocol"
	"github.com/beamline/registry-syncer/syncer"
	"github.com/beamline/registry-syncer/test/harness"
)

// setupPrivate makes a bundle on a PostgreSQL cluster of the test's own, for tests that
// stop or restart the server (the shared cluster serves the parallel tests).
func setupPrivate(t *testing.T) (*testBundle, *harness.Postgres) {
	t.Helper()
	pg, err := harness.StartPostgres(harness.PGOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pg.Stop)
	return setupOn(t, pg), pg
}

func (b *testBundle) names(t *testing.T) protocol.Names {
	t.Helper()
	n, err := protocol.NewNames(b.prefix)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func (b *testBundle) deltaStream(t *testing.T) jetstream.Stream {
	t.Helper()
	js, err := jetstream.New(b.nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, b.names(t).DeltaStream)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// dbRevision is the database's last committed revision.
func (b *testBundle) dbRevision(t *testing.T) int64 {
	t.Helper()
	var rev int64
	if err := b.schema.Pool.QueryRow(context.Background(), `SELECT revision FROM registry_counter`).Scan(&rev); err != nil {
		t.Fatal(err)
	}
	return rev
}

// checkExactlyOnce verifies what routers rely on for revisions from..to: each one is stored
// exactly once (one message on its subject) and the deltas form one chain in order (each
// delta's prev_revision is the revision before it; the first one's is firstPrev). It also
// checks that the stream holds no delta above to and that no subject holds two messages.
func (b *testBundle) checkExactlyOnce(t *testing.T, from, to, firstPrev int64) map[int64]*protocol.Delta {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	names := b.names(t)
	info, err := b.deltaStream(t).Info(ctx, jetstream.WithSubjectFilter(names.DeltaSubjects()))
	if err != nil {
		t.Fatal(err)
	}
	for subj, n := range info.State.Subjects {
		if n != 1 {
			t.Errorf("%s holds %d messages, want exactly 1", subj, n)
		}
		var rev int64
		if _, err := fmt.Sscanf(strings.TrimPrefix(subj, names.Prefix+".delta."), "%d", &rev); err != nil || rev > to {
			t.Errorf("unexpected stored delta subject %s (published up to %d)", subj, to)
		}
	}
	deltas := b.storedDeltas(t, to)
	prev := firstPrev
	for r := from; r <= to; r++ {
		d, ok := deltas[r]
		if !ok {
			t.Fatalf("revision %d: no delta stored (checking %d..%d)", r, from, to)
		}
		if info.State.Subjects[names.DeltaSubject(r)] != 1 {
			t.Errorf("revision %d: %d stored messages", r, info.State.Subjects[names.DeltaSubject(r)])
		}
		if d.PrevRevision != prev {
			t.Fatalf("revision %d: prev_revision %d, want %d", r, d.PrevRevision, prev)
		}
		prev = r
	}
	return deltas
}

// replayAll applies every stored delta 1..to to the empty registry, verifying each
// delta's checksum and count, and compares the result with the database: the full
// history a router could have followed from revision 0 is consistent and ends equal to
// the database. Only for tests whose syncer started on an empty database.
func (b *testBundle) replayAll(t *testing.T, deltas map[int64]*protocol.Delta, to int64) {
	t.Helper()
	snap, err := cache.New(0, syncer.SourceDatabase, nil)
	if err != nil {
		t.Fatal(err)
	}
	for r := int64(1); r <= to; r++ {
		d := deltas[r]
		if d == nil {
			t.Fatalf("replay: delta %d missing", r)
		}
		next, _, err := snap.Apply(d.Revision, d.Source, d.Changes)
		if err != nil {
			t.Fatalf("replay: delta %d: %v", r, err)
		}
		if next.Checksum() != d.Checksum || next.Len() != d.Count {
			t.Fatalf("replay: delta %d: checksum/count after apply %s/%d, delta says %s/%d", r, next.Checksum(), next.Len(), d.Checksum, d.Count)
		}
		snap = next
	}
	db := b.dbSnapshot(t)
	if db.Revision() != to || db.Checksum() != snap.Checksum() {
		t.Fatalf("replay of deltas 1..%d gives checksum %s, database at revision %d has %s (diff %v)", to, snap.Checksum(), db.Revision(), db.Checksum(), snap.Diff(db))
	}
}

// finalChecks is how every test of a syncer started on an empty database ends: converged,
// every revision 1..database revision stored exactly once in order, and the replay of all
// of them equal to the database. It returns the final revision.
func (b *testBundle) finalChecks(t *testing.T) int64 {
	t.Helper()
	got := b.waitConverged(t, 30*time.Second)
	deltas := b.checkExactlyOnce(t, 1, got.Revision(), 0)
	b.replayAll(t, deltas, got.Revision())
	return got.Revision()
}

// liveLog records the revisions announced on the live subject, in arrival order.
type liveLog struct {
	mu   sync.Mutex
	revs []int64
	at   map[int64]time.Time
	sub  *nats.Subscription
}

func (b *testBundle) recordLive(t *testing.T) *liveLog {
	t.Helper()
	l := &liveLog{at: map[int64]time.Time{}}
	sub, err := b.nc.Subscribe(b.names(t).Live(), func(m *nats.Msg) {
		now := time.Now()
		d, err := protocol.DeltaFromMsg(m)
		if err != nil {
			return
		}
		l.mu.Lock()
		l.revs = append(l.revs, d.Revision)
		if _, ok := l.at[d.Revision]; !ok {
			l.at[d.Revision] = now
		}
		l.mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	l.sub = sub
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return l
}

// arrived returns when revision rev was first announced.
func (l *liveLog) arrived(rev int64) (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	at, ok := l.at[rev]
	return at, ok
}

// checkOrder verifies that announcements never went backwards; with strict, that no
// revision was announced twice.
func (l *liveLog) checkOrder(t *testing.T, strict bool) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := 1; i < len(l.revs); i++ {
		if l.revs[i] < l.revs[i-1] || (strict && l.revs[i] == l.revs[i-1]) {
			t.Errorf("live announcements out of order at %d: revision %d after %d", i, l.revs[i], l.revs[i-1])
			return
		}
	}
}

// writers commit registry transactions from several goroutines.
type writers struct {
	commits  atomic.Int64 // transactions whose COMMIT succeeded
	failures atomic.Int64 // attempts that failed (tolerated: the database was restarting)
	stopped  atomic.Bool
	wg       sync.WaitGroup
	mu       sync.Mutex
	err      error
}

// startWriters starts n goroutines committing transactions until stopped (wait) or limit
// commits were made (0: no limit). Each transaction upserts an extension, upserts an
// instance or deletes an extension (with its versions and instances), so revisions carry
// every kind of change. With tolerate, failed attempts are counted and retried (the
// database is being restarted); otherwise the first failure stops the writers and is
// reported by wait. A transaction is never cancelled half-way: a COMMIT cut off by a
// cancelled context may still commit after the writer gave up on it, which would move the
// database after the test thought the writers were done.
func (b *testBundle) startWriters(n int, limit int64, tolerate bool) *writers {
	w := &writers{}
	for g := 0; g < n; g++ {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			for i := 0; !w.stopped.Load() && (limit == 0 || w.commits.Load() < limit); i++ {
				id := fmt.Sprintf("w%d_%d", g, i%7)
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				err := pgx.BeginFunc(ctx, b.schema.Pool, func(tx pgx.Tx) error {
					return writeOne(ctx, tx, id, i)
				})
				cancel()
				switch {
				case err == nil:
					w.commits.Add(1)
				case tolerate:
					w.failures.Add(1)
					// Retry pace while the database is down (a poll interval, not a wait
					// for an effect).
					time.Sleep(20 * time.Millisecond)
				default:
					w.mu.Lock()
					w.err = errors.Join(w.err, fmt.Errorf("writer %d: %w", g, err))
					w.mu.Unlock()
					w.stopped.Store(true)
					return
				}
			}
		}()
	}
	return w
}

func writeOne(ctx context.Context, tx pgx.Tx, id string, i int) error {
	timeout := 10 + i%4990
	subject := "beamline.ext.pre." + id + ".v1"
	switch i % 5 {
	case 3:
		if _, err := tx.Exec(ctx, `INSERT INTO extensions (id, type, subject, timeout_ms) VALUES ($1, 'pre', $2, $3)
			ON CONFLICT (id) DO NOTHING`, id, subject, timeout); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO extension_instances (extension_id, instance_id, subject, weight, health_status)
			VALUES ($1, 'i1', $2, $3, 'healthy') ON CONFLICT (extension_id, instance_id) DO UPDATE SET weight = EXCLUDED.weight`,
			id, subject, i%101)
		return err
	case 4:
		_, err := tx.Exec(ctx, `DELETE FROM extensions WHERE id = $1`, id)
		return err
	default:
		_, err := tx.Exec(ctx, `INSERT INTO extensions (id, type, subject, timeout_ms) VALUES ($1, 'pre', $2, $3)
			ON CONFLICT (id) DO UPDATE SET timeout_ms = EXCLUDED.timeout_ms`, id, subject, timeout)
		return err
	}
}

// wait stops the writers (if still running) after their current transaction and returns
// the first unexpected error.
func (w *writers) wait() error {
	w.stopped.Store(true)
	w.wg.Wait()
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// waitCommits waits until the writers made at least n commits.
func (w *writers) waitCommits(t *testing.T, n int64, within time.Duration) {
	t.Helper()
	waitFor(t, within, fmt.Sprintf("%d commits", n), func() (bool, error) {
		w.mu.Lock()
		err := w.err
		w.mu.Unlock()
		if err != nil {
			t.Fatal(err)
		}
		return w.commits.Load() >= n, nil
	})
}

// histogram returns the sample count and sum of a histogram metric gathered from reg, and
// an upper bound of quantile q from its buckets.
func histogram(t *testing.T, r *running, name string, q float64) (count uint64, sum, quantile float64) {
	t.Helper()
	mfs, err := r.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		h := mf.GetMetric()[0].GetHistogram()
		count, sum = h.GetSampleCount(), h.GetSampleSum()
		quantile = math.Inf(1)
		for _, bk := range h.GetBucket() {
			if float64(bk.GetCumulativeCount()) >= q*float64(count) {
				quantile = bk.GetUpperBound()
				break
			}
		}
		return count, sum, quantile
	}
	t.Fatalf("metric %s not found", name)
	return 0, 0, 0
}

// logLag logs the commit→publish lag the syncer observed.
func logLag(t *testing.T, r *running) {
	t.Helper()
	n, sum, p99 := histogram(t, r, "registry_syncer_commit_to_publish_seconds", 0.99)
	if n > 0 {
		t.Logf("commit→publish lag: %d revisions, mean %.1f ms, p99 ≤ %.1f ms", n, 1000*sum/float64(n), 1000*p99)
	}
}
