// Command bench measures the registry syncer the way its users would judge it (`make
// bench`; see BENCHMARKS.md): change propagation from a COMMIT to a router client against
// a raw relay built here on the same machine in the same run (the floor), commit
// throughput with the registry triggers against a bare table, a 30-second write burst,
// 100,000 extensions, 1,000 clients on one change, the client's lookups, and the control loop's
// cost for 1,000 reporting routers.
//
// Everything runs against a private PostgreSQL cluster (fsync on) and an in-process NATS
// server with JetStream, both started here and stopped at exit (also on error or Ctrl-C),
// and the real `syncer run` binary.
//
//	go run ./test/bench [-short] [-out DIR] [-only floor,product,burst,backlog,churn,scale,fanout,lookups,apply,control]
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// sectionNames in the order they run.
var sectionNames = []string{"floor", "product", "burst", "backlog", "churn", "scale", "fanout", "lookups", "apply", "control"}

type options struct {
	short       bool
	out         string
	only        map[string]bool
	syncerBin   string
	keepLogs    bool
	inprocess   bool   // run the syncer inside this process (profiling only)
	profile     string // directory for per-section CPU and heap profiles
	trace       string // directory for per-section execution traces
	syncerEnv   []string
	customRates bool
	log         io.Writer
	plan        plan
}

func (o *options) selected(name string) bool { return len(o.only) == 0 || o.only[name] }

// plan holds every size and duration; -short shrinks them to a smoke run.
type plan struct {
	Rates        []float64       `json:"rates_per_s"`
	Durations    []time.Duration `json:"-"`
	DurationsS   []float64       `json:"durations_s"`
	Warmup       time.Duration   `json:"-"`
	WarmupS      float64         `json:"warmup_s"`
	WriterConns  int             `json:"writer_connections"`
	Registry     int             `json:"registry_extensions"`
	Burst        time.Duration   `json:"-"`
	BurstS       float64         `json:"burst_s"`
	BareS        float64         `json:"bare_s"`
	Bare         time.Duration   `json:"-"`
	IsolatedS    float64         `json:"isolated_commit_rate_s"`
	Isolated     time.Duration   `json:"-"`
	BurstWriters int             `json:"burst_writers"`
	BurstClients int             `json:"burst_clients"`
	Scale        int             `json:"scale_extensions"`
	FanClients   int             `json:"fanout_clients"`
	FanConns     int             `json:"fanout_connections"`
	FanChanges   int             `json:"fanout_changes"`
	// Backlog is the revisions committed while the syncer is stopped, published with the
	// default publish window on restart; BacklogSequential the same with a window of 1.
	Backlog           int64 `json:"backlog_revisions"`
	BacklogSequential int64 `json:"backlog_sequential_revisions"`
	// Churn is the revisions committed, one row each, while the syncer of a registry of
	// ChurnExtensions runs; its memory is read after.
	Churn           int64 `json:"churn_revisions"`
	ChurnExtensions int   `json:"churn_extensions"`
}

func fullPlan() plan {
	return plan{
		Rates:     []float64{10, 100, 1000},
		Durations: []time.Duration{15 * time.Second, 12 * time.Second, 8 * time.Second},
		Warmup:    time.Second, WriterConns: 8, Registry: 1000,
		Burst: 30 * time.Second, Bare: 10 * time.Second, Isolated: 5 * time.Second,
		BurstWriters: 4, BurstClients: 4,
		Scale:      100_000,
		FanClients: 1000, FanConns: 20, FanChanges: 100,
		Backlog: 100_000, BacklogSequential: 20_000,
		Churn: 100_000, ChurnExtensions: 10_000,
	}
}

func shortPlan() plan {
	return plan{
		Rates:     []float64{10, 100, 1000},
		Durations: []time.Duration{time.Second, time.Second, time.Second},
		Warmup:    200 * time.Millisecond, WriterConns: 4, Registry: 100,
		Burst: 2 * time.Second, Bare: time.Second, Isolated: 500 * time.Millisecond,
		BurstWriters: 4, BurstClients: 2,
		Scale:      1000,
		FanClients: 20, FanConns: 2, FanChanges: 5,
		Backlog: 2000, BacklogSequential: 500,
		Churn: 2000, ChurnExtensions: 500,
	}
}

