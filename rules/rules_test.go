package rules_test

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/beamline/registry-syncer/rules"
	"github.com/beamline/registry-syncer/test/harness"
)

// TestForbiddenIsControlAndSpace: the table of forbidden code points is exactly Go's
// unicode.IsControl or unicode.IsSpace (Cc and White_Space), over every code point.
func TestForbiddenIsControlAndSpace(t *testing.T) {
	t.Parallel()
	for r := rune(0); r <= unicode.MaxRune; r++ {
		if got, want := rules.IsForbidden(r), unicode.IsControl(r) || unicode.IsSpace(r); got != want {
			t.Fatalf("IsForbidden(%U) = %v, want %v", r, got, want)
		}
	}
}

func TestNumberRoundTrips(t *testing.T) {
	t.Parallel()
	for lit, want := range map[string]bool{
		"0": true, "-0": true, "0.0": true, "0e10": true, "1": true, "1.0": true, "1.50": true, "1e2": true, "1E+2": true,
		"0.1": true, "0.30000000000000004": true, "9007199254740992": true, "12345678901234567000": true,
		"1.7976931348623157e308": true, "5e-324": true, "-2.5e-7": true, "100000000000000000000": true,
		"1e400": false, "-1e400": false, "1e-400": false, "12345678901234567891": false, "9007199254740993": false,
		"0.1000000000000000000001": false, "3.141592653589793238462643383279": false, "2e-324": false,
		"1.7976931348623159e308": false, "12345678901234567168": false,
		// Go's shortest for this double; PostgreSQL's float8 output writes 1.7383811269982239e+18.
		"1738381126998224000": true, "1.7383811269982239e18": false,
	} {
		if got := rules.NumberRoundTrips(lit); got != want {
			t.Errorf("NumberRoundTrips(%s) = %v, want %v", lit, got, want)
		}
	}
}

// TestNumberRuleSameInSQL: registry_json_numbers_ok (migration 00005) and NumberRoundTrips
// agree on thousands of literals: shortest doubles, the same with a digit changed, long
// integers, extremes and subnormals.
func TestNumberRuleSameInSQL(t *testing.T) {
	t.Parallel()
	s := harness.PG(t).NewSchema(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	rng := rand.New(rand.NewPCG(1, 2))
	var lits []string
	for range 3000 {
		var f float64
		switch rng.IntN(4) {
		case 0:
			f = math.Float64frombits(rng.Uint64() &^ (1 << 63))
		case 1:
			f = rng.NormFloat64() * math.Pow(10, float64(rng.IntN(40)-20))
		case 2:
			f = float64(rng.Int64N(1 << 62))
		default:
			f = math.Float64frombits(rng.Uint64N(1 << 52)) // subnormal
		}
		if math.IsInf(f, 0) || math.IsNaN(f) {
			continue
		}
		lit := strconv.FormatFloat(f, 'e', -1, 64)
		lits = append(lits, lit)
		// One more significant digit, or the last one changed: mostly not round-tripping.
		mant, exp, _ := cut(lit)
		lits = append(lits, mant+strconv.Itoa(rng.IntN(10))+"e"+exp)
		lits = append(lits, strconv.FormatFloat(f, 'f', -1, 64))
		lits = append(lits, fmt.Sprintf("%d%d", rng.Int64N(1<<62), rng.IntN(1000)))
	}
	lits = append(lits, "1738381126998224000", "1.7383811269982239e18", "1.7976931348623157e308", "1.7976931348623158e308", "4.9406564584124654e-324", "2.4703282292062328e-324", "2.4703282292062327e-324")
	rows, err := s.Pool.Query(ctx, `SELECT l, registry_json_numbers_ok(jsonb_build_object('n', l::numeric)) FROM unnest($1::text[]) AS l`, lits)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	n, accepted := 0, 0
	for rows.Next() {
		var lit string
		var ok bool
		if err := rows.Scan(&lit, &ok); err != nil {
			t.Fatal(err)
		}
		n++
		if ok {
			accepted++
		}
		if want := rules.NumberRoundTrips(lit); ok != want {
			t.Errorf("%s: SQL %v, Go %v", lit, ok, want)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d literals, %d round-trip", n, accepted)
	if n != len(lits) || accepted == 0 || accepted == n {
		t.Fatalf("%d of %d literals compared, %d accepted", n, len(lits), accepted)
	}
}

func cut(lit string) (mant, exp string, ok bool) {
	for i := range lit {
		if lit[i] == 'e' {
			m := lit[:i]
			if len(m) == 1 {
				m += "."
			}
			return m, lit[i+1:], true
		}
	}
	return lit, "0", false
}

// TestDownRestoresTheOldRules: the Down section of 00005 gives back the constraints of
// 00001 (the seven measured rows are accepted again, an ASCII rule still holds), and Up's
// text applies again on top of it.
func TestDownRestoresTheOldRules(t *testing.T) {
	t.Parallel()
	s := harness.PG(t).NewSchema(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s.UndoRules(t)
	ins := `INSERT INTO extensions (id, type, subject, version, config) VALUES `
	poison := []string{
		ins + `('p1', 'pre', 'beamline.ext.pre.' || repeat('é', 296) || '.v1', 'v1', '{}')`,
		ins + `('p2', 'pre', E'beamline.ext.pre.a\x01b.v1', 'v1', '{}')`,
		ins + "('p3', 'pre', 'beamline.ext.pre.a\u00a0b.v1', 'v1', '{}')",
		ins + `('p4', 'pre', 'beamline.ext.pre.p.v1', repeat('é', 40), '{}')`,
		ins + `('p5', 'pre', 'beamline.ext.pre.p.v1', 'v1', (repeat('{"a":', 300) || '1' || repeat('}', 300))::jsonb)`,
		ins + `('p6', 'pre', 'beamline.ext.pre.p.v1', 'v1', '{"x": 1e400}')`,
		`INSERT INTO extension_instances (extension_id, instance_id, subject) VALUES ('p6', repeat('é', 200), 'beamline.ext.pre.p.v1')`,
	}
	for _, q := range poison {
		if _, err := s.Pool.Exec(ctx, q); err != nil {
			t.Fatalf("before 00005 the database accepted %s: %v", q, err)
		}
	}
	if _, err := s.Pool.Exec(ctx, `INSERT INTO extensions (id, type, subject) VALUES ('q', 'pre', 'beamline.ext.pre.*.v1')`); err == nil {
		t.Fatal("the old subject constraint is gone")
	}
	// Up again: refused while the poison rows are there, naming a constraint; applied once
	// they are gone.
	up, _, _ := strings.Cut(rules.Migration(), "-- +goose Down")
	up = strings.NewReplacer("-- +goose StatementBegin", "", "-- +goose StatementEnd", "", "-- +goose Up", "").Replace(up)
	if _, err := s.Pool.Exec(ctx, up); err == nil || !strings.Contains(err.Error(), "is violated by some row") {
		t.Fatalf("00005 over poison rows: %v, want a named constraint violated by some row", err)
	}
	if _, err := s.Pool.Exec(ctx, `DELETE FROM extensions WHERE id LIKE 'p%'`); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Pool.Exec(ctx, up); err != nil {
		t.Fatalf("00005 again: %v", err)
	}
}
