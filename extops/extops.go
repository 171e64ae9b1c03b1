// Package extops holds the operator's writes to one extension aggregate, the engine of
// `syncer ext`: each operation edits a copy of the aggregate as it is in the database,
// the result is validated with the registry's rules (cache.Extension.Validate, package
// rules) before anything is sent, and it is written in one transaction that records its
// author in changed_by (the session setting registry.changed_by, which registry_actor()
// reads) — or, for a dry run, only described (changelog.Describe) and rolled back.
//
// The rollout operations follow PROTOCOL.md §3.1: a disabled extension serves only the
// requests its enabled versions select by routing_rules (an allow-list on any attribute,
// and a stable "$percent" of the values of "$percent_key"); metadata.kill_switch wins
// over everything.
package extops

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/beamline/registry-syncer/cache"
	"github.com/beamline/registry-syncer/changelog"
	"github.com/beamline/registry-syncer/rules"
)

// Op edits an aggregate: cur is a private copy of the extension as it is (nil when it
// does not exist); it returns the aggregate wanted (nil: delete the extension).
type Op func(cur *cache.Extension) (*cache.Extension, error)

// Result is what Do did, or would do.
type Result struct {
	ID       string
	Lines    []string // the difference, one line each (changelog.Describe); empty: nothing to do
	Revision int64    // the revision the write committed as (0 for a dry run or nothing to do)
	Author   string
	Notes    []string // what the operator should know about the result (e.g. a disable that still serves a rollout)
	After    *cache.Extension
}