func (p *plan) fill() {
	p.DurationsS = nil
	for _, d := range p.Durations {
		p.DurationsS = append(p.DurationsS, d.Seconds())
	}
	p.WarmupS, p.BurstS, p.BareS, p.IsolatedS = p.Warmup.Seconds(), p.Burst.Seconds(), p.Bare.Seconds(), p.Isolated.Seconds()
}

// parseArgs reads the command line.
func parseArgs(args []string, log io.Writer) (*options, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(log)
	short := fs.Bool("short", false, "smoke mode: tiny durations and sizes (CI); no timing targets are judged")
	out := fs.String("out", "bench-results", "directory of the JSON result files")
	only := fs.String("only", "", "comma-separated sections to run: "+strings.Join(sectionNames, ","))
	syncerBin := fs.String("syncer", "bin/syncer", "the syncer binary (make build); built with go build if missing")
	keep := fs.Bool("keep-logs", false, "keep the syncer logs (their directory is printed at the end)")
	inproc := fs.Bool("syncer-inprocess", false, "profiling: run the syncer inside the benchmark process, so -profile and -trace include it (its RSS figures are then the benchmark's)")
	profile := fs.String("profile", "", "write a CPU and a heap profile per section (pprof) into this directory")
	traceDir := fs.String("trace", "", "write an execution trace per section into this directory (large: use with -only and -short)")
	rates := fs.String("rates", "", "experiments: paced rates of the floor and product sections as RATE[:DURATION],... (default 10:15s,100:12s,1000:8s; -short 1s each)")
	var syncerEnv multiFlag
	fs.Var(&syncerEnv, "syncer-env", "experiments: extra KEY=VALUE for every `syncer run` (repeatable), e.g. EXTENSION_REGISTRY_SNAPSHOT_INTERVAL=1h")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	o := &options{short: *short, out: *out, syncerBin: *syncerBin, keepLogs: *keep, log: log, only: map[string]bool{},
		inprocess: *inproc, profile: *profile, trace: *traceDir, syncerEnv: syncerEnv}
	for _, s := range strings.Split(*only, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		known := false
		for _, n := range sectionNames {
			known = known || n == s
		}
		if !known {
			return nil, fmt.Errorf("-only: unknown section %q (sections: %s)", s, strings.Join(sectionNames, ","))
		}
		o.only[s] = true
	}
	o.plan = fullPlan()
	if o.short {
		o.plan = shortPlan()
	}
	if *rates != "" {
		o.customRates = true
		o.plan.Rates, o.plan.Durations = nil, nil
		for _, item := range strings.Split(*rates, ",") {
			rs, ds, hasD := strings.Cut(strings.TrimSpace(item), ":")
			r, err := strconv.ParseFloat(rs, 64)
			if err != nil || r <= 0 {
				return nil, fmt.Errorf("-rates: bad rate %q", rs)
			}
			d := 10 * time.Second
			if hasD {
				if d, err = time.ParseDuration(ds); err != nil || d <= 0 {
					return nil, fmt.Errorf("-rates: bad duration %q", ds)
				}
			}
			o.plan.Rates, o.plan.Durations = append(o.plan.Rates, r), append(o.plan.Durations, d)
		}
	}
	o.plan.fill()
	return o, nil
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, " ") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

// active is the environment of the running benchmark, for the emergency cleanup.
var active atomic.Pointer[env]

