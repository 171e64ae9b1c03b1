package leadership_test

import (
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/beamline/registry-syncer/test/harness"
)

func TestMain(m *testing.M) {
	code := harness.MainPostgres(m, harness.PGOptions{})
	if code == 0 {
		if err := goleak.Find(goleak.IgnoreTopFunction("github.com/jackc/pgx/v5/pgxpool.(*Pool).backgroundHealthCheck"),
			goleak.IgnoreTopFunction("github.com/jackc/pgx/v5/pgxpool.(*Pool).triggerHealthCheck.func1")); err != nil {
			os.Stderr.WriteString("goleak: " + err.Error() + "\n")
			code = 1
		}
	}
	os.Exit(code)
}
