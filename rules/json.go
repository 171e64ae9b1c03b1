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
	f, err := strconv.ParseFloat(lit, 64)
	if err != nil || math.IsInf(f, 0) {
		return false
	}
	shortest := strconv.FormatFloat(f, 'e', -1, 64)
	return sameDecimal(lit, shortest)
}

// sameDecimal compares two decimal literals by value (both well-formed JSON numbers or Go
// 'e' format).
func sameDecimal(a, b string) bool {
	an, ad, ae := decimal(a)
	bn, bd, be := decimal(b)
	if ad == "" || bd == "" {
		return ad == bd // zero (of either sign) only equals zero
	}
	return an == bn && ad == bd && ae == be
}

// decimal splits a number literal into sign, significant digits (no leading or trailing
// zeros; "" for zero) and the exponent e such that the value is 0.digits × 10^e.
func decimal(s string) (neg bool, digits string, exp int) {
	if strings.HasPrefix(s, "-") {
		neg, s = true, s[1:]
	}
	mant, e := s, 0
	if i := strings.IndexAny(s, "eE"); i >= 0 {
		mant = s[:i]
		n, err := strconv.Atoi(strings.TrimPrefix(s[i+1:], "+"))
		if err != nil {
			// An exponent beyond int: the number is far outside every double's range, and
			// ParseFloat has already refused it; never reached from NumberRoundTrips.
			return neg, "x", 0
		}
		e = n
	}
	intPart, frac, _ := strings.Cut(mant, ".")
	all := intPart + frac
	e += len(intPart)
	trimmed := strings.TrimLeft(all, "0")
	e -= len(all) - len(trimmed)
	trimmed = strings.TrimRight(trimmed, "0")
	return neg, trimmed, e
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
