package rules

import (
	"fmt"
	"strings"
)

// Reserved routing_rules keys (PROTOCOL.md §3.1, "Rollout"). Every key of a version's
// routing_rules that starts with '$' is reserved: only these two are defined, any other is
// refused, so that a later protocol version can give one a meaning without an old router
// reading it as a request attribute.
const (
	// PercentKey holds the share of request keys a version serves: a decimal string from
	// "0" to "100" with at most two digits after the point ("5", "12.5", "0.25").
	PercentKey = "$percent"
	// PercentAttrKey names the request attribute whose value is hashed into a bucket
	// (tenant_id, user_id, …). Required with PercentKey, and only with it.
	PercentAttrKey = "$percent_key"
	// PercentBuckets is the number of buckets a key hashes into: one per 0.01 %.
	PercentBuckets = 10000
)

// RuleRollout is the rule name of the reserved routing_rules keys: the CHECK constraint
// extension_versions_routing_rules_rollout_keys of migration 00010.
const RuleRollout = "rollout_keys"

// RolloutMigration is the migration that adds the rollout rule's constraint.
const RolloutMigration = 10

// IsReservedKey reports whether a routing_rules key is reserved (starts with '$').
func IsReservedKey(k string) bool { return strings.HasPrefix(k, "$") }

// ParsePercent parses the value of PercentKey into buckets out of PercentBuckets
// ("25" is 2500, "0.5" is 50, "100" is 10000).
func ParsePercent(s string) (int, *Violation) {
	bad := func() (int, *Violation) {
		return 0, violation(RuleRollout, `%s must be a decimal string from "0" to "100" with at most 2 digits after the point (got %q)`, PercentKey, s)
	}
	ip, fp, dot := strings.Cut(s, ".")
	if ip == "" || len(ip) > 3 || (dot && (fp == "" || len(fp) > 2)) {
		return bad()
	}
	n := 0
	for _, c := range ip {
		if c < '0' || c > '9' {
			return bad()
		}
		n = n*10 + int(c-'0')
	}
	f := 0
	for i := 0; i < 2; i++ {
		f *= 10
		if i < len(fp) {
			c := fp[i]
			if c < '0' || c > '9' {
				return bad()
			}
			f += int(c - '0')
		}
	}
	bp := n*100 + f
	if bp > PercentBuckets {
		return bad()
	}
	return bp, nil
}

// RolloutKey is one reserved key of a routing_rules object as the rollout rule sees it:
// IsString tells a string value from an array.
type RolloutKey struct {
	Key      string
	IsString bool
	Value    string // the string value (IsString)
}

// Rollout checks the reserved keys of one routing_rules object (keys lists every
// reserved key present, in any order): only PercentKey and PercentAttrKey, both or
// neither, PercentKey a percentage (ParsePercent), PercentAttrKey a non-empty string that
// is not itself reserved.
func Rollout(keys []RolloutKey) *Violation {
	var hasP, hasK bool
	for _, k := range keys {
		switch k.Key {
		case PercentKey:
			hasP = true
			if !k.IsString {
				return violation(RuleRollout, "%s must be a string (got an array)", PercentKey)
			}
			if _, v := ParsePercent(k.Value); v != nil {
				return v
			}
		case PercentAttrKey:
			hasK = true
			if !k.IsString {
				return violation(RuleRollout, "%s must be a string naming a request attribute (got an array)", PercentAttrKey)
			}
			if k.Value == "" || IsReservedKey(k.Value) {
				return violation(RuleRollout, "%s must name a request attribute: not empty, not starting with '$' (got %q)", PercentAttrKey, k.Value)
			}
		default:
			return violation(RuleRollout, "routing_rules key %q is reserved (keys starting with '$'; defined: %s, %s)", k.Key, PercentKey, PercentAttrKey)
		}
	}
	if hasP != hasK {
		return violation(RuleRollout, "%s and %s go together (got only %s)", PercentKey, PercentAttrKey, map[bool]string{true: PercentKey, false: PercentAttrKey}[hasP])
	}
	return nil
}