func main() {
	o, err := parseArgs(os.Args[1:], os.Stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sigs
		fmt.Fprintln(os.Stderr, "bench: interrupted; stopping everything it started (again to force)")
		cancel()
		select {
		case <-sigs:
		case <-time.After(30 * time.Second):
		}
		if e := active.Load(); e != nil {
			e.close()
		}
		os.Exit(130)
	}()
	_, err = run(ctx, o)
	if ctx.Err() != nil {
		os.Exit(130)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// ensureSyncer finds the syncer binary, building it when it is missing.
func ensureSyncer(ctx context.Context, o *options, tmp string) error {
	if st, err := os.Stat(o.syncerBin); err == nil && !st.IsDir() {
		abs, err := filepath.Abs(o.syncerBin)
		o.syncerBin = abs
		return err
	}
	bin := filepath.Join(tmp, "syncer")
	fmt.Fprintf(o.log, "bench: %s not found; building ./cmd/syncer\n", o.syncerBin)
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/beamline/registry-syncer/cmd/syncer")
	cmd.Stdout, cmd.Stderr = o.log, o.log
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("build the syncer: %w", err)
	}
	o.syncerBin = bin
	return nil
}

// section is one part of the benchmark.
type section struct {
	name string
	run  func(ctx context.Context, e *env, r *Results) error
}

var sections = []section{
	{"floor", runFloor},
	{"product", runProduct},
	{"burst", runBurst},
	{"backlog", runBacklog},
	{"churn", runChurn},
	{"scale", runScale},
	{"fanout", runFanout},
	{"lookups", runLookups},
	{"apply", runApply},
	{"control", runControl},
}

// run runs the selected sections, writes the result file and prints the summary. The
// returned error joins every section's failure.
func run(ctx context.Context, o *options) (*Results, error) {
	started := time.Now()
	res := &Results{Started: started.UTC(), Short: o.short, Plan: o.plan,
		Experimental: o.inprocess || len(o.syncerEnv) > 0 || o.customRates}
	e := &env{opts: o}
	active.Store(e)
	defer e.close()

	tmp, err := os.MkdirTemp("", "registry-bench-")
	if err != nil {
		return res, err
	}
	e.onClose(func() { _ = os.RemoveAll(tmp) })
	if err := ensureSyncer(ctx, o, tmp); err != nil {
		return res, err
	}
	if err := startInfra(e); err != nil {
		return res, err
	}
	res.Machine = machineFacts(ctx, e)
	var errs []error
	list := sections
	if o.selected("floor") && o.selected("product") {
		// Together, alternating at every rate, so that both see the same machine.
		list = append([]section{{"floor+product", runPropagation}}, sections[2:]...)
	}
	for _, s := range list {
		if s.name != "floor+product" && !o.selected(s.name) {
			continue
		}
		if ctx.Err() != nil {
			break
		}
		e.logf("section %s: start", s.name)
		t := time.Now()
		p0 := cpuPressure()
		se := e.child()
		stopProfile, err := profileSection(o, s.name)
		if err == nil {
			err = s.run(ctx, se, res)
		}
		stopProfile()
		se.close()
		el := time.Since(t)
		st := SectionTime{Section: s.name, Seconds: round1(el.Seconds()), LoadAvg: loadAvg()}
		if p1 := cpuPressure(); p0 >= 0 && p1 >= p0 {
			st.CPUPressurePct = round1(100 * float64(p1-p0) / float64(el.Microseconds()))
		}
		res.SectionSeconds = append(res.SectionSeconds, st)
		if err != nil {
			e.logf("section %s: FAILED: %v", s.name, err)
			errs = append(errs, fmt.Errorf("section %s: %w", s.name, err))
			res.Errors = append(res.Errors, fmt.Sprintf("%s: %v", s.name, err))
			continue
		}
		e.logf("section %s: done in %s (CPU pressure %.0f%%, load average %s)", s.name, el.Round(100*time.Millisecond), st.CPUPressurePct, st.LoadAvg)
	}
	res.Ratios = ratios(res)
	res.Targets = judge(res)
	res.Finished = time.Now().UTC()
	res.DurationS = round1(time.Since(started).Seconds())

	if err := os.MkdirAll(o.out, 0o755); err != nil {
		errs = append(errs, err)
	} else {
		path := filepath.Join(o.out, started.UTC().Format("20060102T150405Z")+".json")
		data, _ := json.MarshalIndent(res, "", "  ")
		if err := os.WriteFile(path, append(data, '\n'), 0o644); err != nil {
			errs = append(errs, err)
		} else {
			res.File = path
		}
	}
	printSummary(o.log, res)
	if res.File != "" {
		fmt.Fprintf(o.log, "\nresults: %s\n", res.File)
	}
	return res, errors.Join(errs...)
}

// child is an environment for one section, closed when the section ends (or with its
// parent on an interrupt).
func (e *env) child() *env {
	c := &env{opts: e.opts, pg: e.pg, nats: e.nats, logs: e.logs}
	e.onClose(c.close)
	return c
}

// goroutines caps the benchmark's own parallel set-up work.
var goroutines = max(2, runtime.NumCPU())
