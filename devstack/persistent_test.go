package devstack

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestClearStaleRefusesAClusterInUse: a postmaster whose owner is alive (this test) is
// never killed; the pid file of a cluster that was shut down cleanly is not there to
// clear; one left by a dead postmaster is removed.
func TestClearStaleRefusesAClusterInUse(t *testing.T) {
	t.Parallel()
	dir, err := os.MkdirTemp("", "devstack-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil { // the server may run as postgres
		t.Fatal(err)
	}
	port, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	p, err := OpenPostgres(filepath.Join(dir, "pg"), port, PGOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Shutdown(StopFast) })
	if _, err := ClearStale(p.DataDir()); err == nil || !strings.Contains(err.Error(), "already runs") {
		t.Fatalf("ClearStale on a running cluster: %v, want it refused", err)
	}
	if got := ProcessesIn(p.DataDir()); len(got) == 0 {
		t.Fatal("ProcessesIn finds no process of the running cluster")
	}
	p.Shutdown(StopFast)
	if st, err := ClearStale(p.DataDir()); err != nil || st.PidFile || len(st.Killed) > 0 {
		t.Fatalf("after a clean stop: %+v %v, want nothing to clear", st, err)
	}
	// A pid file naming a process that is not a postmaster of this cluster (pid reuse).
	stale := filepath.Join(p.DataDir(), "postmaster.pid")
	if err := os.WriteFile(stale, []byte("1\n"+p.DataDir()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if st, err := ClearStale(p.DataDir()); err != nil || !st.PidFile {
		t.Fatalf("stale pid file: %+v %v, want it removed", st, err)
	}
	if err := p.Start(); err != nil {
		t.Fatalf("start after clearing: %v", err)
	}
}
