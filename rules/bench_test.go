package rules_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/beamline/registry-syncer/test/harness"
)

// BenchmarkInsertRules measures what the constraints of 00005 cost a write: 1,000
// extensions in one INSERT … SELECT with a 300-byte subject and a config of 10 integers
// and strings (ints), or of those and 10 non-integers, 16- and 17-digit doubles among
// them (doubles: the slow path of the number rule, a plpgsql call), with the rules of
// 00005 and without them (00001's).
func BenchmarkInsertRules(b *testing.B) {
	for _, bc := range []struct {
		name    string
		undo    bool
		doubles bool
	}{{"ints/with_00005", false, false}, {"ints/before_00005", true, false}, {"doubles/with_00005", false, true}, {"doubles/before_00005", true, true}} {
		undo := bc.undo
		b.Run(bc.name, func(b *testing.B) {
			s := harness.PG(b).NewSchema(b)
			if undo {
				s.UndoRules(b)
			}
			ctx := context.Background()
			const rows = 1000
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				i++
				doubles := `'[]'::jsonb`
				if bc.doubles {
					doubles = `jsonb_build_array(0.1 + g, 0.30000000000000004, 1.7976931348623157e308, 5e-324,
						2.2250738585072014e-308, 1.2345678901234567, 9.876543210987653e-10,
						3.141592653589793, 2.718281828459045, 1.4142135623730951)`
				}
				_, err := s.Pool.Exec(ctx, fmt.Sprintf(`INSERT INTO extensions (id, type, subject, config)
					SELECT 'b%d_' || g, 'pre', 'beamline.ext.pre.' || repeat('é', 140) || '.v1',
					       jsonb_build_object('ints', jsonb_build_array(1, 2, 3, g, 5, 6, 7, 8, 9, 10),
					                          'name', 'normalize ' || g, 'doubles', %s)
					FROM generate_series(1, %d) AS g`, i, doubles, rows))
				if err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*rows), "µs/row")
		})
	}
}
