package syncer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/beamline/registry-syncer/cache"
	"github.com/beamline/registry-syncer/fleet"
	"github.com/beamline/registry-syncer/health"
	"github.com/beamline/registry-syncer/leadership"
	"github.com/beamline/registry-syncer/listener"
	"github.com/beamline/registry-syncer/protocol"
	"github.com/beamline/registry-syncer/publisher"
	"github.com/nats-io/nats.go"
)

// term is one leadership term: everything that is only true while this process publishes
// under one lease. It is created when the term starts and dropped when it ends, so nothing
// one term learned (the cursor, the published state, stream sequences, a pending batch)
// can leak into the next — the database or the stream may have changed in between.
type term struct {
	*Syncer
	// lease fences every write (nil with the fixtures source: no database, no election).
	lease *leadership.Term
	// pub is the process's publisher fenced by the lease: it writes nothing once the lease
	// could have been taken over.
	pub *publisher.Publisher

	// Owned by the term's publishing goroutine.
	snap   *cache.Snapshot // the published state
	cursor int64           // last change-log revision the published state includes
	origin origin          // identity of the published state's revision in the database
	// registryID is the database's registry id, read when the term starts (deltas carry it).
	registryID string
	history    *history
	// lastSeq is the highest delta-stream sequence this term stored at in send order (0:
	// none yet): a store sent after it and acknowledged at or below it means the stream
	// went back.
	lastSeq uint64
	// inflight are the deltas whose stores were sent and not yet completed, oldest first
	// (catchup.go); ackedSnap and ackedCursor are the published state behind them.
	inflight      []*inflight
	inflightBytes int
	ackedSnap     *cache.Snapshot
	ackedCursor   int64
	// pending is the rest of a change-log batch a time-bounded catch-up round did not
	// publish; it continues the cursor pendingAfter.
	pending      []revision
	pendingAfter int64
	caughtUpOnce bool  // the term caught up at least once (it worked until it ended)
	chainNext    int64 // where verifyChain goes on (0: from the head)
	deepNext     int   // verifyChain's place in the history below the snapshot (0: the newest)
	fleetView    *fleet.Fleet
	withheld     withholding
	// health is the term's control loop (nil with the fixtures source: no database).
	health *termHealth

	// The snapshot writer (snapshot.go) runs beside the publishing goroutine.
	latest       atomic.Pointer[cache.Snapshot] // newest published state
	latestOrigin atomic.Pointer[origin]
	snapWake     chan struct{}
	snapForce    atomic.Bool
	snapMu       sync.Mutex
	written      atomic.Int64 // revision of the last snapshot written (-1: none)
	writerStop   chan struct{}
	writerDone   chan struct{}
}

func newTerm(s *Syncer, lease *leadership.Term) *term {
	t := &term{Syncer: s, lease: lease, pub: s.pub, fleetView: fleet.New(s.metrics.Fleet), history: newHistory(s.cfg.History, s.cfg.HistoryBytes), withheld: withholding{},
		snapWake: make(chan struct{}, 1), writerStop: make(chan struct{}), writerDone: make(chan struct{})}
	if lease != nil {
		t.pub = s.pub.WithFence(lease.Valid)
		t.health = &termHealth{merger: health.NewMerger(s.cfg.HealthInterval), ctl: health.NewController(s.cfg.Auto, time.Now()),
			done: make(chan struct{})}
	}
	t.written.Store(-1)
	// The writer's writes end with the lease; a clean stop (stop) lets the one in flight
	// finish while the lease still holds.
	wctx := context.Background()
	if lease != nil {
		wctx = lease.Context()
	}
	go func() {
		defer close(t.writerDone)
		t.snapshotWriter(wctx)
	}()
	return t
}

// stop ends the term's snapshot writer and waits for it. Call it before releasing the
// lease.
func (t *term) stop() {
	select {
	case <-t.writerStop:
	default:
		close(t.writerStop)
	}
	<-t.writerDone
}

