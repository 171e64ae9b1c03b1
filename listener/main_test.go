package listener_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/beamline/registry-syncer/test/harness"
)

// withPostgres runs the tests with the package's private PostgreSQL cluster, which is
// stopped before goleak looks for leftover goroutines.
type withPostgres struct{ m *testing.M }

func (w withPostgres) Run() int { return harness.MainPostgres(w.m, harness.PGOptions{}) }

func TestMain(m *testing.M) { goleak.VerifyTestMain(withPostgres{m}) }
