package syncer_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/beamline/registry-syncer/syncer"
)

// TestFixtureSnapshotCarriesAggregates: the fixtures source publishes the versions and
// instances of a file in the registry's own format (what fixtures export writes).
func TestFixtureSnapshotCarriesAggregates(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	doc := `{"format": "beamline.registry/v2", "id": "canary", "type": "pre", "subject": "beamline.ext.pre.canary.v2",
	 "timeout_ms": 100, "retry": 1, "enabled": false, "version": "v2", "config": {}, "metadata": {},
	 "versions": [{"version": "v2", "subject": "beamline.ext.pre.canary.v2", "timeout_ms": 100, "retry": 1, "enabled": true,
	   "config": {}, "metadata": {}, "routing_rules": {"tenant_id": ["t1"]}}],
	 "instances": [{"instance_id": "i-1", "subject": "canary.i-1", "weight": 70, "enabled": true, "health_status": "healthy"}]}`
	if err := os.MkdirAll(filepath.Join(dir, "ab"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ab", "canary.json"), []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	snap, err := syncer.FixtureSnapshot(dir, 1)
	if err != nil {
		t.Fatal(err)
	}
	e, ok := snap.Get("canary")
	if !ok || len(e.Versions) != 1 || string(e.Versions[0].RoutingRules) != `{"tenant_id":["t1"]}` ||
		len(e.Instances) != 1 || e.Instances[0].Weight != 70 || e.Instances[0].HealthStatus != "healthy" {
		t.Fatalf("canary in the fixtures snapshot: %+v", e)
	}
}
