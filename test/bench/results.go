package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats-server/v2/server"
)

// Results is the JSON result file of one run.
type Results struct {
	Started        time.Time      `json:"started"`
	Finished       time.Time      `json:"finished"`
	DurationS      float64        `json:"duration_s"`
	Short          bool           `json:"short"`
	Experimental   bool           `json:"experimental"` // -rates, -syncer-env or -syncer-inprocess: targets not judged
	Machine        Machine        `json:"machine"`
	Plan           plan           `json:"plan"`
	Floor          *FloorResult   `json:"floor,omitempty"`
	Product        *ProductResult `json:"product,omitempty"`
	Ratios         []Ratio        `json:"ratios,omitempty"`
	Burst          *BurstResult   `json:"burst,omitempty"`
	Backlog        *BacklogResult `json:"backlog,omitempty"`
	Churn          *ChurnResult   `json:"churn,omitempty"`
	Scale          *ScaleResult   `json:"scale,omitempty"`
	Fanout         *FanoutResult  `json:"fanout,omitempty"`
	Lookups        *LookupResult  `json:"lookups,omitempty"`
	Apply          *ApplyResult   `json:"apply,omitempty"`
	Control        *ControlResult `json:"control,omitempty"`
	Targets        []Target       `json:"targets"`
	SectionSeconds []SectionTime  `json:"section_seconds"`
	Errors         []string       `json:"errors,omitempty"`
	File           string         `json:"-"`
}

// SectionTime is how long one section took.
type SectionTime struct {
	Section string  `json:"section"`
	Seconds float64 `json:"seconds"`
	// Share of the section's wall time during which some runnable task on the machine
	// waited for a CPU (/proc/pressure/cpu), and the load average at its end: how busy
	// the machine was, including with processes that are not the benchmark's.
	CPUPressurePct float64 `json:"cpu_pressure_pct"`
	LoadAvg        string  `json:"load_average"`
}

// cpuPressure returns the cumulative "some" CPU stall time in microseconds (-1 when the
// kernel does not report it).
func cpuPressure() int64 {
	data, err := os.ReadFile("/proc/pressure/cpu")
	if err != nil {
		return -1
	}
	line, _, _ := strings.Cut(string(data), "\n")
	i := strings.Index(line, "total=")
	if i < 0 {
		return -1
	}
	var v int64
	fmt.Sscan(line[i+6:], &v)
	return v
}

func loadAvg() string {
	data, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

// Machine describes where the run happened.
type Machine struct {
	NProc             int    `json:"nproc"`
	GOMAXPROCS        int    `json:"gomaxprocs"`
	CPU               string `json:"cpu"`
	MemTotal          string `json:"mem_total"`
	Kernel            string `json:"kernel"`
	Go                string `json:"go"`
	PostgreSQL        string `json:"postgresql"`
	Fsync             string `json:"fsync"`
	SynchronousCommit string `json:"synchronous_commit"`
	WALSyncMethod     string `json:"wal_sync_method"`
	NATSServer        string `json:"nats_server"`
	// The source tree measured: HEAD and the files that differed from it (the syncer is
	// built from the working tree).
	Commit        string   `json:"commit"`
	ModifiedFiles []string `json:"modified_files,omitempty"`
}

func machineFacts(ctx context.Context, e *env) Machine {
	m := Machine{NProc: runtime.NumCPU(), GOMAXPROCS: runtime.GOMAXPROCS(0), Go: runtime.Version(), NATSServer: server.VERSION + " (in-process, JetStream file storage)"}
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(l, "model name"); ok {
				m.CPU = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, l := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(l, "MemTotal:"); ok {
				var kb int64
				fmt.Sscan(strings.TrimSpace(v), &kb)
				m.MemTotal = fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
			}
		}
	}
	if data, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(data))
	}
	if out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output(); err == nil {
		m.Commit = strings.TrimSpace(string(out))
	}
	if out, err := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output(); err == nil {
		for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if f := strings.TrimSpace(l); f != "" {
				m.ModifiedFiles = append(m.ModifiedFiles, f)
			}
		}
	}
	conn, err := pgx.Connect(ctx, e.pg.AdminURL())
	if err == nil {
		defer conn.Close(context.WithoutCancel(ctx))
		_ = conn.QueryRow(ctx, `SELECT version(), current_setting('fsync'), current_setting('synchronous_commit'), current_setting('wal_sync_method')`).
			Scan(&m.PostgreSQL, &m.Fsync, &m.SynchronousCommit, &m.WALSyncMethod)
		if i := strings.Index(m.PostgreSQL, " on "); i > 0 {
			m.PostgreSQL = m.PostgreSQL[:i]
		}
	}
	return m
}

