package main

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/beamline/registry-syncer/test/harness"
)

// TestBinarySignals builds the syncer and stops it with SIGTERM and SIGINT: it exits 0.
func TestBinarySignals(t *testing.T) {
	t.Parallel()
	bin := filepath.Join(t.TempDir(), "syncer")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	schema := harness.PG(t).NewSchema(t)
	nats := harness.NewNATS(t, harness.NATSOptions{})
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			cmd := exec.Command(bin, "run")
			cmd.Env = []string{
				"PATH=" + os.Getenv("PATH"),
				"EXTENSION_REGISTRY_DATABASE_URL=" + schema.URL,
				"EXTENSION_REGISTRY_NATS_URL=" + nats.URL(),
				"EXTENSION_REGISTRY_SUBJECT_PREFIX=test.signals",
				"EXTENSION_REGISTRY_HTTP_ADDR=127.0.0.1:0",
				"EXTENSION_REGISTRY_LOG_FORMAT=json",
				"EXTENSION_REGISTRY_LEADER_RETRY=50ms",
			}
			stderr, err := cmd.StderrPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			addr := make(chan string, 1)
			done := make(chan struct{})
			go func() {
				defer close(done)
				sc := bufio.NewScanner(stderr)
				for sc.Scan() {
					t.Log(sc.Text())
					var rec struct{ Msg, Addr string }
					if json.Unmarshal(sc.Bytes(), &rec) == nil && rec.Msg == "admin: listening" {
						addr <- rec.Addr
					}
				}
				exited <- cmd.Wait()
			}()
			t.Cleanup(func() {
				_ = cmd.Process.Kill() // a no-op once it exited
				<-done                 // no t.Log after the test
			})
			select {
			case a := <-addr:
				waitReady(t, "http://"+a)
			case err := <-exited:
				t.Fatalf("syncer exited early: %v", err)
			case <-time.After(30 * time.Second):
				t.Fatal("no HTTP server within 30s")
			}
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-exited:
				if err != nil {
					t.Fatalf("after %s: %v, want exit 0", sig, err)
				}
			case <-time.After(30 * time.Second):
				t.Fatalf("syncer did not exit within 30s of %s", sig)
			}
		})
	}
}
