package rules

import (
	"fmt"
	"strings"
)

//go:generate go run ./gen ..

// Generated files, relative to the repository root.
const (
	MigrationFile       = "migrations/00005_rules.sql"
	AggregateSchemaFile = "protocol/schema/aggregate.schema.json"
	FixtureSchemaFile   = "fixtures/schema.json"
	FixtureV2SchemaFile = "fixtures/schema.v2.json"
)

// sqlFunctions are the functions the document rules call.
//
// registry_json_numbers_ok is NumberRoundTrips in SQL, for every number of a document. It does not lean on float8's
// text output: PostgreSQL writes the shortest decimal strictly inside a double's rounding
// interval, Go (and so the canonical encoding) the shortest one in the closed interval
// when the double's mantissa is even, and the two differ (1738381126998224000 is
// Go's, 1.7383811269982239e+18 PostgreSQL's, for the same double). Instead: a number of
// sd significant digits is the shortest decimal of its double d when no decimal of sd-1
// digits rounds to d (the two of them next to it are enough to try) and it is the
// sd-digit decimal nearest d's exact value. That is float8's own output when it has sd
// digits (measured: most numbers); else the exact value is computed. Fewer than 16 digits
// in the normal range always round-trip; the guards keep values outside every double away
// from float8, which would raise instead of refusing. The shortcut holds whatever the
// session's extra_float_digits (see the comment in the function).
const sqlFunctions = `-- +goose StatementBegin
CREATE FUNCTION registry_json_nesting_ok(doc jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT NOT jsonb_path_exists(doc,
        'strict $.**{%[1]d to last} ? (@.type() == "object" || @.type() == "array")')
$$;
-- +goose StatementEnd

-- Every number of doc round-trips through a double. One function, not three calling each
-- other: a function body finds other functions through the caller's search_path, which
-- is not the registry's schema in every session.
-- +goose StatementBegin
CREATE FUNCTION registry_json_numbers_ok(doc jsonb) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    n numeric;
    a numeric;
    t text;
    ip text;
    digits text;
    sig text;
    e10 integer; -- a = 0.sig × 10^e10
    sd integer;
    g float8;
    u numeric;
    lo numeric;
    f float8;
    e integer;
    exact numeric;
BEGIN
    FOR n IN SELECT j.v::numeric FROM jsonb_path_query(doc, '%[2]s') AS j(v) LOOP
        a := abs(n);
        CONTINUE WHEN a = 0;
        IF a > 1.7976931348623157e308 OR a < 4.9406564584124654e-324 THEN
            RETURN false;
        END IF;
        t := a::text;
        ip := split_part(t, '.', 1);
        digits := ip || split_part(t, '.', 2);
        sig := ltrim(digits, '0');
        e10 := length(ip) - (length(digits) - length(sig));
        sig := rtrim(sig, '0');
        sd := length(sig);
        CONTINUE WHEN sd <= 15 AND a >= 2.2250738585072014e-308;
        IF sd > 17 THEN
            RETURN false; -- the shortest decimal of a double never has more than 17 digits
        END IF;
        g := a::float8;
        IF sd > 1 THEN
            u := ('1e' || (e10 - sd + 1))::numeric;
            lo := trunc(a * ('1e' || (sd - 1 - e10))::numeric) * u;
            IF lo >= 2.4703282292062328e-324 AND lo::float8 = g THEN
                RETURN false;
            END IF;
            IF lo + u <= 1.7976931348623157e308 AND (lo + u)::float8 = g THEN
                RETURN false;
            END IF;
        END IF;
        -- No shorter decimal rounds to g: when n is float8's own output for g (the shortest
        -- decimal inside g's rounding interval, or with extra_float_digits <= 0 g rounded
        -- to 15 + extra_float_digits digits: then the nearest to g of its length), it is
        -- the canonical one.
        CONTINUE WHEN g::text::numeric = a;
        -- Otherwise compare with the exact value of g: its integer mantissa times a power of two, scaled exactly
        -- (multiplying or dividing a double by a power of two in range loses nothing).
        f := g;
        e := 0;
        WHILE f >= 9007199254740992 * 4294967296.0 LOOP f := f / 4294967296.0; e := e + 32; END LOOP;
        WHILE f >= 9007199254740992 LOOP f := f / 2; e := e + 1; END LOOP;
        WHILE f < 4503599627370496 / 4294967296.0 LOOP f := f * 4294967296.0; e := e - 32; END LOOP;
        WHILE f < 4503599627370496 LOOP f := f * 2; e := e - 1; END LOOP;
        exact := f::bigint::numeric; -- an integer in [2^52, 2^53)
        IF e >= 0 THEN
            exact := exact * 2::numeric ^ e;
        ELSE
            exact := exact * 5::numeric ^ (-e) * ('1e' || e)::numeric;
        END IF;
        u := ('1e' || (e10 - sd))::numeric;
        IF 2 * abs(a - exact) > u THEN
            RETURN false; -- another decimal of sd digits is nearer to g
        END IF;
    END LOOP;
    RETURN true;
END
$$;
-- +goose StatementEnd
`

