// Package rules is the one definition of what a valid registry row is: every limit and
// character class that the database's CHECK constraints, the fixture loader, the router-side
// cache and the JSON Schemas enforce.
//
// The SQL of migration 00005 and the limits of the JSON Schemas are generated from this
// package (go generate ./rules; a test fails when a generated file is stale); cache/ and
// fixtures/ call its check functions. A broken rule is a *Violation whose Rule is the suffix of
// the CHECK constraint <table>_<column>_<rule> that refuses the same value in the database.
package rules

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// Limits. Lengths are in bytes of UTF-8, never in characters.
const (
	MaxIDBytes         = 255
	MaxSubjectBytes    = 512
	MaxVersionBytes    = 64
	MaxInstanceIDBytes = 255
	MinTimeoutMS       = 10
	MaxTimeoutMS       = 5000
	MinRetry           = 0
	MaxRetry           = 3
	MinWeight          = 0
	MaxWeight          = 100
	// MaxJSONNesting is the deepest nesting of objects and arrays in config, metadata and
	// routing_rules: the document itself is level 1.
	MaxJSONNesting = 256
)

// Types are the extension types, in the order the router calls them.
var Types = []string{"pre", "validator", "post", "provider"}

// HealthStatuses are the health statuses of an instance.
var HealthStatuses = []string{"healthy", "degraded", "unhealthy", "unknown"}

// Rule names: the <rule> part of the CHECK constraint <table>_<column>_<rule>.
const (
	RuleID             = "lowercase_letters_digits_underscore_dash_dot"
	RuleType           = "one_of_pre_validator_post_provider"
	RuleNotEmpty       = "not_empty"
	RuleNoSpaceControl = "without_whitespace_or_control"
	RuleSubjectVN      = "nats_subject_ending_vn"
	RuleSubject        = "nats_subject"
	RuleTimeout        = "between_10_and_5000"
	RuleRetry          = "between_0_and_3"
	RuleWeight         = "between_0_and_100"
	RuleHealth         = "health_healthy_degraded_unhealthy_unknown" // the column is health_status
	RuleObject         = "json_object"
	RuleNesting        = "nesting_at_most_256"
	RuleNumbers        = "numbers_round_trip_doubles"
	RuleNoNUL          = "strings_without_nul" // enforced by jsonb itself in the database
	RuleRoutingRules   = "values_strings_or_arrays"
	RuleUTF8           = "valid_utf8" // enforced by the database encoding
)

// RuleMaxBytes is the rule name of a byte limit: at_most_<n>_bytes.
func RuleMaxBytes(n int) string { return fmt.Sprintf("at_most_%d_bytes", n) }

// Violation is one broken rule of one value.
type Violation struct {
	Rule string // the rule name (see the Rule constants)
	Msg  string // what is wrong, e.g. `must be at most 512 bytes (got 612)`
}

func (v *Violation) Error() string { return v.Msg }

func violation(rule, format string, args ...any) *Violation {
	return &Violation{Rule: rule, Msg: fmt.Sprintf(format, args...)}
}

// A Range is an inclusive range of code points.
type Range struct{ Lo, Hi rune }

// Forbidden are the code points no subject, version or instance_id may contain: the control
// characters (Unicode category Cc: U+0000–U+001F, U+007F–U+009F) and the whitespace
// (Unicode property White_Space: U+0009–U+000D, U+0020, U+0085, U+00A0, U+1680,
// U+2000–U+200A, U+2028, U+2029, U+202F, U+205F, U+3000), merged into ranges. A test checks
// it against unicode.IsControl and unicode.IsSpace over every code point.
var Forbidden = []Range{
	{0x0000, 0x0020},
	{0x007f, 0x00a0},
	{0x1680, 0x1680},
	{0x2000, 0x200a},
	{0x2028, 0x2029},
	{0x202f, 0x202f},
	{0x205f, 0x205f},
	{0x3000, 0x3000},
}

// IsForbidden reports whether r is a control character or whitespace.
func IsForbidden(r rune) bool {
	if r > 0x3000 {
		return false
	}
	for _, g := range Forbidden {
		if r < g.Lo {
			return false
		}
		if r <= g.Hi {
			return true
		}
	}
	return false
}

func firstForbidden(s string) (rune, bool) {
	for _, r := range s {
		if r < 0x80 {
			if r <= 0x20 || r == 0x7f {
				return r, true
			}
			continue
		}
		if IsForbidden(r) {
			return r, true
		}
	}
	return 0, false
}

// idPattern spells the id rule.
var idPattern = fmt.Sprintf("^[a-z0-9_.-]{1,%d}$", MaxIDBytes)

