package rules_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/beamline/registry-syncer/rules"
)

// TestGeneratedFilesFresh fails when a file generated from the rules is stale: run
// go generate ./rules.
func TestGeneratedFilesFresh(t *testing.T) {
	t.Parallel()
	for _, f := range rules.Generated() {
		have, err := os.ReadFile(filepath.Join("..", f.Path))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(have, f.Content) {
			t.Errorf("%s is stale: run go generate ./rules", f.Path)
		}
	}
}