// lead publishes while this term lasts: LISTEN first, then restore the published state
// from NATS, catch up from the change log, and follow it. It returns when ctx ends, the
// lease is lost, or publishing fails.
func (s *term) lead(parent context.Context) error {
	ctx, cancel := context.WithCancelCause(parent)
	defer cancel(nil)
	stopWatch := context.AfterFunc(s.lease.Context(), func() { cancel(context.Cause(s.lease.Context())) })
	defer stopWatch()
	err := s.leadLoop(ctx)
	if cause := context.Cause(ctx); parent.Err() == nil && cause != nil && errors.Is(cause, leadership.ErrLost) {
		return cause
	}
	return err
}

func (s *term) leadLoop(ctx context.Context) error {
	pool, err := s.Pool()
	if err != nil {
		return err
	}
	if err := s.ensureStreams(ctx); err != nil {
		return err
	}
	stopFleet, err := s.serveFleet()
	if err != nil {
		return err
	}
	defer stopFleet()
	if s.health != nil {
		defer s.startHealth(ctx, pool)()
	}
	lcfg := s.cfg.Listener
	lis, err := listener.New(lcfg, s.base, nil)
	if err != nil {
		return err
	}
	if err := lis.Start(ctx); err != nil {
		return err
	}
	defer lis.Stop()
	// The first wake-up comes once LISTEN is confirmed: only then is catching up safe
	// (a commit after this point wakes us again).
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-lis.C():
	}
	s.update(func(st *Status) { st.Listening = true })
	if err := s.restore(ctx, pool); err != nil {
		return err
	}
	if err := s.catchUp(ctx, pool, 0); err != nil {
		return err
	}
	reconcile := time.NewTicker(s.cfg.SyncInterval)
	defer reconcile.Stop()
	// Early in every term, after the first heartbeat, one full read finds what the
	// database holds invalid, so it is withheld and named from the start (a read, not a
	// reconcile: under sustained writes a reconcile's catch-up would hold back heartbeats).
	findInvalid := time.After(s.cfg.HeartbeatInterval)
	beat := time.NewTicker(s.cfg.HeartbeatInterval)
	defer beat.Stop()
	var seenReconnects, seenNotifications int64
	// Catching up goes in rounds of about a heartbeat interval; between rounds the loop
	// serves whatever else is due (more wakes it for the next round).
	more := make(chan struct{}, 1)
	follow := func() error {
		again, err := s.catchUpFor(ctx, pool, s.cfg.HeartbeatInterval)
		if again {
			select {
			case more <- struct{}{}:
			default:
			}
		}
		return err
	}
	onBeat := func() error {
		s.update(func(st *Status) { st.Listening = lis.Listening() })
		if err := s.checkTimeline(ctx, pool); err != nil {
			return err
		}
		s.heartbeat()
		s.checkStream(ctx)
		s.verifyChain(ctx)
		s.fleetView.Routers(time.Now()) // refreshes the fleet gauges
		return nil
	}
	for {
		// A due heartbeat goes first: between catch-up rounds, a random pick among the
		// ready cases could pass it over several times.
		select {
		case <-beat.C:
			if err := onBeat(); err != nil {
				return err
			}
		default:
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-more:
			if err := follow(); err != nil {
				return err
			}
		case <-lis.C():
			rc, n := lis.Stats()
			s.metrics.ListenerReconnect.Add(float64(rc - seenReconnects))
			s.metrics.Notifications.Add(float64(n - seenNotifications))
			seenReconnects, seenNotifications = rc, n
			s.update(func(st *Status) { st.Listening = lis.Listening() })
			if err := follow(); err != nil {
				return err
			}
		case <-reconcile.C:
			if err := s.reconcile(ctx, pool); err != nil {
				return err
			}
		case <-findInvalid:
			db, err := readConsistent(ctx, pool)
			if err != nil {
				s.log.WarnContext(ctx, "syncer: reading the registry for invalid rows failed; the next reconcile does it", "error", err)
				continue
			}
			s.adoptInvalid(db)
		case done := <-s.force:
			err := s.reconcile(ctx, pool)
			done <- err
			if err != nil {
				return err
			}
		case <-beat.C:
			if err := onBeat(); err != nil {
				return err
			}
		}
	}
}