// Ratio is product ÷ floor at one rate.
type Ratio struct {
	Rate       float64 `json:"rate_per_s"`
	ProductP50 float64 `json:"product_p50_ms"`
	FloorP50   float64 `json:"floor_p50_ms"`
	P50        float64 `json:"p50_ratio"`
	ProductP99 float64 `json:"product_p99_ms"`
	FloorP99   float64 `json:"floor_p99_ms"`
	P99        float64 `json:"p99_ratio"`
	// Diagnostic: the product against the relay that also stores in JetStream.
	P50VsJS float64 `json:"p50_ratio_vs_floor_with_jetstream"`
	P99VsJS float64 `json:"p99_ratio_vs_floor_with_jetstream"`
	// Diagnostic, where the product's writers fell short of the rate: the product against
	// the floor paced at the rate they achieved (0: not run).
	AtProductRate    float64 `json:"floor_rate_at_product_rate_per_s,omitempty"`
	FloorP50AtRate   float64 `json:"floor_p50_ms_at_product_rate,omitempty"`
	FloorP99AtRate   float64 `json:"floor_p99_ms_at_product_rate,omitempty"`
	P50AtProductRate float64 `json:"p50_ratio_vs_floor_at_product_rate,omitempty"`
	P99AtProductRate float64 `json:"p99_ratio_vs_floor_at_product_rate,omitempty"`
}

func ratios(r *Results) []Ratio {
	if r.Floor == nil || r.Product == nil {
		return nil
	}
	var out []Ratio
	for i, pr := range r.Product.Rates {
		if i >= len(r.Floor.Rates) {
			break
		}
		fl := r.Floor.Rates[i]
		ra := Ratio{Rate: pr.Pace.Target,
			ProductP50: pr.EndToEnd.P50, FloorP50: fl.EndToEnd.P50, P50: ratio(pr.EndToEnd.P50, fl.EndToEnd.P50),
			ProductP99: pr.EndToEnd.P99, FloorP99: fl.EndToEnd.P99, P99: ratio(pr.EndToEnd.P99, fl.EndToEnd.P99),
			P50VsJS: ratio(pr.EndToEnd.P50, fl.JSEndToEnd.P50), P99VsJS: ratio(pr.EndToEnd.P99, fl.JSEndToEnd.P99)}
		if fl.AtProductRate != nil && fl.AtProductRateE2E != nil {
			ra.AtProductRate, ra.FloorP50AtRate, ra.FloorP99AtRate = fl.AtProductRate.Achieved, fl.AtProductRateE2E.P50, fl.AtProductRateE2E.P99
			ra.P50AtProductRate, ra.P99AtProductRate = ratio(pr.EndToEnd.P50, fl.AtProductRateE2E.P50), ratio(pr.EndToEnd.P99, fl.AtProductRateE2E.P99)
		}
		out = append(out, ra)
	}
	return out
}

// Target is one of the product's goals and whether this run met it.
type Target struct {
	Name   string `json:"name"`
	Goal   string `json:"goal"`
	Value  string `json:"value"`
	Met    bool   `json:"met"`
	Judged bool   `json:"judged"` // false in -short mode (smoke sizes say nothing)
}

