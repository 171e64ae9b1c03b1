// Package changelog owns reading the registry's change log (extension_audit_log joined
// to registry_revisions): turning its rows into protocol changes, replaying them onto an
// aggregate without validation, the history of changes (who, when, which revision), an
// aggregate as it was at any revision, and the difference between two revisions.
package changelog

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/beamline/registry-syncer/cache"
)

// ToChange turns one change-log row into a protocol change, re-encoding the row to the
// snapshot's fields only (timestamps and authors are not snapshot data).
func ToChange(entity, id, key, action string, newValues []byte) (cache.Change, error) {
	kind := map[string]string{"extension": cache.KindExtension, "version": cache.KindVersion,
		"instance": cache.KindInstance, "aggregate": cache.KindAggregate}[entity]
	if kind == "" {
		return cache.Change{}, fmt.Errorf("unknown entity %q", entity)
	}
	ch := cache.Change{Kind: kind, ID: id, Key: key}
	if action == "delete" || len(newValues) == 0 || string(newValues) == "null" {
		ch.Op = cache.OpDelete
		return ch, nil
	}
	ch.Op = cache.OpPut
	var v any
	switch kind {
	case cache.KindExtension:
		var e cache.Extension
		if err := json.Unmarshal(newValues, &e); err != nil {
			return ch, fmt.Errorf("extension %q: %w", id, err)
		}
		e.Versions, e.Instances = nil, nil
		v = extensionFields(e)
	case cache.KindVersion:
		var x cache.Version
		if err := json.Unmarshal(newValues, &x); err != nil {
			return ch, fmt.Errorf("version %q/%q: %w", id, key, err)
		}
		v = x
	case cache.KindInstance:
		var x cache.Instance
		if err := json.Unmarshal(newValues, &x); err != nil {
			return ch, fmt.Errorf("instance %q/%q: %w", id, key, err)
		}
		v = x
	case cache.KindAggregate:
		var e cache.Extension
		if err := json.Unmarshal(newValues, &e); err != nil {
			return ch, fmt.Errorf("aggregate %q: %w", id, err)
		}
		v = e
	}
	raw, err := json.Marshal(v)
	if err != nil {
		return ch, err
	}
	ch.Value = raw
	return ch, nil
}

// extensionFields is an extension's own fields, as carried by a "put extension" change.
type extensionFieldsDoc struct {
	ID        string          `json:"id"`
	Type      string          `json:"type"`
	Subject   string          `json:"subject"`
	TimeoutMS int             `json:"timeout_ms"`
	Retry     int             `json:"retry"`
	Enabled   bool            `json:"enabled"`
	Version   string          `json:"version"`
	Config    json.RawMessage `json:"config"`
	Metadata  json.RawMessage `json:"metadata"`
	// AutoDisabled is the syncer's automatic disable (omitted when false, as in §3.1).
	AutoDisabled bool `json:"auto_disabled,omitempty"`
}

func extensionFields(e cache.Extension) extensionFieldsDoc {
	return extensionFieldsDoc{ID: e.ID, Type: e.Type, Subject: e.Subject, TimeoutMS: e.TimeoutMS, Retry: e.Retry,
		Enabled: e.Enabled, Version: e.Version, Config: e.Config, Metadata: e.Metadata, AutoDisabled: e.AutoDisabled}
}

// Replay applies one change to an aggregate as the database did, without validating
// anything: *e is the aggregate (nil: no such extension) and becomes the result.
func Replay(e **cache.Extension, c cache.Change) error {
	switch {
	case c.Op == cache.OpDelete && (c.Kind == cache.KindExtension || c.Kind == cache.KindAggregate):
		*e = nil
	case c.Op == cache.OpPut && c.Kind == cache.KindAggregate:
		var x cache.Extension
		if err := json.Unmarshal(c.Value, &x); err != nil {
			return fmt.Errorf("decode aggregate: %w", err)
		}
		*e = &x
	case c.Op == cache.OpPut && c.Kind == cache.KindExtension:
		var x cache.Extension
		if err := json.Unmarshal(c.Value, &x); err != nil {
			return fmt.Errorf("decode extension: %w", err)
		}
		if *e != nil {
			x.Versions, x.Instances = (*e).Versions, (*e).Instances
		} else {
			x.Versions, x.Instances = nil, nil
		}
		*e = &x
	case c.Kind == cache.KindVersion:
		if (*e) == nil {
			return nil // the database refuses a version of a missing extension (foreign key)
		}
		vs := slices.DeleteFunc(slices.Clone((*e).Versions), func(v cache.Version) bool { return v.Version == c.Key })
		if c.Op == cache.OpPut {
			var v cache.Version
			if err := json.Unmarshal(c.Value, &v); err != nil {
				return fmt.Errorf("decode version: %w", err)
			}
			vs = append(vs, v)
			slices.SortFunc(vs, func(x, y cache.Version) int { return strings.Compare(x.Version, y.Version) })
		}
		(*e).Versions = vs
	case c.Kind == cache.KindInstance:
		if (*e) == nil {
			return nil
		}
		ins := slices.DeleteFunc(slices.Clone((*e).Instances), func(in cache.Instance) bool { return in.InstanceID == c.Key })
		if c.Op == cache.OpPut {
			var in cache.Instance
			if err := json.Unmarshal(c.Value, &in); err != nil {
				return fmt.Errorf("decode instance: %w", err)
			}
			ins = append(ins, in)
			slices.SortFunc(ins, func(x, y cache.Instance) int { return strings.Compare(x.InstanceID, y.InstanceID) })
		}
		(*e).Instances = ins
	default:
		return fmt.Errorf("unknown change %s %s", c.Op, c.Kind)
	}
	return nil
}
