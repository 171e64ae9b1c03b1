package rules

import (
	"math/big"
	"math/rand/v2"
	"strconv"
	"testing"
)

// TestSameDecimalIsValueEquality: sameDecimal agrees with exact rational comparison on
// literals spelled many ways (leading and trailing zeros, points, exponents, signs).
func TestSameDecimalIsValueEquality(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(5, 6))
	spell := func(digits string, exp int) string {
		// digits × 10^exp written with a random point position and compensating exponent.
		p := rng.IntN(len(digits) + 1)
		s := digits[:p]
		if s == "" {
			s = "0"
		}
		if p < len(digits) {
			s += "." + digits[p:]
		}
		e := exp + len(digits) - p
		switch rng.IntN(3) {
		case 0:
			return s + "e" + strconv.Itoa(e)
		case 1:
			if e >= 0 {
				return s + "E+" + strconv.Itoa(e)
			}
			return s + "E" + strconv.Itoa(e)
		}
		if e == 0 {
			return s
		}
		return s + "e" + strconv.Itoa(e)
	}
	for range 20000 {
		d := strconv.Itoa(rng.IntN(100000))
		if rng.IntN(2) == 0 {
			d += "000"
		}
		if rng.IntN(3) == 0 {
			d = "00" + d
		}
		e := rng.IntN(20) - 10
		a := spell(d, e)
		b := spell(d, e)
		if rng.IntN(2) == 0 {
			b = spell(strconv.Itoa(rng.IntN(100000)), rng.IntN(20)-10)
		}
		if rng.IntN(4) == 0 {
			a = "-" + a
		}
		ra, _ := new(big.Rat).SetString(a)
		rb, _ := new(big.Rat).SetString(b)
		if ra == nil || rb == nil {
			t.Fatalf("bad literals %q %q", a, b)
		}
		if got, want := sameDecimal(a, []byte(b)), ra.Cmp(rb) == 0; got != want {
			t.Fatalf("sameDecimal(%q, %q) = %v, want %v", a, b, got, want)
		}
	}
}
