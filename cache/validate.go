package cache

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/beamline/registry-syncer/rules"
)

// ValidationError is one broken rule of one extension. It wraps ErrInvalid.
// Field is the JSON path of the field; versions and instances are addressed by
// their version / instance_id (by "#<position>" when that is empty). Its
// message reads like:
//
//	extension "pii_guard": timeout_ms must be between 10 and 5000 (got 7)
type ValidationError struct {
	ID    string // extension id
	Field string // JSON path of the field, e.g. "versions[v2].timeout_ms" or "instances[i1].weight"
	Rule  string // the broken rule and the offending value
	// Name is the broken rule's name in package rules, the suffix of the CHECK constraint
	// <table>_<column>_<Name> that refuses the same value in the database; "" for
	// problems of the document itself (a duplicate version, malformed JSON).
	Name string
}

func (e *ValidationError) Error() string {
	return fmt.Sprintf("extension %q: %s %s", e.ID, e.Field, e.Rule)
}

// Unwrap returns ErrInvalid.
func (e *ValidationError) Unwrap() error { return ErrInvalid }

// Validate checks every rule on e and its versions and instances, and returns
// all problems found (joined; each is a *ValidationError wrapping ErrInvalid),
// or nil. Empty or null config, metadata and routing_rules are valid (they
// normalize to {}); versions and instances may be in any order. e is not
// modified.
func (e *Extension) Validate() error {
	c := cloneExtension(e)
	n := getNormalizer()
	defer putNormalizer(n)
	return n.normalize(&c, false)
}

// cloneExtension copies e with its own Versions and Instances backing arrays.
func cloneExtension(e *Extension) Extension {
	c := *e
	c.Versions = slices.Clone(e.Versions)
	c.Instances = slices.Clone(e.Instances)
	return c
}

// normalizer validates and normalizes extensions and computes their
// canonical encoding. It holds reusable scratch buffers; one per goroutine.
type normalizer struct {
	p    jsonParser
	ar   arena
	errs []error
	buf  []byte     // canonical encoding scratch
	jcs  jsonParser // re-sorts raw fields for the v2 encoding (utf16 set)
}

var normalizers = sync.Pool{New: func() any { return new(normalizer) }}

func getNormalizer() *normalizer { return normalizers.Get().(*normalizer) }

func putNormalizer(n *normalizer) {
	// Do not keep the scratch of an unusually large extension alive.
	if cap(n.buf) > 1<<20 {
		n.buf = nil
	}
	if cap(n.ar.buf) > 1<<20 || cap(n.p.tmp) > 1<<20 || cap(n.p.str) > 1<<20 || cap(n.p.skip) > 1<<20 {
		n.ar.buf, n.p.tmp, n.p.str, n.p.skip = nil, nil, nil, nil
	}
	if cap(n.jcs.tmp) > 1<<20 || cap(n.jcs.str) > 1<<20 || cap(n.jcs.keys) > 1<<20 {
		n.jcs = jsonParser{}
	}
	n.errs = n.errs[:0]
	normalizers.Put(n)
}

// Raw JSON fields of an aggregate addressed by (version index, field); version
// index -1 means the extension itself.
const (
	fConfig uint8 = iota
	fMetadata
	fRules
)

type rawFix struct {
	vi         int32
	f          uint8
	start, end int32 // in arena.buf; start < 0 means emptyObject
}

// arena collects the canonical raw JSON fields of one extension so that they
// are copied into a single allocation.
type arena struct {
	buf []byte
	fix []rawFix
}

func (a *arena) reset() {
	a.buf = a.buf[:0]
	a.fix = a.fix[:0]
}

func rawField(e *Extension, vi int32, f uint8) *json.RawMessage {
	if vi < 0 {
		if f == fConfig {
			return &e.Config
		}
		return &e.Metadata
	}
	v := &e.Versions[vi]
	switch f {
	case fConfig:
		return &v.Config
	case fMetadata:
		return &v.Metadata
	}
	return &v.RoutingRules
}

// add records arena.buf[start:] as the value of field (vi, f).
func (a *arena) add(vi int32, f uint8, start int) {
	if start < 0 {
		a.fix = append(a.fix, rawFix{vi: vi, f: f, start: -1, end: -1})
		return
	}
	a.fix = append(a.fix, rawFix{vi: vi, f: f, start: int32(start), end: int32(len(a.buf))})
}

