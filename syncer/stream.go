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
	err := s.pub.Heartbeat(&protocol.Heartbeat{Revision: snap.Revision(), Checksum: snap.Checksum(), ChecksumV2: snap.ChecksumV2(), Source: snap.Source(),
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
			if len(s.inflight) == 0 { // else stores sent before this one may land after it
				s.lastSeq = max(s.lastSeq, seq)
			}
			s.metrics.Republished.Inc()
		}
	}
}

func isStreamMissing(err error) bool { return errors.Is(err, jetstream.ErrStreamNotFound) }

// chainStep bounds the stored deltas verifyChain reads per heartbeat: it runs on the
// publishing goroutine, so a long chain (a burst, while snapshots coalesce) is verified over
// several heartbeats rather than holding publishing back (64 direct gets per beat halved a
// burst's publish rate).
const chainStep = 8

// verifyChain checks, a bounded number of deltas (and time) per heartbeat, that the stream still holds
// the chain routers walk: from the newest published revision back through prev links to
// the stored snapshot. checkStream finds a lost tail; this finds a hole in the middle (a
// delta deleted, or lost by a replica) that would leave a router needing it waiting for
// the next snapshot. A missing delta this term published is stored again with its
// original content, quietly (routers read it from the stream when they need it); one it
// cannot restore is covered by writing the current snapshot, above the hole.
func (s *term) verifyChain(ctx context.Context) {
	if s.snap == nil {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, s.cfg.HeartbeatInterval)
	defer cancel()
	r := s.pub.Reader()
	man, err := r.Manifest(cctx)
	if err != nil {
		return // checkStream deals with a missing manifest
	}
	budget := time.Now().Add(s.cfg.HeartbeatInterval / 4)
	// The chain routers walk: from the head down to the snapshot's revision.
	rev := s.chainNext
	if rev <= 0 || rev < man.Revision || rev > s.snap.Revision() {
		rev = s.snap.Revision() // start again from the head
	}
	for i := 0; i < chainStep && rev >= man.Revision && rev > 0 && time.Now().Before(budget); i++ {
		d, err := r.Delta(cctx, rev)
		switch {
		case err == nil:
			rev = d.PrevRevision
			continue
		case !errors.Is(err, protocol.ErrNotFound):
			s.chainNext = rev
			return // NATS does not answer: go on next time
		}
		p := s.history.byRevision(rev)
		if p == nil && rev == man.Revision {
			rev = 0 // the snapshot itself holds it: the chain is complete
			break
		}
		if p == nil {
			s.log.ErrorContext(ctx, "syncer: the stream lacks a delta between the snapshot and the head that this syncer cannot restore; writing the current snapshot above it",
				"missing", rev, "snapshot", man.Revision, "published", s.snap.Revision())
			s.snapForce.Store(true)
			s.kickSnapshotWriter()
			s.chainNext = 0
			return
		}
		if !s.restoreDelta(ctx, cctx, p, man.Revision) {
			s.chainNext = rev
			return
		}
		rev = p.delta.PrevRevision
	}
	s.chainNext = rev
	// What this term published below the snapshot, a few per beat, oldest reached last:
	// routers behind the snapshot re-bootstrap, but a hole there (a crash that lost a tail
	// which newer deltas then covered) should not stay for good.
	if s.deepNext <= 0 || s.deepNext > s.history.len() {
		s.deepNext = s.history.len()
	}
	for i := 0; i < chainStep && s.deepNext > 0 && time.Now().Before(budget); i++ {
		p := s.history.at(s.deepNext - 1)
		if p.delta.Revision >= man.Revision {
			s.deepNext-- // the chain walk above covers it
			continue
		}
		_, err := r.Delta(cctx, p.delta.Revision)
		if err != nil && !errors.Is(err, protocol.ErrNotFound) {
			return
		}
		if errors.Is(err, protocol.ErrNotFound) && !s.restoreDelta(ctx, cctx, p, man.Revision) {
			return
		}
		s.deepNext--
	}
}

// restoreDelta stores p again, with its original content and without a live
// announcement; it reports whether that worked.
func (s *term) restoreDelta(ctx, cctx context.Context, p *published, snapshot int64) bool {
	seq, err := s.pub.Quiet().StoreDelta(cctx, p.delta, p.data)
	if err != nil {
		s.metrics.PublishErrors.Inc()
		s.log.WarnContext(ctx, "syncer: restoring a delta missing from the stream failed", "revision", p.delta.Revision, "error", err)
		return false
	}
	if seq > 0 {
		p.seq = seq
		s.lastSeq = max(s.lastSeq, seq)
		s.metrics.Republished.Inc()
	}
	s.log.WarnContext(ctx, "syncer: the stream lacked a delta it had stored; stored it again with its original content",
		"revision", p.delta.Revision, "snapshot", snapshot, "published", s.snap.Revision())
	return true
}
