package rules

import (
	"fmt"
	"strings"
)

// Rule is one rule of one column: its name, what it says, and the SQL expression of the
// CHECK constraint <table>_<column>_<name> that enforces it in the database.
type Rule struct {
	Name        string
	Description string
	// SQL is the CHECK expression; "" when the database enforces the rule by its types
	// (valid UTF-8: the database encoding; U+0000: jsonb and text cannot hold it).
	SQL string
	// Migration is the migration that created the constraint: 1 for the ones of
	// 00001_registry.sql kept as they are, 5 for the ones 00005_rules.sql adds, 10 for the
	// ones 00010_rollout_rules.sql adds (RolloutMigration).
	Migration int
}

// Column is a column of a registry table and its rules, in the order the database checks
// them (by constraint name), which is the order every gate reports them in.
type Column struct {
	Table, Column string
	Rules         []Rule
}

// Constraint is the name of the CHECK constraint of rule r on c.
func (c Column) Constraint(r Rule) string {
	col := c.Column
	if r.Name == RuleHealth {
		col = "" // extension_instances_health_…: the name in 00001 says health, not health_status
	}
	if col == "" {
		return c.Table + "_" + r.Name
	}
	return c.Table + "_" + col + "_" + r.Name
}

// forbiddenClass renders Forbidden as the inside of a bracket expression; esc writes one
// code point.
func forbiddenClass(esc func(rune) string) string {
	var b strings.Builder
	for _, g := range Forbidden {
		b.WriteString(esc(g.Lo))
		if g.Hi != g.Lo {
			if g.Hi > g.Lo+1 {
				b.WriteByte('-')
			}
			b.WriteString(esc(g.Hi))
		}
	}
	return b.String()
}

// sqlForbidden is the bracket expression of forbidden characters for PostgreSQL's
// regular expressions (\uXXXX escapes; text never holds U+0000, so the class starts at
// U+0001, since the pattern itself cannot contain a NUL either).
func sqlForbidden() string {
	return "[" + forbiddenClass(func(r rune) string {
		if r == 0 {
			r = 1
		}
		return fmt.Sprintf(`\u%04x`, r)
	}) + "]"
}

// sqlSlowNumbers finds the numbers of a document that are not integers within ±2^53
// (which every double holds exactly).
const sqlSlowNumbers = `strict $.** ? (@.type() == "number" && (@.floor() != @ || @ > 9007199254740992 || @ < -9007199254740992))`

const (
	sqlTokensVN = `^[^.*>]+(\.[^.*>]+)*\.v[0-9]+$`
	sqlTokens   = `^[^.*>]+(\.[^.*>]+)*$`
)

func maxBytes(col string, n int) Rule {
	return Rule{Name: RuleMaxBytes(n), Description: fmt.Sprintf("at most %d bytes of UTF-8", n),
		SQL: fmt.Sprintf("octet_length(%s) <= %d", col, n), Migration: 5}
}

func noSpaceControl(col string) Rule {
	return Rule{Name: RuleNoSpaceControl,
		Description: "no control character (U+0000–U+001F, U+007F–U+009F) and no whitespace (Unicode White_Space: U+0009–U+000D, U+0020, U+0085, U+00A0, U+1680, U+2000–U+200A, U+2028, U+2029, U+202F, U+205F, U+3000)",
		SQL:         fmt.Sprintf("%s !~ '%s'", col, sqlForbidden()), Migration: 5}
}

func utf8Rule() Rule {
	return Rule{Name: RuleUTF8, Description: "valid UTF-8 (the database's encoding)"}
}

func subject(table string, versioned bool) Column {
	r := Rule{Name: RuleSubject, Description: "a NATS subject: tokens separated by '.', none empty, no wildcard '*' or '>'",
		SQL: "subject ~ '" + sqlTokens + "'", Migration: 5}
	if versioned {
		r = Rule{Name: RuleSubjectVN, Description: "a NATS subject: tokens separated by '.', none empty, no wildcard '*' or '>', the last one v<digits>",
			SQL: "subject ~ '" + sqlTokensVN + "'", Migration: 5}
	}
	return Column{table, "subject", []Rule{maxBytes("subject", MaxSubjectBytes), r, noSpaceControl("subject"), utf8Rule()}}
}

func version(table string) Column {
	return Column{table, "version", []Rule{
		maxBytes("version", MaxVersionBytes),
		{Name: RuleNotEmpty, Description: "not empty", SQL: "version <> ''", Migration: 1},
		noSpaceControl("version"), utf8Rule(),
	}}
}

func between(col string, lo, hi int, name string) Rule {
	return Rule{Name: name, Description: fmt.Sprintf("an integer from %d to %d", lo, hi),
		SQL: fmt.Sprintf("%s BETWEEN %d AND %d", col, lo, hi), Migration: 1}
}