// ID checks an extension id: 1 to 255 of a-z, 0-9, '_', '.', '-'.
func ID(id string) *Violation {
	if len(id) > MaxIDBytes {
		return violation(RuleID, "must match %s (got %d bytes)", idPattern, len(id))
	}
	for i := 0; i <= len(id); i++ {
		if i == len(id) {
			if id == "" {
				return violation(RuleID, "must match %s (got %q)", idPattern, id)
			}
			break
		}
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-') {
			return violation(RuleID, "must match %s (got %q)", idPattern, id)
		}
	}
	return nil
}

// Type checks an extension type.
func Type(t string) *Violation {
	for _, s := range Types {
		if t == s {
			return nil
		}
	}
	return violation(RuleType, "must be one of %s (got %q)", strings.Join(Types, ", "), t)
}

// HealthStatus checks an instance's health status.
func HealthStatus(h string) *Violation {
	for _, s := range HealthStatuses {
		if h == s {
			return nil
		}
	}
	return violation(RuleHealth, "must be one of %s (got %q)", strings.Join(HealthStatuses, ", "), h)
}

// Between checks an integer against an inclusive range; rule names it.
func Between(v, lo, hi int, rule string) *Violation {
	if v < lo || v > hi {
		return violation(rule, "must be between %d and %d (got %d)", lo, hi, v)
	}
	return nil
}

// TimeoutMS checks a call timeout.
func TimeoutMS(v int) *Violation { return Between(v, MinTimeoutMS, MaxTimeoutMS, RuleTimeout) }

// Retry checks a retry count.
func Retry(v int) *Violation { return Between(v, MinRetry, MaxRetry, RuleRetry) }

// Weight checks an instance weight.
func Weight(v int) *Violation { return Between(v, MinWeight, MaxWeight, RuleWeight) }

// text checks the rules versions and instance ids share: valid UTF-8, at most max bytes,
// no control characters or whitespace. The order is the order the database reports them
// in (it checks a row's constraints by name), so every gate names the same rule first.
func text(s string, max int) *Violation {
	switch {
	case !utf8.ValidString(s):
		return violation(RuleUTF8, "must be valid UTF-8")
	case len(s) > max:
		return violation(RuleMaxBytes(max), "must be at most %d bytes (got %d)", max, len(s))
	}
	if r, bad := firstForbidden(s); bad {
		return violation(RuleNoSpaceControl, "must not contain whitespace or control characters (got %U in %q)", r, s)
	}
	return nil
}

// Version checks a version string: not empty, at most 64 bytes, no whitespace or control
// characters.
func Version(v string) *Violation {
	if v == "" {
		return violation(RuleNotEmpty, "must not be empty")
	}
	return text(v, MaxVersionBytes)
}

// InstanceID checks an instance id: not empty, at most 255 bytes, no whitespace or control
// characters.
func InstanceID(id string) *Violation {
	if id == "" {
		return violation(RuleNotEmpty, "must not be empty")
	}
	return text(id, MaxInstanceIDBytes)
}

// Subject checks a NATS subject: at most 512 bytes, tokens separated by '.', none empty,
// no wildcard '*' or '>', no whitespace or control characters; a versioned subject (an
// extension's or a version's) ends with a token v<digits>.
func Subject(s string, versioned bool) *Violation {
	switch {
	case !utf8.ValidString(s):
		return violation(RuleUTF8, "must be valid UTF-8")
	case len(s) > MaxSubjectBytes:
		return violation(RuleMaxBytes(MaxSubjectBytes), "must be at most %d bytes (got %d)", MaxSubjectBytes, len(s))
	}
	rule := RuleSubject
	if versioned {
		rule = RuleSubjectVN
	}
	switch {
	case s == "":
		return violation(rule, "must not be empty")
	case strings.ContainsAny(s, "*>"):
		return violation(rule, "must be a valid NATS subject: wildcards '*' and '>' are not allowed (got %q)", s)
	case s[0] == '.' || s[len(s)-1] == '.' || strings.Contains(s, ".."):
		return violation(rule, "must be a valid NATS subject: tokens must not be empty (got %q)", s)
	}
	if versioned {
		dot := strings.LastIndexByte(s, '.')
		if dot < 0 || !IsVTag(s[dot+1:]) {
			return violation(rule, `must end with ".v<digits>" (got %q)`, s)
		}
	}
	if _, bad := firstForbidden(s); bad {
		return violation(RuleNoSpaceControl, "must be a valid NATS subject: whitespace and control characters are not allowed (got %q)", s)
	}
	return nil
}

// IsVTag reports whether s is a version tag: v<digits>.
func IsVTag(s string) bool {
	if len(s) < 2 || s[0] != 'v' {
		return false
	}
	for i := 1; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}