// materialize copies the collected fields into one new block and stores them
// into e, then resets the arena.
func (a *arena) materialize(e *Extension) {
	var block []byte
	if len(a.buf) > 0 {
		block = make([]byte, len(a.buf))
		copy(block, a.buf)
	}
	for _, f := range a.fix {
		ptr := rawField(e, f.vi, f.f)
		if f.start < 0 {
			*ptr = emptyObject
		} else {
			*ptr = json.RawMessage(block[f.start:f.end:f.end])
		}
	}
	a.reset()
}

// path is the JSON path of a field, rendered only when a rule is broken.
type path struct {
	group string // "", "versions" or "instances"
	key   string // version or instance_id
	idx   int    // position, used when key is empty
	field string
}

func (pt path) with(field string) path {
	pt.field = field
	return pt
}

func (pt path) String() string {
	if pt.group == "" {
		return pt.field
	}
	k := pt.key
	if k == "" {
		k = "#" + strconv.Itoa(pt.idx)
	}
	s := pt.group + "[" + k + "]"
	if pt.field != "" {
		s += "." + pt.field
	}
	return s
}

func (n *normalizer) fail(id string, pt path, format string, args ...any) {
	n.errs = append(n.errs, &ValidationError{ID: id, Field: pt.String(), Rule: fmt.Sprintf(format, args...)})
}

// broke records v, a broken rule of package rules, unless v is nil.
func (n *normalizer) broke(id string, pt path, v *rules.Violation) {
	if v != nil {
		n.errs = append(n.errs, &ValidationError{ID: id, Field: pt.String(), Rule: v.Msg, Name: v.Rule})
	}
}

func (n *normalizer) result() error {
	if len(n.errs) == 0 {
		return nil
	}
	err := errors.Join(n.errs...)
	n.errs = n.errs[:0]
	return err
}

// normalize validates e and normalizes it in place: versions and instances
// sorted, raw JSON fields canonical ({} when empty or null), routing rules
// parsed. e must be exclusively owned by the caller, including the backing
// arrays of Versions and Instances. When canon is true the raw fields are
// already canonical JSON (as produced by the decoder).
func (n *normalizer) normalize(e *Extension, canon bool) error {
	n.errs = n.errs[:0]
	n.ar.reset()
	id := e.ID
	n.checkOwn(e)

	if e.Versions == nil {
		e.Versions = []Version{}
	}
	cmpVersion := func(a, b Version) int { return strings.Compare(a.Version, b.Version) }
	if !slices.IsSortedFunc(e.Versions, cmpVersion) {
		slices.SortFunc(e.Versions, cmpVersion)
	}
	for i := range e.Versions {
		v := &e.Versions[i]
		n.checkVersion(id, i, v)
		if i > 0 && e.Versions[i-1].Version == v.Version {
			n.fail(id, path{group: "versions", key: v.Version, idx: i}, "must be unique (duplicate version %q)", v.Version)
		}
	}

	if e.Instances == nil {
		e.Instances = []Instance{}
	}
	cmpInstance := func(a, b Instance) int { return strings.Compare(a.InstanceID, b.InstanceID) }
	if !slices.IsSortedFunc(e.Instances, cmpInstance) {
		slices.SortFunc(e.Instances, cmpInstance)
	}
	for i := range e.Instances {
		in := &e.Instances[i]
		n.checkInstance(id, i, in)
		if i > 0 && e.Instances[i-1].InstanceID == in.InstanceID {
			n.fail(id, path{group: "instances", key: in.InstanceID, idx: i}, "must be unique (duplicate instance_id %q)", in.InstanceID)
		}
	}

	if canon {
		n.rawCanon(id, path{field: "config"}, &e.Config)
		n.rawCanon(id, path{field: "metadata"}, &e.Metadata)
		for i := range e.Versions {
			v := &e.Versions[i]
			pt := path{group: "versions", key: v.Version, idx: i}
			n.rawCanon(id, pt.with("config"), &v.Config)
			n.rawCanon(id, pt.with("metadata"), &v.Metadata)
			if n.rawCanon(id, pt.with("routing_rules"), &v.RoutingRules) {
				n.parseRules(id, pt.with("routing_rules"), v)
			}
		}
		return n.result()
	}

	n.rawCanonicalize(id, path{field: "config"}, &e.Config, -1, fConfig)
	n.rawCanonicalize(id, path{field: "metadata"}, &e.Metadata, -1, fMetadata)
	for i := range e.Versions {
		v := &e.Versions[i]
		pt := path{group: "versions", key: v.Version, idx: i}
		n.rawCanonicalize(id, pt.with("config"), &v.Config, int32(i), fConfig)
		n.rawCanonicalize(id, pt.with("metadata"), &v.Metadata, int32(i), fMetadata)
		n.rawCanonicalize(id, pt.with("routing_rules"), &v.RoutingRules, int32(i), fRules)
	}
	n.ar.materialize(e)
	for i := range e.Versions {
		v := &e.Versions[i]
		if v.RoutingRules != nil { // nil: canonicalization failed and was reported
			n.parseRules(id, path{group: "versions", key: v.Version, idx: i, field: "routing_rules"}, v)
		}
	}
	return n.result()
}

