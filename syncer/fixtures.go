package syncer

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/beamline/registry-syncer/cache"
	"github.com/beamline/registry-syncer/fixtures"
	"github.com/beamline/registry-syncer/protocol"
)

// FixtureSnapshot loads the fixture set (dir, or the built-in defaults when empty) as a
// snapshot content labelled with the fixtures source.
func FixtureSnapshot(dir string, revision int64) (*cache.Snapshot, error) {
	var (
		recs []fixtures.Record
		err  error
	)
	if dir == "" {
		recs, err = fixtures.Load(fixtures.Defaults())
	} else {
		recs, err = fixtures.LoadDir(dir)
	}
	if err != nil {
		return nil, err
	}
	exts := make([]cache.Extension, 0, len(recs))
	for _, r := range recs {
		e := cache.Extension{ID: r.ID, Type: r.Type, Subject: r.Subject, TimeoutMS: r.TimeoutMS,
			Retry: r.Retry, Enabled: r.Enabled, Version: r.Version, Config: r.Config, Metadata: r.Metadata}
		// A file in the registry's own format carries the versions and instances too.
		for _, v := range r.Versions {
			e.Versions = append(e.Versions, cache.Version{Version: v.Version, Subject: v.Subject, TimeoutMS: v.TimeoutMS,
				Retry: v.Retry, Enabled: v.Enabled, Config: v.Config, Metadata: v.Metadata, RoutingRules: v.RoutingRules})
		}
		for _, in := range r.Instances {
			e.Instances = append(e.Instances, cache.Instance{InstanceID: in.InstanceID, Subject: in.Subject, Weight: in.Weight,
				Enabled: in.Enabled, HealthStatus: in.HealthStatus})
		}
		exts = append(exts, e)
	}
	snap, err := cache.New(revision, SourceFixtures, exts)
	if err != nil {
		return nil, fmt.Errorf("fixtures: %w", err)
	}
	return snap, nil
}

// runFixtures publishes the fixture set (no database) and keeps the heartbeat going until
// ctx ends. A forced sync reloads the fixture files.
func (p *Syncer) runFixtures(ctx context.Context) error {
	// One term without a lease: the fixtures source has no database to elect in (run one
	// such syncer per prefix).
	if err := p.useKey(ctx, nil); err != nil {
		return err
	}
	s := newTerm(p, nil)
	defer s.stop()
	s.update(func(st *Status) {
		st.Role, st.Leader, st.Listening, st.CaughtUp, st.Source = RoleLeader, true, true, true, SourceFixtures
	})
	s.metrics.Leader.Set(1)
	defer func() {
		s.update(func(st *Status) {
			st.Role, st.Leader, st.SnapshotRevision, st.LastPublishOK = RoleStarting, false, -1, time.Time{}
		})
		s.metrics.Leader.Set(0)
	}()
	if err := s.ensureStreams(ctx); err != nil {
		return err
	}
	stopFleet, err := s.serveFleet()
	if err != nil {
		return err
	}
	defer stopFleet()
	published, _, _, err := s.loadPublished(ctx)
	if err != nil {
		return err
	}
	if err := s.publishFixtures(ctx, published); err != nil {
		return err
	}
	beat := time.NewTicker(s.cfg.HeartbeatInterval)
	defer beat.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case done := <-s.force:
			err := s.publishFixtures(ctx, s.snap)
			done <- err
		case <-beat.C:
			s.heartbeat()
			s.checkStream(ctx)
		}
	}
}

// publishFixtures publishes the fixture content on top of base (what routers have): as
// the first snapshot when nothing was published, else as one delta of whole aggregates
// under the next revision when the content differs.
func (s *term) publishFixtures(ctx context.Context, base *cache.Snapshot) error {
	fx, err := FixtureSnapshot(s.cfg.FixturesDir, 1)
	if err != nil {
		return err
	}
	if base == nil {
		s.setPublished(fx, 0, origin{Revision: fx.Revision()})
		s.log.InfoContext(ctx, "syncer: publishing fixtures as the first snapshot", "extensions", fx.Len())
		return s.writeSnapshot(ctx, fx)
	}
	if base.Checksum() == fx.Checksum() && base.Source() == SourceFixtures {
		s.setPublished(base, 0, origin{Revision: base.Revision()})
		return s.writeSnapshot(ctx, base)
	}
	var changes []cache.Change
	for _, id := range base.Diff(fx) {
		e, ok := fx.Get(id)
		if !ok {
			changes = append(changes, cache.Change{Op: cache.OpDelete, Kind: cache.KindAggregate, ID: id})
			continue
		}
		raw, err := cache.Canonical(e)
		if err != nil {
			return err
		}
		changes = append(changes, cache.Change{Op: cache.OpPut, Kind: cache.KindAggregate, ID: id, Value: raw})
	}
	rev := base.Revision() + 1
	next, _, err := base.Apply(rev, SourceFixtures, changes)
	if err != nil {
		return fmt.Errorf("fixtures: %w", err)
	}
	if next.Checksum() != fx.Checksum() {
		return errors.New("fixtures: applying the difference did not reproduce the fixture content")
	}
	s.snap = base
	d := &protocol.Delta{Revision: rev, PrevRevision: base.Revision(), Checksum: next.Checksum(), ChecksumV2: next.ChecksumV2(), Count: next.Len(),
		Source: SourceFixtures, CommittedAt: time.Now().UTC(), Changes: changes}
	s.log.InfoContext(ctx, "syncer: publishing fixtures", "revision", rev, "changed", len(changes))
	return s.publishDelta(ctx, d, next)
}