func judge(r *Results) []Target {
	var ts []Target
	add := func(name, goal, value string, met bool) {
		ts = append(ts, Target{Name: name, Goal: goal, Value: value, Met: met, Judged: !r.Short && !r.Experimental})
	}
	for _, ra := range r.Ratios {
		if ra.Rate < 100 {
			continue
		}
		add(fmt.Sprintf("product ÷ floor p50 at %.0f/s", ra.Rate), "≤ 1.5",
			fmt.Sprintf("%.2f (%.3f ÷ %.3f ms)", ra.P50, ra.ProductP50, ra.FloorP50), ra.P50 > 0 && ra.P50 <= 1.5)
		add(fmt.Sprintf("product ÷ floor p99 at %.0f/s", ra.Rate), "≤ 2.0",
			fmt.Sprintf("%.2f (%.3f ÷ %.3f ms)", ra.P99, ra.ProductP99, ra.FloorP99), ra.P99 > 0 && ra.P99 <= 2.0)
	}
	if b := r.Burst; b != nil {
		add("registry commits/s vs bare (fsync on, burst)", "≥ 50%",
			fmt.Sprintf("%.1f%% (%.0f vs %.0f/s)", b.PercentOfBare, b.CommitsPerS, b.BareCommitsPerS), b.PercentOfBare >= 50)
		add("burst: every revision delivered", "all",
			fmt.Sprintf("%d committed, %d published, clients at final revision with equal checksum: %v", b.RevisionsCommitted, b.RevisionsPublished, b.ChecksumsEqual && b.AllCaughtUp),
			b.RevisionsCommitted == b.RevisionsPublished && b.ChecksumsEqual && b.AllCaughtUp)
		add("burst: last client caught up after the last commit", "≤ 1 s",
			fmt.Sprintf("%.1f ms", b.CatchUpMS), b.AllCaughtUp && b.CatchUpMS <= 1000)
	}
	if b := r.Backlog; b != nil && b.Pipelined != nil {
		seq := "not measured"
		if b.Sequential != nil {
			seq = fmt.Sprintf("%.0f/s with a window of 1: ratio %.1f", b.Sequential.PublishPerS, b.Ratio)
		}
		add(fmt.Sprintf("backlog of %d revisions published on restart (%d extensions)", b.Pipelined.Revisions, b.Extensions), "≥ 5,000/s",
			fmt.Sprintf("%.0f/s (%s)", b.Pipelined.PublishPerS, seq), b.Pipelined.PublishPerS >= 5000)
		add("backlog: a late client gets the database's content", "equal checksum", fmt.Sprint(b.ChecksumsEqual), b.ChecksumsEqual)
	}
	if c := r.Churn; c != nil {
		add(fmt.Sprintf("%d extensions after %d revisions of churn: syncer RSS", c.Extensions, c.Revisions), "≤ 64 MB",
			fmt.Sprintf("peak %.1f MB, now %.1f MB", mb(c.SyncerPeakRSS), mb(c.SyncerRSS)), c.SyncerPeakRSS > 0 && c.SyncerPeakRSS <= 64<<20)
	}
	if s := r.Scale; s != nil {
		n := fmt.Sprintf("%d extensions", s.Extensions)
		add(n+": full reconcile", "≤ 1 s", fmt.Sprintf("%.0f ms (median of %v)", s.ReconcileMedianMS, s.ReconcileMS), s.ReconcileMedianMS > 0 && s.ReconcileMedianMS <= 1000)
		add(n+": new-client bootstrap", "≤ 1 s", fmt.Sprintf("%.0f ms (median of %v)", s.BootstrapMedianMS, s.BootstrapMS), s.BootstrapMedianMS > 0 && s.BootstrapMedianMS <= 1000)
		peak := max(s.SyncerPeakRSS, s.ColdPeakRSS)
		add(n+": syncer peak RSS", "≤ 300 MB", fmt.Sprintf("%.0f MB (live import %.0f MB, cold start %.0f MB)", mb(peak), mb(s.SyncerPeakRSS), mb(s.ColdPeakRSS)),
			peak > 0 && peak <= 300<<20)
	}
	if f := r.Fanout; f != nil {
		add(fmt.Sprintf("%d clients all updated, p99 over %d changes", f.Clients, f.Changes), "≤ 50 ms",
			fmt.Sprintf("%.1f ms (p50 %.1f, max %.1f)", f.AllUpdated.P99, f.AllUpdated.P50, f.AllUpdated.Max), f.AllUpdated.N > 0 && f.Incomplete == 0 && f.AllUpdated.P99 <= 50)
		add("JetStream consumer count with the clients", "unchanged",
			fmt.Sprintf("%d before, %d with clients, %d after", f.ConsumersBefore, f.ConsumersStart, f.ConsumersAfter),
			f.ConsumersBefore == f.ConsumersStart && f.ConsumersStart == f.ConsumersAfter)
	}
	if c := r.Control; c != nil {
		add(fmt.Sprintf("control loop, %d reporting routers", c.Routers), "≤ 10 % of a core", fmt.Sprintf("%.1f %% (%.1f ms per %.0f s interval)", c.CPUShare, c.MSPerInterval, c.IntervalS),
			c.CPUShare > 0 && c.CPUShare <= 10)
	}
	if a := r.Apply; a != nil && len(a.Sizes) == 2 {
		small, large := a.Sizes[0], a.Sizes[1]
		add(fmt.Sprintf("one-row delta applied at %d vs %d extensions", large.Extensions, small.Extensions), "≤ 2×",
			fmt.Sprintf("%.2f× (%.1f µs vs %.1f µs, medians of %d)", a.Ratio, large.NsPerOp/1000, small.NsPerOp/1000, len(small.Rounds)), a.Ratio > 0 && a.Ratio <= 2)
	}
	if l := r.Lookups; l != nil {
		for _, b := range l.Benches {
			if b.Name != "Lookup" {
				continue
			}
			add(fmt.Sprintf("Lookup, %d goroutine(s)", b.Goroutines), "≤ 50 ns, 0 allocs",
				fmt.Sprintf("%.1f ns per call, %d allocs", b.NsPerCall, b.AllocsPerOp), b.NsPerCall <= 50 && b.AllocsPerOp == 0)
		}
	}
	return ts
}