// normalizeOwn validates and normalizes the extension's own fields only
// (versions and instances are left alone); raw fields must be canonical.
func (n *normalizer) normalizeOwn(e *Extension) error {
	n.errs = n.errs[:0]
	n.checkOwn(e)
	n.rawCanon(e.ID, path{field: "config"}, &e.Config)
	n.rawCanon(e.ID, path{field: "metadata"}, &e.Metadata)
	return n.result()
}

// normalizeVersion validates and normalizes one version of extension id; raw
// fields must be canonical.
func (n *normalizer) normalizeVersion(id string, v *Version) error {
	n.errs = n.errs[:0]
	n.checkVersion(id, 0, v)
	pt := path{group: "versions", key: v.Version}
	n.rawCanon(id, pt.with("config"), &v.Config)
	n.rawCanon(id, pt.with("metadata"), &v.Metadata)
	if n.rawCanon(id, pt.with("routing_rules"), &v.RoutingRules) {
		n.parseRules(id, pt.with("routing_rules"), v)
	}
	return n.result()
}

// normalizeInstance validates one instance of extension id.
func (n *normalizer) normalizeInstance(id string, in *Instance) error {
	n.errs = n.errs[:0]
	n.checkInstance(id, 0, in)
	return n.result()
}

func (n *normalizer) checkOwn(e *Extension) {
	id := e.ID
	n.broke(id, path{field: "id"}, rules.ID(id))
	n.broke(id, path{field: "type"}, rules.Type(e.Type))
	n.broke(id, path{field: "subject"}, rules.Subject(e.Subject, true))
	n.broke(id, path{field: "timeout_ms"}, rules.TimeoutMS(e.TimeoutMS))
	n.broke(id, path{field: "retry"}, rules.Retry(e.Retry))
	n.broke(id, path{field: "version"}, rules.Version(e.Version))
}

func (n *normalizer) checkVersion(id string, i int, v *Version) {
	pt := path{group: "versions", key: v.Version, idx: i}
	n.broke(id, pt.with("version"), rules.Version(v.Version))
	n.broke(id, pt.with("subject"), rules.Subject(v.Subject, true))
	n.broke(id, pt.with("timeout_ms"), rules.TimeoutMS(v.TimeoutMS))
	n.broke(id, pt.with("retry"), rules.Retry(v.Retry))
}

func (n *normalizer) checkInstance(id string, i int, in *Instance) {
	pt := path{group: "instances", key: in.InstanceID, idx: i}
	n.broke(id, pt.with("instance_id"), rules.InstanceID(in.InstanceID))
	n.broke(id, pt.with("subject"), rules.Subject(in.Subject, false))
	n.broke(id, pt.with("weight"), rules.Weight(in.Weight))
	n.broke(id, pt.with("health_status"), rules.HealthStatus(in.HealthStatus))
}

func jsonKind(c byte) string {
	switch c {
	case '[':
		return "array"
	case '"':
		return "string"
	case 't', 'f':
		return "boolean"
	case 'n':
		return "null"
	case '{':
		return "object"
	}
	return "number"
}

// rawCanon normalizes a raw field that is already canonical (or empty/null)
// and reports whether it is an object.
func (n *normalizer) rawCanon(id string, pt path, raw *json.RawMessage) bool {
	r := *raw
	if len(r) == 0 || string(r) == "null" {
		*raw = emptyObject
		return true
	}
	if r[0] != '{' {
		n.broke(id, pt, &rules.Violation{Rule: rules.RuleObject, Msg: fmt.Sprintf("must be a JSON object (got %s)", jsonKind(r[0]))})
		return false
	}
	return true
}

func trimWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t' || b[0] == '\n' || b[0] == '\r') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t' || b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}

