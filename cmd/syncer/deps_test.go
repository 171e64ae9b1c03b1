package main

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestBinaryDoesNotLinkTestCode: the production binary's dependencies (go list -deps)
// hold neither the test harness nor the testing package; `syncer dev` runs package
// devstack.
func TestBinaryDoesNotLinkTestCode(t *testing.T) {
	t.Parallel()
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 10 || !slices.Contains(deps, "github.com/beamline/registry-syncer/devstack") {
		t.Fatalf("go list -deps printed %d packages without devstack: %q", len(deps), out)
	}
	for _, d := range deps {
		if d == "testing" || strings.HasPrefix(d, "github.com/beamline/registry-syncer/test/") || strings.HasPrefix(d, "testing/") {
			t.Errorf("cmd/syncer links %s", d)
		}
	}
}
