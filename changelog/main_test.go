package changelog_test

import (
	"os"
	"testing"

	"github.com/beamline/registry-syncer/test/harness"
)

func TestMain(m *testing.M) { os.Exit(harness.MainPostgres(m, harness.PGOptions{})) }