// PercentBucket is the bucket (0..PercentBuckets-1) of a request whose attribute named
// by PercentAttrKey has value key, for version version of extension id: FNV-1a 64 over
// the bytes of id, one 0x00 byte, version, one 0x00 byte and key, finished with the
// splitmix64 mixer (h ^= h>>30; h *= 0xbf58476d1ce4e5b9; h ^= h>>27;
// h *= 0x94d049bb133111eb; h ^= h>>31, wrapping), then h mod PercentBuckets. A request
// is in the version's share when its bucket is below ParsePercent's value, so raising
// the percentage only adds keys and lowering it only removes keys.
func PercentBucket(id, version, key string) int {
	const offset, prime = 14695981039346656037, 1099511628211
	h := uint64(offset)
	for i := 0; i < len(id); i++ {
		h = (h ^ uint64(id[i])) * prime
	}
	h *= prime // the 0x00 separator: h ^ 0 == h
	for i := 0; i < len(version); i++ {
		h = (h ^ uint64(version[i])) * prime
	}
	h *= prime
	for i := 0; i < len(key); i++ {
		h = (h ^ uint64(key[i])) * prime
	}
	h ^= h >> 30
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 27
	h *= 0x94d049bb133111eb
	h ^= h >> 31
	return int(h % PercentBuckets)
}

// sqlRollout is the function the rollout rule's CHECK calls (migration 00010). A
// routing_rules value that is not an object passes here: the values_strings_or_arrays
// constraint refuses it.
const sqlRollout = `-- +goose StatementBegin
CREATE FUNCTION registry_routing_rules_rollout_ok(r jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
    SELECT jsonb_typeof(r) <> 'object' OR (
        NOT EXISTS (SELECT 1 FROM jsonb_object_keys(r) AS k(key)
                    WHERE left(k.key, 1) = '$' AND k.key NOT IN ('` + PercentKey + `', '` + PercentAttrKey + `'))
        AND (r ? '` + PercentKey + `') = (r ? '` + PercentAttrKey + `')
        AND (NOT r ? '` + PercentKey + `' OR (jsonb_typeof(r -> '` + PercentKey + `') = 'string'
             AND r ->> '` + PercentKey + `' ~ '` + sqlPercent + `'))
        AND (NOT r ? '` + PercentAttrKey + `' OR (jsonb_typeof(r -> '` + PercentAttrKey + `') = 'string'
             AND r ->> '` + PercentAttrKey + `' <> '' AND left(r ->> '` + PercentAttrKey + `', 1) <> '$')))
$fn$;
-- +goose StatementEnd
`

// sqlPercent is ParsePercent as a regular expression.
const sqlPercent = `^(100(\.0{1,2})?|[0-9]{1,2}(\.[0-9]{1,2})?|0[0-9]{2}(\.[0-9]{1,2})?)$`

// RolloutMigrationFile is the migration generated for the rollout rule.
const RolloutMigrationFile = "migrations/00010_rollout_rules.sql"

// RolloutMigrationSQL returns the text of migrations/00010_rollout_rules.sql: the
// constraints of Columns whose Migration is RolloutMigration.
func RolloutMigrationSQL() string {
	var b strings.Builder
	b.WriteString(`-- Code generated by go generate ./rules from rules/rollout.go and rules/columns.go; DO NOT EDIT.
--
-- The reserved routing_rules keys of a version (PROTOCOL.md §3.1, "Rollout"): "` + PercentKey + `" (a
-- percentage, "0" to "100", at most two decimals) and "` + PercentAttrKey + `" (the request
-- attribute hashed into a bucket), both or neither; every other key starting with '$' is
-- refused. Rows that break it never reached a router's selection as intended, so applying
-- this migration over such rows fails, naming the constraint: fix or delete them first.

-- +goose Up
`)
	b.WriteString(sqlRollout)
	var up, down []string
	for _, c := range Columns {
		for _, r := range c.Rules {
			if r.Migration == RolloutMigration {
				up = append(up, fmt.Sprintf("ALTER TABLE %s\n    ADD CONSTRAINT %s\n        CHECK (%s);\n", c.Table, c.Constraint(r), r.SQL))
				down = append(down, fmt.Sprintf("ALTER TABLE %s DROP CONSTRAINT %s;\n", c.Table, c.Constraint(r)))
			}
		}
	}
	b.WriteString("\n" + strings.Join(up, "\n"))
	b.WriteString("\n-- +goose Down\n")
	b.WriteString(strings.Join(down, ""))
	b.WriteString("DROP FUNCTION registry_routing_rules_rollout_ok(jsonb);\n")
	return b.String()
}