// Migration returns the text of migrations/00005_rules.sql.
func Migration() string {
	var b strings.Builder
	b.WriteString(`-- Code generated by go generate ./rules from rules/columns.go; DO NOT EDIT.
--
-- One set of rules: the CHECK constraints the router side (cache/), the fixture loader and
-- the JSON Schemas agree with, generated from the rules package. Lengths in bytes
-- (octet_length), not characters; subjects, versions and instance ids without control
-- characters or Unicode whitespace, whatever the database's locale; config and metadata at
-- most ` + fmt.Sprint(MaxJSONNesting) + ` levels deep and holding only numbers that round-trip through an IEEE-754
-- double (I-JSON), so that a router gets exactly the value the database holds.
--
-- Applying it to a database that holds rows breaking these rules fails, naming the
-- constraint: such rows never reached a router (the router side refused them), so fix or
-- delete them first (syncer status lists the withheld aggregates).

-- +goose Up
`)
	fmt.Fprintf(&b, sqlFunctions, MaxJSONNesting, sqlSlowNumbers)
	for _, t := range tables {
		var clauses []string
		for _, r := range replaced {
			if r.table == t {
				clauses = append(clauses, "    DROP CONSTRAINT "+r.name)
			}
		}
		for _, c := range Columns {
			if c.Table != t {
				continue
			}
			for _, r := range c.Rules {
				if r.Migration == 5 {
					clauses = append(clauses, fmt.Sprintf("    ADD CONSTRAINT %s\n        CHECK (%s)", c.Constraint(r), r.SQL))
				}
			}
		}
		fmt.Fprintf(&b, "\nALTER TABLE %s\n%s;\n", t, strings.Join(clauses, ",\n"))
	}

	b.WriteString("\n-- +goose Down\n")
	b.WriteString(Down())
	return b.String()
}

// Down returns the Down section of migrations/00005_rules.sql: the constraints and
// functions of 00005 dropped, the ones of 00001 it replaced restored. Tests run it to get
// a database as it was before 00005, one that accepts rows the router side refuses.
func Down() string {
	var b strings.Builder
	for i := len(tables) - 1; i >= 0; i-- {
		t := tables[i]
		var clauses []string
		for _, c := range Columns {
			if c.Table != t {
				continue
			}
			for _, r := range c.Rules {
				if r.Migration == 5 {
					clauses = append(clauses, "    DROP CONSTRAINT "+c.Constraint(r))
				}
			}
		}
		for _, r := range replaced {
			if r.table == t {
				clauses = append(clauses, fmt.Sprintf("    ADD CONSTRAINT %s\n        CHECK (%s)", r.name, r.check))
			}
		}
		fmt.Fprintf(&b, "ALTER TABLE %s\n%s;\n\n", t, strings.Join(clauses, ",\n"))
	}
	b.WriteString("DROP FUNCTION registry_json_numbers_ok(jsonb);\nDROP FUNCTION registry_json_nesting_ok(jsonb);\n")
	return b.String()
}

var tables = []string{"extensions", "extension_versions", "extension_instances"}

// Constraints lists the name of every CHECK constraint that enforces a rule of Columns.
func Constraints() []string {
	var out []string
	for _, c := range Columns {
		for _, r := range c.Rules {
			if r.SQL != "" {
				out = append(out, c.Constraint(r))
			}
		}
	}
	return out
}

// File is one generated file.
type File struct {
	Path    string // relative to the repository root
	Content []byte
}

// Generated returns every file generated from the rules.
func Generated() []File {
	return []File{
		{MigrationFile, []byte(Migration())},
		{AggregateSchemaFile, AggregateSchema()},
		{FixtureSchemaFile, FixtureSchema()},
		{RolloutMigrationFile, []byte(RolloutMigrationSQL())},
		{FixtureV2SchemaFile, FixtureV2Schema()},
	}
}
