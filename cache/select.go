package cache

import "github.com/beamline/registry-syncer/rules"

// rule is one parsed routing rule: the attribute key and its accepted values.
type rule struct {
	key  string
	vals []string
}

// ruleSet is one version's parsed routing_rules: its attribute rules and its
// percentage (rules.PercentKey in buckets, -1 when absent) with the attribute
// it hashes (rules.PercentAttrKey).
type ruleSet struct {
	keys    []rule
	pct     int
	pctAttr string
}

// empty reports whether the rules select nothing by themselves: no attribute
// rule and no percentage ({} is never selected, it is the default's place).
func (rs *ruleSet) empty() bool { return len(rs.keys) == 0 && rs.pct < 0 }

// Choose picks the definition to invoke for a request with the given
// attributes (PROTOCOL.md §3.1, "Version selection" and "Rollout"), or reports
// false when the extension serves no definition to this request.
//
// The candidates are the extension's enabled versions whose routing_rules match
// the request: by their attribute rules (every non-reserved key is present in
// attrs, a string rule equals the attribute, an array rule contains it), or,
// when those do not match or there are none, by their percentage ($percent of
// the values of the attribute named by $percent_key: the request is in when
// rules.PercentBucket(e.ID, version, attrs[$percent_key]) is below the
// percentage in hundredths). An attribute match ranks by its number of keys, a
// percentage match ranks 0; the highest rank wins, a tie goes to the newer
// version (v<N> compared numerically when both look like that, else the
// bytewise greater). Without a candidate the extension's own definition serves
// the request when the extension is enabled; a disabled extension serves only
// its candidates (it is off for everyone else). Choose does not look at
// metadata.kill_switch: the client checks it first, and it wins over this.
//
// Choose does not allocate for extensions obtained from a Snapshot (their rules
// are parsed when the snapshot is built); for other extensions the rules are
// parsed on each call.
func (e *Extension) Choose(attrs map[string]string) (VersionChoice, bool) {
	best, bestRank, bestBucket := -1, -1, -1
	for i := range e.Versions {
		v := &e.Versions[i]
		if !v.Enabled {
			continue
		}
		rs := &v.rules
		if !v.parsed {
			loose := looseRules(v.RoutingRules)
			rs = &loose
		}
		if rs.empty() {
			continue
		}
		rank, bucket := -1, -1
		if len(rs.keys) > 0 && matches(rs.keys, attrs) {
			rank = len(rs.keys)
		} else if rs.pct >= 0 {
			if val, ok := attrs[rs.pctAttr]; ok {
				if b := rules.PercentBucket(e.ID, v.Version, val); b < rs.pct {
					rank, bucket = 0, b
				}
			}
		}
		if rank < 0 || rank < bestRank {
			continue
		}
		if best < 0 || rank > bestRank || newer(v.Version, e.Versions[best].Version) {
			best, bestRank, bestBucket = i, rank, bucket
		}
	}
	if best < 0 {
		c := VersionChoice{Version: e.Version, Subject: e.Subject, TimeoutMS: e.TimeoutMS, Retry: e.Retry, Config: e.Config,
			Match: MatchDefault, Bucket: -1}
		return c, e.Enabled
	}
	v := &e.Versions[best]
	c := VersionChoice{Version: v.Version, Subject: v.Subject, TimeoutMS: v.TimeoutMS, Retry: v.Retry, Config: v.Config,
		Match: MatchRules, Bucket: -1}
	if bestBucket >= 0 {
		c.Match, c.Bucket = MatchPercent, bestBucket
	}
	return c, true
}

// SelectVersion is Choose without its verdict: the definition Choose picks, or
// the extension's own definition when Choose reports false (a disabled
// extension's default, which must not be invoked). Use Choose to invoke.
func (e *Extension) SelectVersion(attrs map[string]string) VersionChoice {
	c, _ := e.Choose(attrs)
	return c
}

// Serves reports whether the extension can serve any request: it is enabled,
// or one of its enabled versions has routing rules (a disabled extension in
// rollout). Snapshot.Lookup and ByType return exactly these extensions.
func (e *Extension) Serves() bool {
	if e.Enabled {
		return true
	}
	for i := range e.Versions {
		v := &e.Versions[i]
		if !v.Enabled {
			continue
		}
		if v.parsed {
			if !v.rules.empty() {
				return true
			}
		} else if rs := looseRules(v.RoutingRules); !rs.empty() {
			return true
		}
	}
	return false
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
func looseRules(raw []byte) ruleSet {
	if len(raw) == 0 {
		return ruleSet{pct: -1}
	}
	var p jsonParser
	rs, bad := parseRules(&p, raw)
	if bad != nil {
		return ruleSet{pct: -1}
	}
	return rs
}
