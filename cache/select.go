package cache

import "github.com/beamline/registry-syncer/rules"

// rule is one parsed routing rule: the attribute key and its accepted values.
type rule struct {
	key  string
	vals []string
}

// SelectVersion picks the definition to invoke for a request with the given
// attributes. Candidates are the extension's enabled versions whose
// routing_rules are non-empty and match attrs: every rule key must be present
// in attrs, a string rule must equal the attribute and an array rule must
// contain it. The candidate with the most rule keys wins; ties go to the
// newer version (v<N> compared numerically when both look like that, else the
// bytewise greater). Without a candidate, the extension's own definition is
// returned.
//
// SelectVersion does not allocate for extensions obtained from a Snapshot (their
// rules are parsed when the snapshot is built); for other extensions the rules
// are parsed on each call.
func (e *Extension) SelectVersion(attrs map[string]string) VersionChoice {
	best := -1
	bestN := 0
	for i := range e.Versions {
		v := &e.Versions[i]
		if !v.Enabled {
			continue
		}
		rules := v.rules
		if !v.parsed {
			rules = looseRules(v.RoutingRules)
		}
		if len(rules) == 0 || len(rules) < bestN || !matches(rules, attrs) {
			continue
		}
		if best < 0 || len(rules) > bestN || newer(v.Version, e.Versions[best].Version) {
			best, bestN = i, len(rules)
		}
	}
	if best < 0 {
		return VersionChoice{Version: e.Version, Subject: e.Subject, TimeoutMS: e.TimeoutMS, Retry: e.Retry, Config: e.Config}
	}
	v := &e.Versions[best]
	return VersionChoice{Version: v.Version, Subject: v.Subject, TimeoutMS: v.TimeoutMS, Retry: v.Retry, Config: v.Config}
}

func matches(rules []rule, attrs map[string]string) bool {
	for i := range rules {
		r := &rules[i]
		got, ok := attrs[r.key]
		if !ok {
			return false
		}
		found := false
		for _, want := range r.vals {
			if got == want {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// newer reports whether version a is newer than b: numerically for v<N>
// versions, bytewise otherwise.
func newer(a, b string) bool {
	if rules.IsVTag(a) && rules.IsVTag(b) {
		x, y := trimZeros(a[1:]), trimZeros(b[1:])
		if len(x) != len(y) {
			return len(x) > len(y)
		}
		if x != y {
			return x > y
		}
	}
	return a > b
}

func trimZeros(s string) string {
	for len(s) > 1 && s[0] == '0' {
		s = s[1:]
	}
	return s
}

// looseRules parses routing rules of a version that did not go through
// normalization; invalid rules match nothing.
func looseRules(raw []byte) []rule {
	if len(raw) == 0 {
		return nil
	}
	var p jsonParser
	rules, msg := parseRules(&p, raw)
	if msg != "" {
		return nil
	}
	return rules
}
