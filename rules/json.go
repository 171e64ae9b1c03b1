package rules

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
)

// NumberRoundTrips reports whether the JSON number literal lit survives a trip through an
// IEEE-754 double: its nearest double, written as the shortest decimal that identifies it
// (what the canonical encoding writes, PROTOCOL.md §4), has the same value as lit. 1e400
// (no double), 12345678901234567891 (its double is 12345678901234567168, written
// 12345678901234567000) and 0.1000000000000000000001 do not; 0.1, 1.0, 1e2 and -0 do.
// This is I-JSON's rule (RFC 7493 §2.2): numbers with more magnitude or precision than a
// double are refused, so that every reader gets the value the writer stored.
func NumberRoundTrips(lit string) bool {
	_, ok := ParseNumber(lit)
	return ok
}

// ParseNumber parses the JSON number literal lit into its nearest double and reports
// whether it round-trips (NumberRoundTrips).
func ParseNumber(lit string) (float64, bool) {
	f, err := strconv.ParseFloat(lit, 64)
	if err != nil || math.IsInf(f, 0) {
		return 0, false
	}
	var buf [32]byte
	return f, sameDecimal(lit, strconv.AppendFloat(buf[:0], f, 'e', -1, 64))
}

// sameDecimal compares two decimal literals by value (a well-formed JSON number and Go's
// 'e' format), without allocating.
func sameDecimal[A, B ~string | ~[]byte](a A, b B) bool {
	x, y := decimal(a), decimal(b)
	if x.n == 0 || y.n == 0 {
		return x.n == y.n // zero (of either sign) only equals zero
	}
	if x.neg != y.neg || x.exp != y.exp || x.n != y.n || x.big || y.big {
		return false
	}
	for k := 0; k < x.n; k++ {
		if x.digit(k) != y.digit(k) {
			return false
		}
	}
	return true
}

// dec is a decimal literal taken apart: the value is ±0.d₁…dₙ × 10^exp, the significant
// digits (no leading or trailing zeros; n = 0 for zero) read from mant, skipping the point.
type dec[S ~string | ~[]byte] struct {
	mant     S
	intLen   int // digits before the point
	from, n  int // the first significant digit (counting digits only) and how many
	exp      int
	neg, big bool // big: an exponent beyond int, far outside every double
}

func (d dec[S]) digit(k int) byte {
	k += d.from
	if k >= d.intLen && d.intLen < len(d.mant) {
		return d.mant[k+1]
	}
	return d.mant[k]
}

func decimal[S ~string | ~[]byte](s S) dec[S] {
	var d dec[S]
	if len(s) > 0 && s[0] == '-' {
		d.neg, s = true, s[1:]
	}
	d.mant = s
	for i := 0; i < len(s); i++ {
		if s[i] == 'e' || s[i] == 'E' {
			d.mant = s[:i]
			x := s[i+1:]
			eneg := false
			if len(x) > 0 && (x[0] == '+' || x[0] == '-') {
				eneg = x[0] == '-'
				x = x[1:]
			}
			for j := 0; j < len(x); j++ {
				if d.exp > 1<<30 {
					d.big = true
					break
				}
				d.exp = d.exp*10 + int(x[j]-'0')
			}
			if eneg {
				d.exp = -d.exp
			}
			break
		}
	}
	d.intLen = len(d.mant)
	nd := len(d.mant)
	for i := 0; i < len(d.mant); i++ {
		if d.mant[i] == '.' {
			d.intLen, nd = i, len(d.mant)-1
			break
		}
	}
	d.exp += d.intLen
	raw := d // digit() with from = 0 reads every digit
	lead := 0
	for lead < nd && raw.digit(lead) == '0' {
		lead++
	}
	trail := 0
	for trail < nd-lead && raw.digit(nd-1-trail) == '0' {
		trail++
	}
	d.from, d.n = lead, nd-lead-trail
	d.exp -= lead
	return d
}

// JSON checks the rules of a config, metadata or routing_rules document beyond its
// syntax: nesting at most MaxJSONNesting deep, every number round-trips through a double
// (NumberRoundTrips), no U+0000 in a string or key (PostgreSQL's jsonb cannot store it).
// raw must be valid JSON; a syntax error is returned as a plain error.
func JSON(raw []byte) (*Violation, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	depth := 0
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		switch v := tok.(type) {
		case json.Delim:
			switch v {
			case '{', '[':
				depth++
				if depth > MaxJSONNesting {
					return NestingViolation(), nil
				}
			default:
				depth--
			}
		case json.Number:
			if !NumberRoundTrips(string(v)) {
				return NumberViolation(string(v)), nil
			}
		case string:
			if strings.IndexByte(v, 0) >= 0 {
				return NULViolation(), nil
			}
		}
	}
}

// NumberViolation is the violation of a number literal that does not round-trip.
func NumberViolation(lit string) *Violation {
	return violation(RuleNumbers, "must hold only numbers that round-trip through an IEEE-754 double (got %s)", truncate(lit))
}

// NestingViolation is the violation of a document nested too deep.
func NestingViolation() *Violation {
	return violation(RuleNesting, "must not nest objects and arrays deeper than %d levels", MaxJSONNesting)
}

// NULViolation is the violation of a document holding U+0000.
func NULViolation() *Violation {
	return violation(RuleNoNUL, "must not contain the character U+0000 (PostgreSQL jsonb cannot store it)")
}

func truncate(s string) string {
	if len(s) > 40 {
		return s[:37] + "..."
	}
	return s
}

// Describe is the rule's description for documentation and error messages.
func Describe(rule string) string {
	for _, c := range Columns {
		for _, r := range c.Rules {
			if r.Name == rule {
				return r.Description
			}
		}
	}
	return fmt.Sprintf("rule %s", rule)
}