// ensureStreams creates the streams, retrying NATS failures with backoff; a server this
// product cannot work with is an error at once.
func (s *term) ensureStreams(ctx context.Context) error {
	for attempt := 1; ; attempt++ {
		err := s.pub.EnsureStreams(ctx)
		if err == nil {
			s.publishOK()
			return nil
		}
		if errors.Is(err, leadership.ErrLost) || fatalNATS(err) {
			return err
		}
		d := backoff(attempt)
		s.update(func(st *Status) { st.Error = "create the streams: " + err.Error() })
		s.log.WarnContext(ctx, "syncer: cannot create the streams", "error", err, "attempt", attempt, "sleep_duration", d)
		if !sleep(ctx, d) {
			return ctx.Err()
		}
	}
}

// fatalNATS reports a NATS server this product cannot work with, or streams another
// prefix owns: retrying cannot help.
func fatalNATS(err error) bool {
	return errors.Is(err, publisher.ErrUnsupportedServer) || errors.Is(err, publisher.ErrNoJetStream) ||
		errors.Is(err, publisher.ErrStreamInUse)
}

// publishOK records that NATS took a write (readiness: the leader can publish).
func (s *term) publishOK() {
	now := time.Now()
	s.update(func(st *Status) { st.LastPublishOK = now })
}

func (s *term) setPublished(snap *cache.Snapshot, cursor int64, o origin) {
	s.snap, s.cursor = snap, cursor
	s.announced(pubState{rev: snap.Revision(), checksum: snap.Checksum(), checksumV2: snap.ChecksumV2(), count: snap.Len(), source: snap.Source()}, snap, o)
}

// stateOf is the published state a delta leads to.
func stateOf(d *protocol.Delta) pubState {
	return pubState{rev: d.Revision, checksum: d.Checksum, checksumV2: d.ChecksumV2, count: d.Count, source: d.Source}
}

// pubState describes a published state.
type pubState struct {
	rev        int64
	checksum   string
	checksumV2 string
	count      int
	source     string
}

// announced makes st, stored and announced, the published state for everyone but the
// publishing goroutine's head (s.snap, s.cursor: ahead while deltas are in flight). snap
// is its content, for the snapshot writer; nil while deltas are pipelined keeps the
// writer on an earlier published state (catchup.go keeps only some states in flight).
func (s *term) announced(st pubState, snap *cache.Snapshot, o origin) {
	s.origin = o
	if snap != nil {
		s.latestOrigin.Store(&o)
		s.latest.Store(snap)
	}
	s.noteHighWater(st.rev)
	s.metrics.LastPublished.Set(float64(st.rev))
	s.metrics.Extensions.Set(float64(st.count))
	s.update(func(status *Status) {
		status.Revision, status.Checksum, status.ChecksumV2, status.Extensions, status.Source = st.rev, st.checksum, st.checksumV2, st.count, st.source
	})
	if snap != nil {
		s.kickSnapshotWriter()
	}
}

func (s *term) kickSnapshotWriter() {
	select {
	case s.snapWake <- struct{}{}:
	default:
	}
}

// serveFleet keeps this term's fleet view from the routers' reports and answers status
// requests on P.status; stop ends both.
func (s *term) serveFleet() (stop func(), err error) {
	names := s.pub.Names()
	reports, err := s.nc.Subscribe(names.Reports(), func(m *nats.Msg) {
		r, err := protocol.DecodeReport(m.Data)
		if err != nil {
			s.fleetView.Invalid()
			return
		}
		now := time.Now()
		s.fleetView.Observe(r, now)
		s.observeReport(r, now)
	})
	if err != nil {
		return nil, fmt.Errorf("subscribe to router reports: %w", err)
	}
	status, err := s.nc.Subscribe(names.Status(), func(m *nats.Msg) {
		if s.lease != nil && s.lease.Valid() != nil {
			return // deposed: the next leader answers
		}
		fs, err := s.Fleet()
		if err != nil {
			return
		}
		if data, err := json.Marshal(fs); err == nil {
			_ = m.Respond(data)
		}
	})
	if err != nil {
		_ = reports.Unsubscribe()
		return nil, fmt.Errorf("subscribe to status requests: %w", err)
	}
	s.Syncer.fleet.Store(s.fleetView)
	return func() {
		s.Syncer.fleet.CompareAndSwap(s.fleetView, nil)
		_ = reports.Unsubscribe()
		_ = status.Unsubscribe()
		s.metrics.Fleet.Reset()
	}, nil
}
