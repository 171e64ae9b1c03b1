package syncer

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"

	"github.com/beamline/registry-syncer/cache"
	"github.com/beamline/registry-syncer/changelog"
)

// Publishing never stops for one row (DESIGN.md invariant 9). A revision whose changes to
// one extension's aggregate cannot be applied (a row the router side refuses: written
// past the triggers, or valid under a rule tightened later) is published without them:
// that aggregate is withheld — routers keep its last valid content, or never see it — and
// named in the log, the status (/readyz) and a metric. The term keeps the database's
// version of a withheld aggregate (its shadow, built from the change log without
// validation); as soon as a later revision makes it valid again, that revision carries
// the whole aggregate and it is published again. A forced sync (POST /admin/sync) reads
// the registry anew and releases what became valid meanwhile.

// Withheld is an aggregate that is not published because it is invalid.
type Withheld struct {
	ID     string `json:"id"`
	Reason string `json:"reason"`
	Since  int64  `json:"since_revision"` // the revision that made it invalid (or where it was found)
}

// withheldAgg is a withheld aggregate and the database's current version of it.
type withheldAgg struct {
	Withheld
	shadow *cache.Extension // nil: the database has no such extension (now)
}

// withholding is the term's set of withheld aggregates.
type withholding map[string]*withheldAgg

// list returns the withheld aggregates sorted by id.
func (w withholding) list() []Withheld {
	out := make([]Withheld, 0, len(w))
	for _, a := range w {
		out = append(out, a.Withheld)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// withhold adds id (its shadow starting from the published aggregate) unless held.
func (s *term) withhold(id, reason string, rev int64) *withheldAgg {
	if a, ok := s.withheld[id]; ok {
		return a
	}
	a := &withheldAgg{Withheld: Withheld{ID: id, Reason: reason, Since: rev}}
	if e, ok := s.snap.Get(id); ok {
		c := cloneAggregate(e)
		a.shadow = &c
	}
	s.withheld[id] = a
	s.log.Error("syncer: withholding an extension that cannot be published; every other change keeps flowing",
		"extension", id, "revision", rev, "reason", reason)
	s.noteWithheld()
	return a
}

func (s *term) noteWithheld() {
	list := s.withheld.list()
	s.metrics.Withheld.Set(float64(len(list)))
	s.update(func(st *Status) { st.Withheld = list })
}

func cloneAggregate(e *cache.Extension) cache.Extension {
	c := *e
	c.Versions = slices.Clone(e.Versions)
	c.Instances = slices.Clone(e.Instances)
	return c
}

// prepare turns a revision's changes into what can be published on top of the published
// state: changes to withheld aggregates are left out (and applied to their shadows), new
// offenders are withheld, and a withheld aggregate that became valid is released as a
// whole-aggregate change. It returns the changes and the state after them.
func (s *term) prepare(rev int64, changes []cache.Change) ([]cache.Change, *cache.Snapshot, error) {
	var out []cache.Change
	var released []string
	build := func() []cache.Change {
		if len(s.withheld) == 0 {
			out = changes // the common case: publish the revision as it is, no copy
			return out
		}
		out = make([]cache.Change, 0, len(changes))
		for _, c := range changes {
			if _, held := s.withheld[c.ID]; !held {
				out = append(out, c)
			}
		}
		return out
	}
	touched := map[string]bool{}
	for _, c := range changes {
		touched[c.ID] = true
	}
	var next *cache.Snapshot
	for attempt := 0; ; attempt++ {
		cs := build()
		var err error
		next, _, err = s.snap.Apply(rev, SourceDatabase, cs)
		if err == nil {
			break
		}
		var ce *cache.ChangeError
		if !errors.As(err, &ce) || attempt > len(changes) {
			return nil, nil, err
		}
		// Withhold the offender with its state before this revision: the shadow update
		// below applies this revision's changes to it.
		s.withhold(ce.ID, ce.Error(), rev)
	}
	if len(s.withheld) == 0 {
		return out, next, nil // the common case: nothing withheld, nothing to release
	}
	// Shadows follow the database, change by change, without validation.
	for _, c := range changes {
		if a, ok := s.withheld[c.ID]; ok {
			if err := changelog.Replay(&a.shadow, c); err != nil {
				a.Reason = fmt.Sprintf("%s; and revision %d: %v", a.Reason, rev, err)
			}
		}
	}
	// Release what this revision made valid (only aggregates it touched can change).
	for id := range touched {
		a, ok := s.withheld[id]
		if !ok {
			continue
		}
		ch, err := aggregateChange(id, a.shadow)
		if err != nil {
			a.Reason = err.Error()
			continue
		}
		candidate := append(slices.Clone(out), ch)
		if _, _, err := s.snap.Apply(rev, SourceDatabase, candidate); err != nil {
			a.Reason = fmt.Sprintf("still invalid at revision %d: %v", rev, err)
			continue
		}
		out = candidate
		released = append(released, id)
		delete(s.withheld, id)
	}
	if len(released) > 0 {
		var err error
		if next, _, err = s.snap.Apply(rev, SourceDatabase, out); err != nil {
			return nil, nil, err
		}
	}
	if len(released) > 0 {
		sort.Strings(released)
		s.log.Info("syncer: publishing withheld extensions again: they are valid now", "extensions", released, "revision", rev)
	}
	if len(released) > 0 || len(s.withheld) > 0 {
		s.noteWithheld()
	}
	return out, next, nil
}

// aggregateChange is the change that makes id's aggregate e (delete when nil).
func aggregateChange(id string, e *cache.Extension) (cache.Change, error) {
	if e == nil {
		return cache.Change{Op: cache.OpDelete, Kind: cache.KindAggregate, ID: id}, nil
	}
	raw, err := json.Marshal(e)
	if err != nil {
		return cache.Change{}, fmt.Errorf("encode aggregate %q: %w", id, err)
	}
	return cache.Change{Op: cache.OpPut, Kind: cache.KindAggregate, ID: id, Value: raw}, nil
}

// splitInvalid builds a snapshot from exts, leaving out (and returning) every extension
// that does not validate, with its reason.
func splitInvalid(rev int64, source string, exts []cache.Extension) (*cache.Snapshot, map[string]string, error) {
	snap, err := cache.New(rev, source, exts)
	if err == nil {
		return snap, nil, nil
	}
	bad := map[string]string{}
	var collect func(error)
	collect = func(err error) {
		var ve *cache.ValidationError
		switch {
		case errors.As(err, &ve) && !isJoined(err):
			if bad[ve.ID] != "" {
				bad[ve.ID] += "; "
			}
			bad[ve.ID] += ve.Error()
		case isJoined(err):
			for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
				collect(e)
			}
		}
	}
	collect(err)
	if len(bad) == 0 {
		return nil, nil, err
	}
	valid := make([]cache.Extension, 0, len(exts))
	for _, e := range exts {
		if _, ok := bad[e.ID]; !ok {
			valid = append(valid, e)
		}
	}
	snap, err = cache.New(rev, source, valid)
	if err != nil {
		return nil, nil, err
	}
	return snap, bad, nil
}

func isJoined(err error) bool {
	_, ok := err.(interface{ Unwrap() []error })
	return ok
}
