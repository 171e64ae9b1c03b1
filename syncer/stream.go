package syncer

import (
	"context"
	"errors"
	"time"

	"github.com/beamline/registry-syncer/protocol"
	"github.com/nats-io/nats.go/jetstream"
)

func (s *term) heartbeat() {
	snap := s.snap
	if snap == nil {
		return
	}
	err := s.pub.Heartbeat(&protocol.Heartbeat{Revision: snap.Revision(), Checksum: snap.Checksum(), Source: snap.Source(),
		Time: time.Now().UTC(), IntervalMS: s.cfg.HeartbeatInterval.Milliseconds(), Syncer: s.cfg.InstanceID})
	if err != nil {
		s.metrics.PublishErrors.Inc()
	}
}

// checkStream finds what the stream lost (a NATS crash can lose acknowledged messages that
// were not yet synced to disk, or the stream can be deleted) and republishes it.
func (s *term) checkStream(ctx context.Context) {
	if s.snap == nil {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	last, err := s.pub.LastDelta(cctx)
	if err != nil {
		if !errors.Is(err, protocol.ErrNoStream) && !isStreamMissing(err) {
			return
		}
		if err := s.pub.EnsureStreams(cctx); err != nil {
			return
		}
		last = nil
	}
	s.publishOK()
	if m, err := s.pub.Reader().Manifest(cctx); errors.Is(err, protocol.ErrNotFound) || errors.Is(err, protocol.ErrNoStream) || (err == nil && m.Revision < s.written.Load()) {
		s.log.WarnContext(ctx, "syncer: the stored snapshot is missing or older than written; rewriting it")
		s.snapForce.Store(true)
		s.kickSnapshotWriter()
	}
	// Which of the deltas we published are gone. A stream loses a tail (a crash loses what
	// it had not synced), so the retained history is stored up to some point and missing
	// after it: check the newest (one direct get when nothing was lost), else search for
	// that point (a few gets even for a long loss). Not "the delta at the stream's last
	// sequence": the stream keeps its last sequence when its tail is deleted, and a
	// republished delta may be stored after a newer one. An empty stream lost all.
	r := s.pub.Reader()
	stored := func(i int) (bool, error) {
		_, err := r.Delta(cctx, s.history.at(i).delta.Revision)
		if errors.Is(err, protocol.ErrNotFound) {
			return false, nil
		}
		return err == nil, err
	}
	i := s.history.len()
	if last == nil {
		i = 0
	} else if i > 0 {
		ok, err := stored(i - 1)
		if err != nil {
			return // NATS does not answer: next time
		}
		if !ok {
			lo, hi := 0, i-1 // the first missing one is in [lo, hi]
			for lo < hi {
				mid := (lo + hi) / 2
				ok, err := stored(mid)
				if err != nil {
					return
				}
				if ok {
					lo = mid + 1
				} else {
					hi = mid
				}
			}
			i = lo
		}
	}
	missing := s.history.from(i)
	if len(missing) == 0 {
		return
	}
	if i == 0 && missing[0].delta.PrevRevision > 0 {
		if _, err := r.Delta(cctx, missing[0].delta.PrevRevision); errors.Is(err, protocol.ErrNotFound) {
			s.log.ErrorContext(ctx, "syncer: the stream lost deltas older than the retained history; routers behind will re-bootstrap from the snapshot",
				"history_from", missing[0].delta.Revision)
			s.snapForce.Store(true)
			s.kickSnapshotWriter()
		}
	}
	s.log.WarnContext(ctx, "syncer: the stream lacks published deltas; republishing them",
		"from", missing[0].delta.Revision, "published", s.snap.Revision(), "count", len(missing))
	s.republish(ctx, missing)
}

// republish stores again, oldest first, those of ps that the stream lacks, with the same
// content, and announces them.
func (s *term) republish(ctx context.Context, ps []*published) {
	for _, p := range ps {
		seq, err := s.pub.StoreDelta(ctx, p.delta, p.data)
		if err != nil {
			s.metrics.PublishErrors.Inc()
			s.log.WarnContext(ctx, "syncer: republish failed", "revision", p.delta.Revision, "error", err)
			return
		}
		if seq > 0 {
			p.seq = seq
			s.lastSeq = max(s.lastSeq, seq)
			s.metrics.Republished.Inc()
		}
	}
}

func isStreamMissing(err error) bool { return errors.Is(err, jetstream.ErrStreamNotFound) }
