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
	return s.withholdFrom(id, reason, rev, s.snap)
}

// withholdFrom is withhold with the shadow starting from id's aggregate in base.
func (s *term) withholdFrom(id, reason string, rev int64, base *cache.Snapshot) *withheldAgg {
	if a, ok := s.withheld[id]; ok {
		return a
	}
	a := &withheldAgg{Withheld: Withheld{ID: id, Reason: reason, Since: rev}}
	if e, ok := base.Get(id); ok {
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

// preparing is one revision being turned, page by page (revision.forPages), into what can
// be published on top of the published state s.snap: changes to withheld aggregates are
// left out (and applied to their shadows), new offenders are withheld, and (finish) a
// withheld aggregate that the revision made valid is released as a whole-aggregate change.
// Applying a revision's changes in pages gives the state applying them at once gives
// (cache.Apply checks each change as it applies it), so a huge revision is never held
// whole.
type preparing struct {
	s   *term
	rev int64
	cur *cache.Snapshot // s.snap with the pages so far
	// touched are the withheld aggregates this revision changed (only those can become
	// valid with it).
	touched map[string]bool
}

func (s *term) preparing(rev int64) *preparing {
	return &preparing{s: s, rev: rev, cur: s.snap}
}

// page prepares the next page of the revision's changes and returns what of it to publish.
func (p *preparing) page(changes []cache.Change) ([]cache.Change, error) {
	s := p.s
	var (
		out     []cache.Change
		reverts []cache.Change // aggregates withheld on this page that earlier pages changed
	)
	build := func() []cache.Change {
		if len(s.withheld) == 0 {
			out = changes // the common case: publish the page as it is, no copy
			return out
		}
		out = make([]cache.Change, 0, len(reverts)+len(changes))
		out = append(out, reverts...)
		for _, c := range changes {
			if _, held := s.withheld[c.ID]; !held {
				out = append(out, c)
			}
		}
		return out
	}
	for attempt := 0; ; attempt++ {
		cs := build()
		next, _, err := p.cur.Apply(p.rev, SourceDatabase, cs)
		if err == nil {
			p.cur = next
			break
		}
		var ce *cache.ChangeError
		if !errors.As(err, &ce) || attempt > len(changes) {
			return nil, err
		}
		// Withhold the offender with the database's version before this page (the shadow
		// update below applies the page's changes to it)...
		s.withholdFrom(ce.ID, ce.Error(), p.rev, p.cur)
		// ...and publish its content as it was before this revision: earlier pages may
		// have changed it already.
		if rv, ok, err := p.revert(ce.ID); err != nil {
			return nil, err
		} else if ok {
			reverts = append(reverts, rv)
		}
	}
	if len(s.withheld) == 0 {
		return out, nil // the common case: nothing withheld
	}
	// Shadows follow the database, change by change, without validation.
	for _, c := range changes {
		if a, ok := s.withheld[c.ID]; ok {
			if p.touched == nil {
				p.touched = map[string]bool{}
			}
			p.touched[c.ID] = true
			if err := changelog.Replay(&a.shadow, c); err != nil {
				a.Reason = fmt.Sprintf("%s; and revision %d: %v", a.Reason, p.rev, err)
			}
		}
	}
	return out, nil
}

// revert is the change that puts id back as the published state has it, when the pages so
// far changed it (ok false: they did not).
func (p *preparing) revert(id string) (cache.Change, bool, error) {
	was, had := p.s.snap.Hash(id)
	is, has := p.cur.Hash(id)
	if had == has && was == is {
		return cache.Change{}, false, nil
	}
	e, _ := p.s.snap.Get(id)
	ch, err := aggregateChange(id, e)
	return ch, err == nil, err
}

// finish ends the revision: it releases what the revision made valid (only aggregates it
// touched can change) and returns the changes that release them, to publish after the
// pages', with the state after the whole revision.
func (p *preparing) finish() ([]cache.Change, *cache.Snapshot, error) {
	s := p.s
	if len(s.withheld) == 0 {
		return nil, p.cur, nil // the common case: nothing withheld, nothing to release
	}
	var (
		out      []cache.Change
		released []string
	)
	ids := make([]string, 0, len(p.touched))
	for id := range p.touched {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		a, ok := s.withheld[id]
		if !ok {
			continue
		}
		ch, err := aggregateChange(id, a.shadow)
		if err != nil {
			a.Reason = err.Error()
			continue
		}
		next, _, err := p.cur.Apply(p.rev, SourceDatabase, []cache.Change{ch})
		if err != nil {
			a.Reason = fmt.Sprintf("still invalid at revision %d: %v", p.rev, err)
			continue
		}
		p.cur = next
		out = append(out, ch)
		released = append(released, id)
		delete(s.withheld, id)
	}
	if len(released) > 0 {
		s.log.Info("syncer: publishing withheld extensions again: they are valid now", "extensions", released, "revision", p.rev)
	}
	s.noteWithheld()
	return out, p.cur, nil
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