func triggerTimesText(m map[string]float64) string {
	parts := []string{fmt.Sprintf("total %.3f ms", m["total"])}
	var names []string
	for k := range m {
		if k != "total" {
			names = append(names, k)
		}
	}
	sort.Slice(names, func(i, j int) bool { return m[names[i]] > m[names[j]] })
	for _, k := range names {
		parts = append(parts, fmt.Sprintf("%s %.3f", k, m[k]))
	}
	return strings.Join(parts, ", ")
}

// topWaits formats the most frequent wait events.
func topWaits(m map[string]float64) string {
	type kv struct {
		k string
		v float64
	}
	var l []kv
	for k, v := range m {
		l = append(l, kv{k, v})
	}
	sort.Slice(l, func(i, j int) bool { return l[i].v > l[j].v || (l[i].v == l[j].v && l[i].k < l[j].k) })
	var parts []string
	for i, x := range l {
		if i == 5 {
			break
		}
		parts = append(parts, fmt.Sprintf("%s %.0f%%", x.k, x.v))
	}
	return strings.Join(parts, ", ")
}

func mb(b int64) float64 { return float64(b) / (1 << 20) }

func lat(l Latency) string {
	return fmt.Sprintf("%.3f / %.3f / %.3f / %.3f", l.P50, l.P90, l.P99, l.Max)
}

