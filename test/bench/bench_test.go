package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestSmoke runs the whole benchmark in -short mode so that its code cannot rot: every
// section must produce numbers and every final checksum must equal the database's. No
// timing is asserted (CI machines and smoke sizes say nothing about performance).
func TestSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL, NATS and the syncer")
	}
	tmp := t.TempDir()
	bin := filepath.Join(tmp, "syncer")
	build := exec.Command("go", "build", "-o", bin, "github.com/beamline/registry-syncer/cmd/syncer")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/syncer: %v\n%s", err, out)
	}
	var log bytes.Buffer
	o, err := parseArgs([]string{"-short", "-out", filepath.Join(tmp, "results"), "-syncer", bin}, &log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	start := time.Now()
	res, err := run(ctx, o)
	t.Logf("benchmark output:\n%s", log.String())
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	t.Logf("smoke run took %s", time.Since(start).Round(time.Millisecond))

	// The result file is the JSON of what run returned.
	data, err := os.ReadFile(res.File)
	if err != nil {
		t.Fatalf("result file: %v", err)
	}
	var back Results
	if err := json.Unmarshal(data, &back); err != nil {
		t.Fatalf("result file is not valid JSON: %v", err)
	}

	positive := func(name string, v float64) {
		t.Helper()
		if !(v > 0) {
			t.Errorf("%s = %v, want a measured (positive) value", name, v)
		}
	}
	sampled := func(name string, l Latency, want int) {
		t.Helper()
		if l.N < want || l.Max == 0 {
			t.Errorf("%s: %d samples (max %v), want at least %d", name, l.N, l.Max, want)
		}
	}
	// A paced rate the writers could not even approach (a loaded shared machine: 127/s of
	// 1000/s was seen in CI) has its warm-up only, no sample: said, not judged. The
	// writers' pace does not depend on the product, so this hides no slowness of it.
	driven := func(what string, p paceResult) bool {
		t.Helper()
		if p.Achieved >= p.Target/4 {
			return true
		}
		t.Logf("%s %v/s: the writers achieved %v/s only, too few to judge in a smoke run", what, p.Target, p.Achieved)
		return false
	}
	undriven := map[int]bool{}
	if f := back.Floor; f == nil || len(f.Rates) != len(o.plan.Rates) {
		t.Errorf("floor: %+v, want one entry per rate", f)
	} else {
		for i, r := range f.Rates {
			if !driven("floor", r.Pace) {
				undriven[i] = true
				continue
			}
			sampled("floor commit->subscriber", r.EndToEnd, 5)
			sampled("floor commit->notify", r.CommitToNotify, 5)
			sampled("floor core publish->receive", r.PublishToReceive, 5)
			sampled("floor JetStream publish->ack", r.JetStreamAck, 5)
		}
	}
	if p := back.Product; p == nil || len(p.Rates) != len(o.plan.Rates) {
		t.Errorf("product: %+v, want one entry per rate", p)
	} else {
		for i, r := range p.Rates {
			if !driven("product", r.Pace) {
				undriven[i] = true
				continue
			}
			sampled("product commit->OnChange", r.EndToEnd, 5)
			sampled("product commit->announced", r.CommitToAnnounced, 5)
		}
		if !p.ChecksumsEqual {
			t.Error("product: the client's checksum differs from the database's")
		}
	}
	if len(back.Ratios) != len(o.plan.Rates) {
		t.Errorf("ratios: %+v, want one per rate", back.Ratios)
	}
	// A ratio is measured when it is a finite non-zero number. It may be negative in a
	// smoke run: the origin of every sample is "COMMIT returned to the writer", and with
	// ten samples on an idle path the notification can reach the subscriber before the
	// writer sees its COMMIT return (a floor p50 of -0.14 ms was seen), so the sign of a
	// tiny ratio says nothing; make bench's real runs report it.
	measured := func(name string, v float64) {
		t.Helper()
		if v == 0 || math.IsNaN(v) || math.IsInf(v, 0) {
			t.Errorf("%s = %v, want a measured value", name, v)
		}
	}
	for i, r := range back.Ratios {
		if undriven[i] {
			continue
		}
		measured("p50 ratio", r.P50)
		measured("p99 ratio", r.P99)
	}
	if b := back.Burst; b == nil {
		t.Error("burst: no result")
	} else {
		positive("burst commits/s", b.CommitsPerS)
		positive("bare commits/s", b.BareCommitsPerS)
		positive("burst revisions published", float64(b.RevisionsPublished))
		if b.RevisionsPublished != b.RevisionsCommitted {
			t.Errorf("burst: %d revisions committed, %d published", b.RevisionsCommitted, b.RevisionsPublished)
		}
		if !b.AllCaughtUp || !b.ChecksumsEqual {
			t.Errorf("burst: clients caught up %v, checksums equal %v", b.AllCaughtUp, b.ChecksumsEqual)
		}
		if b.DurableIsolated == nil || b.NonDurable == nil {
			t.Error("burst: the isolated commit-rate comparisons are missing")
		} else {
			positive("isolated registry commits/s", b.DurableIsolated.Registry)
			positive("non-durable registry commits/s", b.NonDurable.Registry)
		}
	}
	if s := back.Scale; s == nil {
		t.Error("scale: no result")
	} else {
		positive("import ms", s.ImportMS)
		positive("reconcile ms", s.ReconcileMedianMS)
		positive("bootstrap ms", s.BootstrapMedianMS)
		positive("snapshot bytes", float64(s.SnapshotBytes))
		positive("client heap per snapshot", float64(s.ClientHeapBytes))
		positive("syncer peak RSS", float64(s.SyncerPeakRSS))
		positive("cold syncer peak RSS", float64(s.ColdPeakRSS))
		sampled("scale single change", s.ChangeLatency, 1)
		if !s.ChecksumsEqual {
			t.Error("scale: the client's checksum differs from the database's")
		}
	}
	if b := back.Backlog; b == nil || b.Sequential == nil || b.Pipelined == nil {
		t.Errorf("backlog: %+v, want a run with a window of 1 and one with the default", b)
	} else {
		positive("backlog sequential publish rate", b.Sequential.PublishPerS)
		positive("backlog pipelined publish rate", b.Pipelined.PublishPerS)
		if b.Sequential.Revisions != o.plan.BacklogSequential || b.Pipelined.Revisions != o.plan.Backlog || !b.ChecksumsEqual {
			t.Errorf("backlog: %d and %d revisions (want %d and %d), late client checksum equal %v",
				b.Sequential.Revisions, b.Pipelined.Revisions, o.plan.BacklogSequential, o.plan.Backlog, b.ChecksumsEqual)
		}
	}
	if c := back.Churn; c == nil {
		t.Error("churn: no result")
	} else {
		positive("churn commits/s", c.CommitPerS)
		positive("churn syncer peak RSS", float64(c.SyncerPeakRSS))
		positive("churn syncer RSS", float64(c.SyncerRSS))
		positive("churn history bytes", c.HistoryBytes)
		if c.Revisions != o.plan.Churn || c.Extensions != o.plan.ChurnExtensions || !c.ChecksumsEqual || c.SyncerRSS > c.SyncerPeakRSS {
			t.Errorf("churn: %d revisions on %d extensions (want %d on %d), late client checksum equal %v, RSS %d above its peak %d",
				c.Revisions, c.Extensions, o.plan.Churn, o.plan.ChurnExtensions, c.ChecksumsEqual, c.SyncerRSS, c.SyncerPeakRSS)
		}
	}
	if f := back.Fanout; f == nil {
		t.Error("fanout: no result")
	} else {
		sampled("fanout all clients updated", f.AllUpdated, o.plan.FanChanges)
		if f.Incomplete != 0 || !f.ChecksumsEqual {
			t.Errorf("fanout: %d incomplete changes, checksums equal %v", f.Incomplete, f.ChecksumsEqual)
		}
	}
	if c := back.Control; c == nil || c.MSPerInterval <= 0 || c.ReportBytes <= 0 {
		t.Errorf("control: %+v, want the cost of an interval", c)
	}
	if a := back.Apply; a == nil || len(a.Sizes) != 2 || a.Ratio <= 0 {
		t.Errorf("apply: %+v, want two sizes and their ratio", a)
	} else {
		for _, sz := range a.Sizes {
			positive(fmt.Sprintf("apply at %d ns/op", sz.Extensions), sz.NsPerOp)
		}
	}
	if l := back.Lookups; l == nil || len(l.Benches) != 4 {
		t.Errorf("lookups: %+v, want Lookup and ByType with 1 and 2 goroutines", l)
	} else {
		for _, b := range l.Benches {
			positive(b.Name+" ns/op", b.NsPerOp)
		}
	}
	if len(back.Targets) == 0 {
		t.Error("no targets judged")
	}
	for _, tg := range back.Targets {
		if tg.Judged {
			t.Errorf("target %q judged in -short mode", tg.Name)
		}
	}
}
