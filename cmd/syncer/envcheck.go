package main

import (
	"log/slog"
	"slices"
	"strings"
)

// unknownVariable is an EXTENSION_REGISTRY_* variable of the environment that no knob
// reads (a typo, or a name from another version), with the known name closest to it.
type unknownVariable struct {
	Name    string
	Closest string
}

// unknownVariables lists the variables of environ ("KEY=value" entries, as os.Environ
// gives them) that carry the prefix but are not in spec, sorted by name.
func unknownVariables(environ []string) []unknownVariable {
	var known []string
	for _, v := range variables(&spec{}) {
		known = append(known, v.Key)
	}
	var out []unknownVariable
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(strings.ToUpper(name), envPrefix+"_") || slices.Contains(known, name) {
			continue
		}
		u := unknownVariable{Name: name}
		best := -1
		for _, k := range known {
			if d := nameDistance(strings.ToUpper(name), k); best < 0 || d < best {
				best, u.Closest = d, k
			}
		}
		out = append(out, u)
	}
	slices.SortFunc(out, func(a, b unknownVariable) int { return strings.Compare(a.Name, b.Name) })
	return slices.CompactFunc(out, func(a, b unknownVariable) bool { return a.Name == b.Name })
}

// warnUnknownVariables logs one warning per unknown variable: it is ignored, and the
// closest name is probably what was meant.
func warnUnknownVariables(log *slog.Logger, environ []string) {
	for _, u := range unknownVariables(environ) {
		log.Warn("config: unknown variable ignored: "+u.Name+" (did you mean "+u.Closest+"?)",
			slog.String("variable", u.Name), slog.String("closest", u.Closest))
	}
}

// nameDistance is the Levenshtein distance, except that a name that is the other cut at
// an underscore (SYNC_INTERVAL for SYNC_INTERVAL_SECONDS) counts as one edit: a dropped
// or extra word is the likeliest slip.
func nameDistance(a, b string) int {
	short, long := a, b
	if len(short) > len(long) {
		short, long = long, short
	}
	if strings.HasPrefix(long, short+"_") {
		return 1
	}
	return levenshtein(a, b)
}

// levenshtein is the edit distance between a and b (insertions, deletions and
// substitutions of bytes: the names are ASCII).
func levenshtein(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