// printSummary prints the tables (Markdown, so BENCHMARKS.md can quote them).
func printSummary(w io.Writer, r *Results) {
	fmt.Fprintf(w, "\n## Results (%s, %s; %.0f s)\n\n", r.Started.Format(time.RFC3339), map[bool]string{true: "SHORT smoke run: sizes and durations too small to mean anything", false: "full run"}[r.Short]+map[bool]string{true: ", EXPERIMENT (-rates, -syncer-env or -syncer-inprocess)", false: ""}[r.Experimental], r.DurationS)
	m := r.Machine
	fmt.Fprintf(w, "Machine: %d CPUs (%s), %s RAM, Linux %s, %s; %s (fsync=%s, synchronous_commit=%s, wal_sync_method=%s); NATS %s.\n",
		m.NProc, m.CPU, m.MemTotal, m.Kernel, m.Go, m.PostgreSQL, m.Fsync, m.SynchronousCommit, m.WALSyncMethod, m.NATSServer)
	dirty := ""
	if len(m.ModifiedFiles) > 0 {
		dirty = fmt.Sprintf(" with %d modified files (%s)", len(m.ModifiedFiles), strings.Join(m.ModifiedFiles, ", "))
	}
	fmt.Fprintf(w, "Source: commit %s%s.\n", m.Commit, dirty)

	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', 0)
	row := func(cells ...string) { fmt.Fprintln(tw, "| "+strings.Join(cells, "\t| ")+"\t|") }
	sep := func(n int) {
		cells := make([]string, n)
		for i := range cells {
			cells[i] = "---"
		}
		row(cells...)
	}
	flush := func() { tw.Flush(); fmt.Fprintln(w) }

	if f := r.Floor; f != nil {
		fmt.Fprintf(w, "\n### Floor: raw relay, COMMIT returned -> subscriber (ms p50 / p90 / p99 / max; absolute)\n\n")
		row("rate", "achieved", "commit->subscriber", "commit->NOTIFY", "NOTIFY->SELECT done", "core publish->receive", "with JetStream store: commit->subscriber", "JetStream publish->ack")
		sep(8)
		for i, fr := range f.Rates {
			row(fmt.Sprintf("%.0f/s", r.Plan.Rates[i]), fmt.Sprintf("%.1f / %.1f", fr.Pace.Achieved, fr.WithJetStream.Achieved), lat(fr.EndToEnd), lat(fr.CommitToNotify),
				lat(fr.NotifyToSelected), lat(fr.PublishToReceive), lat(fr.JSEndToEnd), lat(fr.JetStreamAck))
		}
		flush()
	}
	if p := r.Product; p != nil {
		fmt.Fprintf(w, "### Product: COMMIT returned -> router client's OnChange, real syncer process, registry of %d (ms p50 / p90 / p99 / max; absolute)\n\n", p.Registry)
		row("rate", "achieved", "commit->OnChange", "commit->announced on the live subject", "announced->OnChange", "missing")
		sep(6)
		for i, pr := range p.Rates {
			row(fmt.Sprintf("%.0f/s", r.Plan.Rates[i]), fmt.Sprintf("%.1f", pr.Pace.Achieved), lat(pr.EndToEnd), lat(pr.CommitToAnnounced), lat(pr.AnnouncedToApplied), fmt.Sprint(pr.Missing))
		}
		flush()
	}
	if len(r.Ratios) > 0 {
		fmt.Fprintf(w, "### Ratios product ÷ floor (the headline; dimensionless)\n\n")
		row("rate", "p50 product / floor", "p50 ratio", "p99 product / floor", "p99 ratio", "diagnostic: product ÷ floor-with-JetStream p50 / p99",
			"diagnostic: product ÷ floor at the product's achieved rate p50 / p99")
		sep(7)
		for _, ra := range r.Ratios {
			atRate := "— (writers reached the rate)"
			if ra.AtProductRate > 0 {
				atRate = fmt.Sprintf("%.2f / %.2f (floor at %.0f/s: %.3f / %.3f ms)", ra.P50AtProductRate, ra.P99AtProductRate, ra.AtProductRate, ra.FloorP50AtRate, ra.FloorP99AtRate)
			}
			row(fmt.Sprintf("%.0f/s", ra.Rate), fmt.Sprintf("%.3f / %.3f ms", ra.ProductP50, ra.FloorP50), fmt.Sprintf("%.2f", ra.P50),
				fmt.Sprintf("%.3f / %.3f ms", ra.ProductP99, ra.FloorP99), fmt.Sprintf("%.2f", ra.P99), fmt.Sprintf("%.2f / %.2f", ra.P50VsJS, ra.P99VsJS), atRate)
		}
		flush()
	}
	if b := r.Burst; b != nil {
		fmt.Fprintf(w, "### Burst: %d writers as fast as they can for %.0f s, %d clients following\n\n", b.Writers, b.Seconds, b.Clients)
		row("figure", "value")
		sep(2)
		row("registry commits/s (fsync on, syncer + clients running)", fmt.Sprintf("%.0f", b.CommitsPerS))
		row(fmt.Sprintf("bare table commits/s (fsync on, same cluster, syncer idle, %g s: half before, half after the burst)", b.BareSeconds),
			fmt.Sprintf("%.0f (%.0f before, %.0f after)", b.BareCommitsPerS, b.BareBeforePerS, b.BareAfterPerS))
		row("registry ÷ bare (ratio)", fmt.Sprintf("%.1f%%", b.PercentOfBare))
		for _, c := range []struct {
			name string
			cr   *CommitRate
		}{{"fsync on, syncer stopped", b.DurableIsolated}, {"fsync OFF (second cluster)", b.NonDurable}} {
			if c.cr == nil {
				continue
			}
			row(fmt.Sprintf("%s, %g s each in alternating 1 s slices: registry / bare / bare+NOTIFY", c.name, c.cr.Seconds),
				fmt.Sprintf("%.0f / %.0f / %.0f commits/s (registry %.1f%% of bare)", c.cr.Registry, c.cr.Bare, c.cr.BareNotify, c.cr.PercentOfBare))
			row("  registry writers' backends (wait events)", topWaits(c.cr.RegistryWaits))
			row("  bare writers' backends", topWaits(c.cr.BareWaits))
			row("  bare+NOTIFY writers' backends", topWaits(c.cr.BareNotifyWaits))
			row("  time in the registry's trigger functions per commit (self time, includes lock waits inside them)", triggerTimesText(c.cr.TriggerMSPerCommit))
		}
		row("revisions committed / published", fmt.Sprintf("%d / %d", b.RevisionsCommitted, b.RevisionsPublished))
		row("snapshot writes during the burst", fmt.Sprintf("%d", b.SnapshotWrites))
		row("last commit -> every client has it", fmt.Sprintf("%.1f ms", b.CatchUpMS))
		var per []string
		for _, c := range b.PerClient {
			per = append(per, fmt.Sprintf("%d installs/%d deltas/%d resyncs", c.Installs, c.DeltasApplied, c.Resyncs))
		}
		row("per client", strings.Join(per, "; "))
		row("final checksum equal to the database", fmt.Sprintf("%v (revision %d)", b.ChecksumsEqual, b.FinalRevision))
		flush()
	}
	if b := r.Backlog; b != nil {
		fmt.Fprintf(w, "### Backlog: a syncer restarted after revisions were committed while it was stopped (%d extensions)\n\n", b.Extensions)
		row("publish window", "revisions", "committed at", "published at (stream timestamps)", "restart → caught up", "syncer peak RSS")
		sep(6)
		for _, br := range []*BacklogRun{b.Sequential, b.Pipelined} {
			if br != nil {
				row(strconv.Itoa(br.Window), strconv.FormatInt(br.Revisions, 10), fmt.Sprintf("%.0f/s", br.BuildPerS), fmt.Sprintf("%.0f/s", br.PublishPerS),
					fmt.Sprintf("%.1f s", br.RestartS), fmt.Sprintf("%.0f MB", br.PeakRSSMB))
			}
		}
		flush()
		fmt.Fprintf(w, "pipelined ÷ one at a time: %.1f; late client checksum equal: %v\n\n", b.Ratio, b.ChecksumsEqual)
	}
	if c := r.Churn; c != nil {
		fmt.Fprintf(w, "### Churn: %d one-row revisions on %d extensions with the syncer running\n\n", c.Revisions, c.Extensions)
		row("figure", "value")
		sep(2)
		row("revisions committed at", fmt.Sprintf("%.0f/s", c.CommitPerS))
		row("syncer peak RSS (VmHWM) / RSS after", fmt.Sprintf("%.1f MB / %.1f MB", mb(c.SyncerPeakRSS), mb(c.SyncerRSS)))
		row("Go heap in use / Go sys", fmt.Sprintf("%.1f MB / %.1f MB", c.HeapInuse/(1<<20), c.GoSys/(1<<20)))
		row("delta history", fmt.Sprintf("%.1f MB in %.0f deltas", c.HistoryBytes/(1<<20), c.HistoryDeltas))
		row("late client checksum equal to the database", fmt.Sprint(c.ChecksumsEqual))
		flush()
	}
	if s := r.Scale; s != nil {
		fmt.Fprintf(w, "### Scale: %d extensions (%d versions, %d instances)\n\n", s.Extensions, s.Versions, s.Instances)
		row("figure", "value")
		sep(2)
		row("bulk import (COPY of 3 tables, one transaction)", fmt.Sprintf("%.0f ms", s.ImportMS))
		row("import COMMIT -> running client has it", fmt.Sprintf("%.0f ms", s.ImportToClientMS))
		row("full reconcile (POST /admin/sync round trip)", fmt.Sprintf("median %.0f ms of %v", s.ReconcileMedianMS, s.ReconcileMS))
		row("snapshot on the wire (manifest size)", fmt.Sprintf("%d bytes (%.1f MB) in %d chunks", s.SnapshotBytes, mb(int64(s.SnapshotBytes)), s.SnapshotChunks))
		row("new-client bootstrap", fmt.Sprintf("median %.0f ms of %v", s.BootstrapMedianMS, s.BootstrapMS))
		row("client heap per snapshot (HeapAlloc delta after GC)", fmt.Sprintf("%.1f MB", mb(s.ClientHeapBytes)))
		row("syncer peak RSS, live import (VmHWM) / RSS after", fmt.Sprintf("%.0f MB / %.0f MB", mb(s.SyncerPeakRSS), mb(s.SyncerRSS)))
		row("fresh syncer: start -> ready / peak RSS after a reconcile", fmt.Sprintf("%.0f ms / %.0f MB", s.ColdStartReadyMS, mb(s.ColdPeakRSS)))
		row("one-row change -> OnChange at this size (ms p50/p90/p99/max)", lat(s.ChangeLatency))
		row("final checksum equal to the database", fmt.Sprintf("%v", s.ChecksumsEqual))
		flush()
	}
	if f := r.Fanout; f != nil {
		fmt.Fprintf(w, "### Fan-out: %d clients in this process over %d NATS connections, %d changes\n\n", f.Clients, f.Connections, f.Changes)
		passes := []*FanoutResult{f}
		if f.TinyRegistry != nil {
			passes = append(passes, f.TinyRegistry)
		}
		head := []string{"figure (ms p50 / p90 / p99 / max)"}
		for _, x := range passes {
			head = append(head, fmt.Sprintf("registry of %d", x.Registry))
		}
		row(head...)
		sep(len(head))
		line := func(name string, v func(x *FanoutResult) string) {
			cells := []string{name}
			for _, x := range passes {
				cells = append(cells, v(x))
			}
			row(cells...)
		}
		line("COMMIT -> all clients updated", func(x *FanoutResult) string { return lat(x.AllUpdated) })
		line("COMMIT -> first client updated", func(x *FanoutResult) string { return lat(x.FirstUpdated) })
		line("COMMIT -> each client (all pairs)", func(x *FanoutResult) string { return lat(x.PerClient) })
		line("CPU per change: clients / syncer", func(x *FanoutResult) string {
			return fmt.Sprintf("%.1f ms / %.1f ms", x.ClientsCPUPerChangeMS, x.SyncerCPUPerChangeMS)
		})
		line("bootstrap of all clients", func(x *FanoutResult) string { return fmt.Sprintf("%.0f ms", x.BootstrapAllMS) })
		line("Go heap of the process with all clients", func(x *FanoutResult) string { return fmt.Sprintf("%.0f MB", mb(x.HeapBytes)) })
		line("JetStream consumers before / with clients / after", func(x *FanoutResult) string {
			return fmt.Sprintf("%d / %d / %d", x.ConsumersBefore, x.ConsumersStart, x.ConsumersAfter)
		})
		line("final checksums equal to the database", func(x *FanoutResult) string { return fmt.Sprint(x.ChecksumsEqual) })
		flush()
	}
	if l := r.Lookups; l != nil {
		fmt.Fprintf(w, "### Client reads (registry of %d)\n\n", l.Registry)
		row("op", "goroutines", "ns per call", "ns/op (wall ÷ all ops)", "allocs/op", "B/op")
		sep(6)
		for _, b := range l.Benches {
			row(b.Name, fmt.Sprint(b.Goroutines), fmt.Sprintf("%.1f", b.NsPerCall), fmt.Sprintf("%.1f", b.NsPerOp), fmt.Sprint(b.AllocsPerOp), fmt.Sprint(b.BytesPerOp))
		}
		flush()
	}
	if a := r.Apply; a != nil {
		fmt.Fprintf(w, "### Apply: one one-row delta (cache.Snapshot.Apply), rounds alternating between sizes\n\n")
		row("extensions", "ns/op (median)", "rounds", "allocs/op", "B/op")
		sep(5)
		for _, sz := range a.Sizes {
			row(fmt.Sprint(sz.Extensions), fmt.Sprintf("%.0f", sz.NsPerOp), fmt.Sprint(sz.Rounds), fmt.Sprint(sz.AllocsPerOp), fmt.Sprint(sz.BytesPerOp))
		}
		flush()
		fmt.Fprintf(w, "large ÷ small: %.2f\n\n", a.Ratio)
	}
	if c := r.Control; c != nil {
		fmt.Fprintf(w, "### Control loop (%d routers reporting %d extensions each)\n\n", c.Routers, c.Extensions)
		row("report size", fmt.Sprintf("per interval (%.0f s)", c.IntervalS), "per report", "share of one core", "allocated per interval")
		sep(5)
		row(fmt.Sprintf("%d B", c.ReportBytes), fmt.Sprintf("%.1f ms", c.MSPerInterval), fmt.Sprintf("%.1f µs", c.USPerReport),
			fmt.Sprintf("%.1f %%", c.CPUShare), fmt.Sprintf("%.1f MB", c.AllocMBPerInterv))
		flush()
	}
	if len(r.Targets) > 0 {
		fmt.Fprintf(w, "### Targets\n\n")
		row("target", "goal", "this run", "met")
		sep(4)
		for _, t := range r.Targets {
			met := "not met"
			if t.Met {
				met = "met"
			}
			if !t.Judged {
				met += " (smoke or experiment: not judged)"
			}
			row(t.Name, t.Goal, t.Value, met)
		}
		flush()
	}
	if len(r.SectionSeconds) > 0 {
		var parts []string
		for _, s := range r.SectionSeconds {
			parts = append(parts, fmt.Sprintf("%s %.0f s (CPU pressure %.0f%%)", s.Section, s.Seconds, s.CPUPressurePct))
		}
		fmt.Fprintf(w, "Sections: %s. CPU pressure: share of the time some runnable task on the machine waited for a CPU.\n", strings.Join(parts, ", "))
	}
	for _, e := range r.Errors {
		fmt.Fprintf(w, "ERROR: %s\n", e)
	}
}