// rawCanonicalize canonicalizes a raw field into the arena, to be stored by
// arena.materialize. On failure it reports the problem and sets *raw to nil.
func (n *normalizer) rawCanonicalize(id string, pt path, raw *json.RawMessage, vi int32, f uint8) {
	r := trimWS(*raw)
	if len(r) == 0 {
		n.ar.add(vi, f, -1)
		return
	}
	start := len(n.ar.buf)
	out, err := n.p.canonicalJSON(n.ar.buf, r)
	if err != nil {
		n.ar.buf = out[:start]
		*raw = nil
		if se, ok := errors.AsType[*SyntaxError](err); ok && se.Rule != "" {
			n.broke(id, pt, &rules.Violation{Rule: se.Rule, Msg: se.Error()})
			return
		}
		n.fail(id, pt, "must be valid JSON: %v", err)
		return
	}
	c := out[start:]
	switch {
	case string(c) == "null":
		n.ar.buf = out[:start]
		n.ar.add(vi, f, -1)
	case c[0] != '{':
		n.ar.buf = out[:start]
		*raw = nil
		n.broke(id, pt, &rules.Violation{Rule: rules.RuleObject, Msg: fmt.Sprintf("must be a JSON object (got %s)", jsonKind(c[0]))})
	default:
		n.ar.buf = out
		n.ar.add(vi, f, start)
	}
}

// parseRules parses v.RoutingRules (a canonical JSON object) into v.rules.
func (n *normalizer) parseRules(id string, pt path, v *Version) {
	rs, bad := parseRules(&n.p, v.RoutingRules)
	if bad != nil {
		n.broke(id, pt, bad)
		return
	}
	v.rules = rs
	v.parsed = true
}

const rulesRule = "must be a JSON object whose values are strings or arrays of strings"

// parseRules parses a routing_rules JSON object: its attribute keys (sorted as
// written) and its reserved rollout keys (rules.Rollout). On failure it returns the
// broken rule.
func parseRules(p *jsonParser, raw []byte) (ruleSet, *rules.Violation) {
	bad := func(format string, args ...any) (ruleSet, *rules.Violation) {
		return ruleSet{}, &rules.Violation{Rule: rules.RuleRoutingRules, Msg: fmt.Sprintf(format, args...)}
	}
	rs := ruleSet{pct: -1}
	p.reset(raw)
	if err := p.expect('{'); err != nil {
		return bad("%s (%v)", rulesRule, err)
	}
	var reserved []rules.RolloutKey
	first := true
	for {
		key, ok, err := p.nextKey(&first)
		if err != nil {
			return bad("%s (%v)", rulesRule, err)
		}
		if !ok {
			break
		}
		r := rule{key: string(key)}
		isString := false
		switch c := p.peek(); c {
		case '"':
			b, err := p.stringBytes()
			if err != nil {
				return bad("%s (%v)", rulesRule, err)
			}
			r.vals = []string{string(b)}
			isString = true
		case '[':
			p.pos++
			r.vals = []string{}
			for i := 0; ; i++ {
				c := p.peek()
				if c == ']' {
					p.pos++
					break
				}
				if i > 0 {
					if err := p.expect(','); err != nil {
						return bad("%s (%v)", rulesRule, err)
					}
					c = p.peek()
				}
				if c != '"' {
					return bad("%s (key %q has a non-string array element)", rulesRule, r.key)
				}
				b, err := p.stringBytes()
				if err != nil {
					return bad("%s (%v)", rulesRule, err)
				}
				r.vals = append(r.vals, string(b))
			}
		default:
			return bad("%s (key %q has a value of type %s)", rulesRule, r.key, jsonKind(c))
		}
		if rules.IsReservedKey(r.key) {
			rk := rules.RolloutKey{Key: r.key, IsString: isString}
			if isString {
				rk.Value = r.vals[0]
			}
			reserved = append(reserved, rk)
			continue
		}
		rs.keys = append(rs.keys, r)
	}
	if err := p.end(); err != nil {
		return bad("%s (%v)", rulesRule, err)
	}
	if v := rules.Rollout(reserved); v != nil {
		return ruleSet{}, v
	}
	for _, k := range reserved {
		switch k.Key {
		case rules.PercentKey:
			rs.pct, _ = rules.ParsePercent(k.Value)
		case rules.PercentAttrKey:
			rs.pctAttr = k.Value
		}
	}
	return rs, nil
}