// Do runs op on extension id in one transaction: the row is locked, read, edited,
// validated, and written with author as changed_by; dryRun rolls back after describing.
func Do(ctx context.Context, conn *pgx.Conn, id, author string, dryRun bool, op Op) (*Result, error) {
	if v := rules.ID(id); v != nil {
		return nil, fmt.Errorf("extension id %q: %s", id, v.Msg)
	}
	if author == "" {
		return nil, errors.New("changed_by: no author (give --by NAME)")
	}
	res := &Result{ID: id, Author: author}
	var xid string
	errDry := errors.New("dry run")
	err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT set_config('registry.changed_by', $1, true)`, author); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `SELECT 1 FROM extensions WHERE id = $1 FOR UPDATE`, id); err != nil {
			return fmt.Errorf("lock extension %q: %w", id, err)
		}
		cur, err := changelog.Current(ctx, tx, id)
		if err != nil {
			return err
		}
		var work *cache.Extension
		if cur != nil {
			work = clone(cur)
		}
		target, err := op(work)
		if err != nil {
			return err
		}
		if target != nil {
			target.ID = id
			normalize(target)
			if err := target.Validate(); err != nil {
				return fmt.Errorf("refused before sending (registry rules): %w", err)
			}
		}
		res.After = target
		res.Lines = changelog.Describe(cur, target)
		res.Notes = notes(target)
		if len(res.Lines) == 0 || dryRun {
			return errDry
		}
		if err := changelog.Restore(ctx, tx, id, target); err != nil {
			return err
		}
		return tx.QueryRow(ctx, `SELECT pg_current_xact_id()::text`).Scan(&xid)
	})
	if errors.Is(err, errDry) {
		return res, nil
	}
	if err != nil {
		return nil, fmt.Errorf("extension %s: %w", id, err)
	}
	if err := conn.QueryRow(ctx, `SELECT revision FROM registry_revisions WHERE xid = $1::xid8`, xid).Scan(&res.Revision); err != nil {
		return res, fmt.Errorf("extension %s: committed, but reading its revision failed: %w", id, err)
	}
	return res, nil
}

// clone deep-copies an aggregate.
func clone(e *cache.Extension) *cache.Extension {
	c := *e
	c.Versions = slices.Clone(e.Versions)
	c.Instances = slices.Clone(e.Instances)
	return &c
}

// normalize puts empty documents as {} and children in key order.
func normalize(e *cache.Extension) {
	obj := func(r json.RawMessage) json.RawMessage {
		if len(bytes.TrimSpace(r)) == 0 || string(r) == "null" {
			return json.RawMessage(`{}`)
		}
		return r
	}
	e.Config, e.Metadata = obj(e.Config), obj(e.Metadata)
	for i := range e.Versions {
		v := &e.Versions[i]
		v.Config, v.Metadata, v.RoutingRules = obj(v.Config), obj(v.Metadata), obj(v.RoutingRules)
	}
	sort.Slice(e.Versions, func(i, j int) bool { return e.Versions[i].Version < e.Versions[j].Version })
	sort.Slice(e.Instances, func(i, j int) bool { return e.Instances[i].InstanceID < e.Instances[j].InstanceID })
}

// notes are the facts about an aggregate an operator may not expect.
func notes(e *cache.Extension) []string {
	if e == nil {
		return nil
	}
	var out []string
	if killed(e) {
		out = append(out, "metadata.kill_switch is true: nobody gets this extension, whatever else is set (syncer ext unkill "+e.ID+")")
	}
	if !e.Enabled && e.Serves() {
		out = append(out, "disabled, but still served to its rollout ("+strings.Join(RolloutSummary(e), "; ")+"); syncer ext kill "+e.ID+" stops everything")
	}
	return out
}

// killed reports whether metadata.kill_switch is true.
func killed(e *cache.Extension) bool {
	var m struct {
		Kill *bool `json:"kill_switch"`
	}
	_ = json.Unmarshal(e.Metadata, &m)
	return m.Kill != nil && *m.Kill
}

// Killed reports whether the extension's metadata.kill_switch is true.
func Killed(e *cache.Extension) bool { return killed(e) }

// State is a one-line description of who gets the extension.
func State(e *cache.Extension) string {
	switch {
	case killed(e):
		return "killed (metadata.kill_switch): off for everyone"
	case e.Enabled:
		if len(RolloutSummary(e)) > 0 {
			return "on for everyone (" + e.Version + "); routed: " + strings.Join(RolloutSummary(e), "; ")
		}
		return "on for everyone (" + e.Version + ")"
	case e.Serves():
		return "off except its rollout: " + strings.Join(RolloutSummary(e), "; ")
	}
	return "off for everyone (disabled, nothing in rollout)"
}

// RolloutSummary describes each enabled version with routing rules: who it serves.
func RolloutSummary(e *cache.Extension) []string {
	var out []string
	for _, v := range e.Versions {
		if !v.Enabled {
			continue
		}
		if s := DescribeRules(v.RoutingRules); s != "" {
			out = append(out, v.Version+": "+s)
		}
	}
	return out
}

// DescribeRules says in words whom routing rules select ("" for {}: nobody by itself).
func DescribeRules(raw json.RawMessage) string {
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil || len(m) == 0 {
		return ""
	}
	var keys []string
	for k := range m {
		if !rules.IsReservedKey(k) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	var conds []string
	for _, k := range keys {
		switch v := m[k].(type) {
		case string:
			conds = append(conds, fmt.Sprintf("%s = %s", k, v))
		case []any:
			var vals []string
			for _, x := range v {
				vals = append(vals, fmt.Sprint(x))
			}
			conds = append(conds, fmt.Sprintf("%s in [%s]", k, strings.Join(vals, ", ")))
		}
	}
	var parts []string
	if len(conds) > 0 {
		parts = append(parts, strings.Join(conds, " and "))
	}
	if p, ok := m[rules.PercentKey].(string); ok {
		parts = append(parts, fmt.Sprintf("%s%% of %v", p, m[rules.PercentAttrKey]))
	}
	return strings.Join(parts, ", or ")
}

// ---- operations ----

// Spec is a new extension's definition.
type Spec struct {
	Type, Subject, Version string
	TimeoutMS, Retry       int
	Enabled                bool
	Config, Metadata       json.RawMessage
}

// Create makes a new extension; it fails when id exists.
func Create(s Spec) Op {
	return func(cur *cache.Extension) (*cache.Extension, error) {
		if cur != nil {
			return nil, fmt.Errorf("already exists (%s, %s): use syncer ext set", cur.Type, cur.Subject)
		}
		return &cache.Extension{Type: s.Type, Subject: s.Subject, Version: s.Version, TimeoutMS: s.TimeoutMS, Retry: s.Retry,
			Enabled: s.Enabled, Config: s.Config, Metadata: s.Metadata}, nil
	}
}

// Delete removes the extension with its versions and instances (the change log keeps them).
func Delete() Op {
	return func(cur *cache.Extension) (*cache.Extension, error) {
		if cur == nil {
			return nil, errNotFound
		}
		return nil, nil
	}
}

var errNotFound = errors.New("no such extension (syncer ext list shows them; syncer ext create makes one)")

// exists wraps an op that needs the extension.
func exists(f func(e *cache.Extension) error) Op {
	return func(cur *cache.Extension) (*cache.Extension, error) {
		if cur == nil {
			return nil, errNotFound
		}
		if err := f(cur); err != nil {
			return nil, err
		}
		return cur, nil
	}
}

// SetFields sets the extension's own fields, given as name=value: type, subject,
// version, timeout_ms, retry, enabled, config and metadata (JSON objects).
func SetFields(fields []string) Op {
	return exists(func(e *cache.Extension) error {
		if len(fields) == 0 {
			return errors.New("set: no field=value given (type, subject, version, timeout_ms, retry, enabled, config, metadata)")
		}
		for _, f := range fields {
			name, val, ok := strings.Cut(f, "=")
			if !ok {
				return fmt.Errorf("set %q: want field=value", f)
			}
			var err error
			switch name {
			case "type":
				e.Type = val
			case "subject":
				e.Subject = val
			case "version":
				e.Version = val
			case "timeout_ms":
				e.TimeoutMS, err = atoi(name, val)
			case "retry":
				e.Retry, err = atoi(name, val)
			case "enabled":
				e.Enabled, err = atob(name, val)
			case "config":
				e.Config, err = object(name, val)
			case "metadata":
				e.Metadata, err = object(name, val)
			default:
				return fmt.Errorf("set %q: unknown field %q (type, subject, version, timeout_ms, retry, enabled, config, metadata)", f, name)
			}
			if err != nil {
				return err
			}
		}
		return nil
	})
}

// SetEnabled enables or disables the extension's default (PROTOCOL.md §3.1).
func SetEnabled(on bool) Op {
	// The operator's enable or disable also ends an automatic disable (migration 00008):
	// enabling an auto-disabled extension is the operator's explicit enable, which turns
	// its automatic management off so that the syncer never undoes it.
	return exists(func(e *cache.Extension) error { e.Enabled, e.AutoDisabled = on, false; return nil })
}

// SetKill sets metadata.kill_switch (true) or removes it (false).
func SetKill(on bool) Op {
	return exists(func(e *cache.Extension) error {
		m := map[string]json.RawMessage{}
		if err := json.Unmarshal(e.Metadata, &m); err != nil {
			return fmt.Errorf("metadata: %w", err)
		}
		if on {
			m["kill_switch"] = json.RawMessage("true")
		} else {
			delete(m, "kill_switch")
		}
		b, err := json.Marshal(m)
		e.Metadata = b
		return err
	})
}

// Rollout is one rollout step on one version (PROTOCOL.md §3.1, "Rollout").
type Rollout struct {
	// Version is the version whose routing_rules change; "" is the extension's own
	// version (a version row repeating its definition is created when missing).
	Version string
	// Subject is the subject of a version row created for a version other than the
	// extension's own ("" derives it from the extension's subject: its .vN token replaced).
	Subject string
	// Match replaces the listed attributes' allow-lists (an empty list removes the key).
	Match map[string][]string
	// Percent, when set, sets $percent (with PercentKey, or the version's current
	// $percent_key); "" with ClearPercent removes both.
	Percent      *string
	PercentKey   string
	ClearPercent bool
	// Reset drops every rule first (the version then matches nobody until rules are given).
	Reset bool
}

// DoRollout applies a rollout step: the version is enabled and its routing rules edited.
func DoRollout(r Rollout) Op {
	return exists(func(e *cache.Extension) error {
		ver := r.Version
		if ver == "" {
			ver = e.Version
		}
		i := slices.IndexFunc(e.Versions, func(v cache.Version) bool { return v.Version == ver })
		if i < 0 {
			v := cache.Version{Version: ver, Subject: e.Subject, TimeoutMS: e.TimeoutMS, Retry: e.Retry, Config: e.Config,
				Metadata: json.RawMessage(`{}`), RoutingRules: json.RawMessage(`{}`)}
			if ver != e.Version {
				v.Subject = r.Subject
				if v.Subject == "" {
					dot := strings.LastIndexByte(e.Subject, '.')
					if !rules.IsVTag(ver) || dot < 0 {
						return fmt.Errorf("version %s is new: give its --subject (only a v<N> version's subject can be derived from %s)", ver, e.Subject)
					}
					v.Subject = e.Subject[:dot+1] + ver
				}
			}
			e.Versions = append(e.Versions, v)
			i = len(e.Versions) - 1
		} else if r.Subject != "" {
			e.Versions[i].Subject = r.Subject
		}
		v := &e.Versions[i]
		v.Enabled = true
		m := map[string]json.RawMessage{}
		if !r.Reset {
			if err := json.Unmarshal(v.RoutingRules, &m); err != nil {
				return fmt.Errorf("versions[%s].routing_rules: %w", ver, err)
			}
			if m == nil {
				m = map[string]json.RawMessage{}
			}
		}
		for k, vals := range r.Match {
			if rules.IsReservedKey(k) {
				return fmt.Errorf("--match %s: attribute names starting with '$' are reserved (use --percent/--key)", k)
			}
			if len(vals) == 0 {
				delete(m, k)
				continue
			}
			b, _ := json.Marshal(vals)
			m[k] = b
		}
		if r.ClearPercent {
			delete(m, rules.PercentKey)
			delete(m, rules.PercentAttrKey)
		}
		if r.Percent != nil {
			if _, bad := rules.ParsePercent(*r.Percent); bad != nil {
				return fmt.Errorf("--percent %s: %s", *r.Percent, bad.Msg)
			}
			key := r.PercentKey
			if key == "" {
				var old string
				_ = json.Unmarshal(m[rules.PercentAttrKey], &old)
				key = old
			}
			if key == "" {
				return fmt.Errorf("--percent %s: give --key ATTRIBUTE, the request attribute whose values are hashed (tenant_id, user_id, …)", *r.Percent)
			}
			p, _ := json.Marshal(*r.Percent)
			k, _ := json.Marshal(key)
			m[rules.PercentKey], m[rules.PercentAttrKey] = p, k
		} else if r.PercentKey != "" {
			if _, ok := m[rules.PercentKey]; !ok {
				return fmt.Errorf("--key %s without --percent: the version has no $percent", r.PercentKey)
			}
			k, _ := json.Marshal(r.PercentKey)
			m[rules.PercentAttrKey] = k
		}
		b, err := json.Marshal(m)
		v.RoutingRules = b
		return err
	})
}

// VersionSpec is a version row's definition.
type VersionSpec struct {
	Version, Subject string
	TimeoutMS, Retry int // 0: the extension's
	Enabled          bool
	Config, Metadata json.RawMessage
	RoutingRules     json.RawMessage
}

// AddVersion adds (or replaces) a version row.
func AddVersion(s VersionSpec) Op {
	return exists(func(e *cache.Extension) error {
		if s.Subject == "" {
			return fmt.Errorf("version %s: --subject is required", s.Version)
		}
		v := cache.Version{Version: s.Version, Subject: s.Subject, TimeoutMS: s.TimeoutMS, Retry: s.Retry, Enabled: s.Enabled,
			Config: s.Config, Metadata: s.Metadata, RoutingRules: s.RoutingRules}
		if v.TimeoutMS == 0 {
			v.TimeoutMS = e.TimeoutMS
		}
		if s.Retry < 0 {
			v.Retry = e.Retry
		}
		e.Versions = slices.DeleteFunc(e.Versions, func(x cache.Version) bool { return x.Version == s.Version })
		e.Versions = append(e.Versions, v)
		return nil
	})
}

// RemoveVersion deletes a version row.
func RemoveVersion(ver string) Op {
	return exists(func(e *cache.Extension) error {
		n := len(e.Versions)
		e.Versions = slices.DeleteFunc(e.Versions, func(x cache.Version) bool { return x.Version == ver })
		if len(e.Versions) == n {
			return fmt.Errorf("version %q: no such version (has %s)", ver, versionList(e))
		}
		return nil
	})
}

// SetVersionEnabled enables or disables one version row (a disabled version is never selected).
func SetVersionEnabled(ver string, on bool) Op {
	return exists(func(e *cache.Extension) error {
		for i := range e.Versions {
			if e.Versions[i].Version == ver {
				e.Versions[i].Enabled = on
				return nil
			}
		}
		return fmt.Errorf("version %q: no such version (has %s)", ver, versionList(e))
	})
}

func versionList(e *cache.Extension) string {
	if len(e.Versions) == 0 {
		return "none"
	}
	var vs []string
	for _, v := range e.Versions {
		vs = append(vs, v.Version)
	}
	return strings.Join(vs, ", ")
}

// AddInstance adds (or replaces) an instance.
func AddInstance(in cache.Instance) Op {
	return exists(func(e *cache.Extension) error {
		if in.Subject == "" {
			return fmt.Errorf("instance %s: --subject is required", in.InstanceID)
		}
		e.Instances = slices.DeleteFunc(e.Instances, func(x cache.Instance) bool { return x.InstanceID == in.InstanceID })
		e.Instances = append(e.Instances, in)
		return nil
	})
}

// RemoveInstance deletes an instance.
func RemoveInstance(id string) Op {
	return exists(func(e *cache.Extension) error {
		n := len(e.Instances)
		e.Instances = slices.DeleteFunc(e.Instances, func(x cache.Instance) bool { return x.InstanceID == id })
		if len(e.Instances) == n {
			return fmt.Errorf("instance %q: no such instance", id)
		}
		return nil
	})
}

// SetInstanceEnabled enables or disables one instance.
func SetInstanceEnabled(id string, on bool) Op {
	return exists(func(e *cache.Extension) error {
		for i := range e.Instances {
			if e.Instances[i].InstanceID == id {
				e.Instances[i].Enabled = on
				return nil
			}
		}
		return fmt.Errorf("instance %q: no such instance", id)
	})
}

func atoi(name, s string) (int, error) {
	var n int
	if _, err := fmt.Sscan(s, &n); err != nil || fmt.Sprint(n) != s {
		return 0, fmt.Errorf("%s=%s: not an integer", name, s)
	}
	return n, nil
}

func atob(name, s string) (bool, error) {
	switch s {
	case "true":
		return true, nil
	case "false":
		return false, nil
	}
	return false, fmt.Errorf("%s=%s: want true or false", name, s)
}

// object checks that s is one JSON object and returns it.
func object(name, s string) (json.RawMessage, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal([]byte(s), &m); err != nil || m == nil {
		return nil, fmt.Errorf("%s=%s: not a JSON object", name, s)
	}
	return json.RawMessage(s), nil
}

// Object is object for flags.
func Object(name, s string) (json.RawMessage, error) { return object(name, s) }