func document(table, col string) Column {
	return Column{table, col, []Rule{
		{Name: RuleObject, Description: "a JSON object", SQL: fmt.Sprintf("jsonb_typeof(%s) = 'object'", col), Migration: 1},
		{Name: RuleNesting, Description: fmt.Sprintf("objects and arrays nested at most %d levels deep (the document is level 1)", MaxJSONNesting),
			SQL: fmt.Sprintf("registry_json_nesting_ok(%s)", col), Migration: 5},
		{Name: RuleNumbers, Description: "every number has the value of its nearest IEEE-754 double written shortest (I-JSON): no 1e400, no 12345678901234567891",
			// Integers within ±2^53, most numbers, pass without a call of the plpgsql function.
			SQL: fmt.Sprintf("NOT jsonb_path_exists(%[1]s, '%[2]s') OR registry_json_numbers_ok(%[1]s)", col, sqlSlowNumbers), Migration: 5},
		{Name: RuleNoNUL, Description: "no U+0000 in a string or key (jsonb cannot store it)"},
	}}
}

// Columns are the rules of every registry column.
var Columns = []Column{
	{"extensions", "id", []Rule{{Name: RuleID, Description: fmt.Sprintf("1 to %d of a-z, 0-9, '_', '.', '-'", MaxIDBytes),
		SQL: fmt.Sprintf("id ~ '^[a-z0-9_.-]+$' AND length(id) <= %d", MaxIDBytes), Migration: 1}}},
	{"extensions", "type", []Rule{{Name: RuleType, Description: "one of pre, validator, post, provider",
		SQL: "type IN ('pre', 'validator', 'post', 'provider')", Migration: 1}}},
	subject("extensions", true),
	{"extensions", "timeout_ms", []Rule{between("timeout_ms", MinTimeoutMS, MaxTimeoutMS, RuleTimeout)}},
	{"extensions", "retry", []Rule{between("retry", MinRetry, MaxRetry, RuleRetry)}},
	version("extensions"),
	document("extensions", "config"),
	document("extensions", "metadata"),

	version("extension_versions"),
	subject("extension_versions", true),
	{"extension_versions", "timeout_ms", []Rule{between("timeout_ms", MinTimeoutMS, MaxTimeoutMS, RuleTimeout)}},
	{"extension_versions", "retry", []Rule{between("retry", MinRetry, MaxRetry, RuleRetry)}},
	document("extension_versions", "config"),
	document("extension_versions", "metadata"),
	{"extension_versions", "routing_rules", []Rule{{Name: RuleRoutingRules,
		Description: "a JSON object whose values are strings or arrays of strings",
		SQL:         "registry_routing_rules_valid(routing_rules)", Migration: 1},
		{Name: RuleRollout,
			Description: "reserved keys (starting with '$'): only " + PercentKey + " (a decimal string \"0\" to \"100\", at most 2 decimals) and " + PercentAttrKey + " (a request attribute name), both or neither",
			SQL:         "registry_routing_rules_rollout_ok(routing_rules)", Migration: RolloutMigration}}},

	{"extension_instances", "instance_id", []Rule{
		maxBytes("instance_id", MaxInstanceIDBytes),
		{Name: RuleNotEmpty, Description: "not empty", SQL: "instance_id <> ''", Migration: 1},
		noSpaceControl("instance_id"), utf8Rule(),
	}},
	subject("extension_instances", false),
	{"extension_instances", "weight", []Rule{between("weight", MinWeight, MaxWeight, RuleWeight)}},
	{"extension_instances", "health_status", []Rule{{Name: RuleHealth, Description: "one of healthy, degraded, unhealthy, unknown",
		SQL: "health_status IN ('healthy', 'degraded', 'unhealthy', 'unknown')", Migration: 1}}},
}

// replaced are the constraints of 00001_registry.sql that 00005_rules.sql drops (they
// counted characters, or leaned on the locale's [:space:]), with their definitions for the
// Down section.
var replaced = []struct{ table, name, check string }{
	{"extensions", "extensions_subject_nats_subject_without_wildcards_ending_vn", `subject ~ '^[^.[:space:]*>]+(\.[^.[:space:]*>]+)*\.v[0-9]+$'`},
	{"extensions", "extensions_subject_at_most_512_chars", `length(subject) <= 512`},
	{"extensions", "extensions_version_at_most_64_chars", `length(version) <= 64`},
	{"extension_versions", "extension_versions_version_at_most_64_chars", `length(version) <= 64`},
	{"extension_versions", "extension_versions_subject_nats_subject_without_wildcards_vn", `subject ~ '^[^.[:space:]*>]+(\.[^.[:space:]*>]+)*\.v[0-9]+$'`},
	{"extension_versions", "extension_versions_subject_at_most_512_chars", `length(subject) <= 512`},
	{"extension_instances", "extension_instances_instance_id_at_most_255_chars", `length(instance_id) <= 255`},
	{"extension_instances", "extension_instances_subject_nats_subject_without_wildcards", `subject ~ '^[^.[:space:]*>]+(\.[^.[:space:]*>]+)*$'`},
	{"extension_instances", "extension_instances_subject_at_most_512_chars", `length(subject) <= 512`},
}

// Find returns the column of table.column.
func Find(table, column string) (Column, bool) {
	for _, c := range Columns {
		if c.Table == table && c.Column == column {
			return c, true
		}
	}
	return Column{}, false
}
