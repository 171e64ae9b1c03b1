package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nuid"

	"github.com/beamline/registry-syncer/client"
)

// attrFlags collects repeated --attr k=v.
type attrFlags map[string]string

func (a attrFlags) String() string { return "" }

func (a attrFlags) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("want k=v, got %q", s)
	}
	a[k] = v
	return nil
}

// callFlags are the flags resolve and invoke share.
type callFlags struct {
	fs     *flag.FlagSet
	attrs  attrFlags
	sticky *string
	asJSON *bool
	wait   *time.Duration
}

func newCallFlags(name string) *callFlags {
	f := &callFlags{fs: flag.NewFlagSet(name, flag.ContinueOnError), attrs: attrFlags{}}
	f.fs.SetOutput(io.Discard)
	f.fs.Var(f.attrs, "attr", "a request attribute k=v (repeatable): tenant_id, environment, policy_id, …")
	f.sticky = f.fs.String("sticky", "", "sticky key (default: the attribute named by the extension's metadata.sticky_attr)")
	f.asJSON = f.fs.Bool("json", false, "print JSON")
	f.wait = f.fs.Duration("timeout", 10*time.Second, "how long to wait for the registry snapshot")
	return f
}

// parse parses flags and the one extension id, in any order.
func (f *callFlags) parse(args []string) (string, error) {
	var pos []string
	for {
		if err := f.fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return "", &helpRequest{f.fs}
			}
			return "", usagef("%v", err)
		}
		if f.fs.NArg() == 0 {
			break
		}
		pos = append(pos, f.fs.Arg(0))
		args = f.fs.Args()[1:]
	}
	switch {
	case len(pos) == 0:
		return "", usagef("missing extension id")
	case len(pos) > 1:
		return "", usagef("unexpected argument %q", pos[1])
	case *f.wait <= 0:
		return "", usagef("-timeout must be positive")
	}
	return pos[0], nil
}

// routerClient connects to NATS and bootstraps a client exactly as `syncer watch`
// does (the same environment), waiting up to wait for the current snapshot. The
// returned func stops the client and closes the connection.
func routerClient(ctx context.Context, cfg *config, log *slog.Logger, wait time.Duration, cmd string) (*client.Client, func(), error) {
	nc, closed, err := connectNATS(ctx, cfg, log, false)
	if err != nil {
		return nil, nil, err
	}
	closeNC := func() {
		nc.Close()
		<-closed
	}
	cl, err := client.New(nc, client.Config{Prefix: cfg.Publisher.Prefix, Logger: log, WaitBootstrap: true, TrustedKeys: cfg.TrustedKeys,
		OnError: func(err error) { log.WarnContext(ctx, cmd+": rejected a payload", "error", err) }})
	if err != nil {
		closeNC()
		return nil, nil, err
	}
	// The client keeps following the registry after Start (a long invoke --count sees
	// changes), so its context is ctx; only the wait for the first snapshot is bounded.
	runCtx, cancel := context.WithCancel(ctx)
	timer := time.AfterFunc(wait, cancel)
	err = cl.Start(runCtx)
	if err == nil && !timer.Stop() {
		err = runCtx.Err() // the timer fired as Start returned: the client is stopping
	}
	if err != nil {
		cancel()
		cl.Stop()
		closeNC()
		if ctx.Err() == nil && runCtx.Err() != nil {
			return nil, nil, fmt.Errorf("%s: no registry snapshot on %s.* within %s (is a syncer running, and does EXTENSION_REGISTRY_SUBJECT_PREFIX match?)",
				cmd, cfg.Publisher.Prefix, wait)
		}
		return nil, nil, fmt.Errorf("%s: %w", cmd, err)
	}
	return cl, func() { cancel(); cl.Stop(); closeNC() }, nil
}

// cmdResolve prints what a router would call for an extension and request
// attributes, without calling it.
func cmdResolve(ctx context.Context, e *env, args []string) error {
	f := newCallFlags("resolve")
	id, err := f.parse(args)
	if err != nil {
		return err
	}
	cfg, err := e.config()
	if err != nil {
		return err
	}
	log := newLogger(e.stderr, cfg)
	cl, done, err := routerClient(ctx, cfg, log, *f.wait, "resolve")
	if err != nil {
		return err
	}
	defer done()
	plan, rerr := cl.Resolve(id, f.attrs, *f.sticky)
	if plan != nil {
		if *f.asJSON {
			out, err := json.MarshalIndent(planJSON(plan, cl.Revision()), "", "  ")
			if err != nil {
				return err
			}
			fmt.Fprintln(e.stdout, string(out))
		} else {
			printPlan(e.stdout, plan, cl.Revision())
		}
	}
	if rerr != nil {
		return fmt.Errorf("resolve: %w", rerr)
	}
	return nil
}

// planOut is `syncer resolve --json`: the client's Plan with durations in
// milliseconds.
type planOut struct {
	Revision int64 `json:"revision"`
	*client.Plan
	Breaker breakerOut `json:"breaker"`
}

type breakerOut struct {
	FailureThreshold    int     `json:"failure_threshold"`
	ErrorRateThreshold  float64 `json:"error_rate_threshold"`
	WindowSeconds       float64 `json:"window_seconds"`
	HalfOpenMaxRequests int     `json:"half_open_max_requests"`
	MinRequests         int     `json:"min_requests"`
	OpenTimeoutMS       int64   `json:"open_timeout_ms"`
}

func planJSON(p *client.Plan, rev int64) planOut {
	b := p.Breaker
	return planOut{Revision: rev, Plan: p, Breaker: breakerOut{FailureThreshold: b.FailureThreshold,
		ErrorRateThreshold: b.ErrorRateThreshold, WindowSeconds: b.Window.Seconds(), HalfOpenMaxRequests: b.HalfOpenMaxRequests,
		MinRequests: b.MinRequests, OpenTimeoutMS: b.OpenTimeout.Milliseconds()}}
}

func printPlan(w io.Writer, p *client.Plan, rev int64) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "extension\t%s (%s), registry revision %d\n", p.Extension, p.Type, rev)
	via := p.Match
	if p.Match == "percent" {
		via = fmt.Sprintf("$percent, bucket %d of 10000", p.Bucket)
	}
	if via != "" {
		via = "; selected by " + via
	}
	fmt.Fprintf(tw, "version\t%s (subject %s)%s\n", p.Version, p.VersionSubject, via)
	fmt.Fprintf(tw, "subject\t%s\n", p.Subject)
	target := p.Target
	switch {
	case target == "":
		target = "none"
	case p.StickyKey != "":
		target += fmt.Sprintf(" (sticky key %q)", p.StickyKey)
	case len(p.Instances) > 0:
		target += " (one weighted draw; see the shares below)"
	}
	fmt.Fprintf(tw, "target\t%s\n", target)
	fmt.Fprintf(tw, "timeout\t%d ms, retry %d (timeouts only, backoff 100·2^(n−1) ms)\n", p.TimeoutMS, p.Retry)
	fmt.Fprintf(tw, "limits\tpayload %d B, metadata %d B\n", p.MaxPayloadBytes, p.MaxMetadataBytes)
	b := p.Breaker
	fmt.Fprintf(tw, "breaker\t%s: opens after %d consecutive failures or an error rate ≥ %g over %s (min %d calls); open %s; half-open max %d\n",
		p.BreakerState, b.FailureThreshold, b.ErrorRateThreshold, b.Window, b.MinRequests, b.OpenTimeout, b.HalfOpenMaxRequests)
	for _, pr := range p.Problems {
		fmt.Fprintf(tw, "ignored\t%s\n", pr)
	}
	if len(p.Instances) == 0 {
		fmt.Fprintf(tw, "instances\tnone: the version's subject is called\n")
		tw.Flush()
		return
	}
	tw.Flush()
	fmt.Fprintln(w, "instances:")
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  INSTANCE\tSUBJECT\tWEIGHT\tHEALTH\tENABLED\tUSABLE\tSHARE\tBREAKER")
	for _, in := range p.Instances {
		fmt.Fprintf(tw, "  %s\t%s\t%d\t%s\t%v\t%v\t%.1f%%\t%s\n", in.InstanceID, in.Subject, in.Weight, in.HealthStatus,
			in.Enabled, in.Usable, in.Share*100, in.BreakerState)
	}
	tw.Flush()
}

// callLine is one call of `syncer invoke --json`.
type callLine struct {
	N         int             `json:"n"`
	Outcome   string          `json:"outcome"`
	Version   string          `json:"version,omitempty"`
	Target    string          `json:"target,omitempty"`
	Subject   string          `json:"subject,omitempty"`
	Attempts  int             `json:"attempts"`
	LatencyMS float64         `json:"latency_ms"`
	Reply     json.RawMessage `json:"reply,omitempty"`
	Error     string          `json:"error,omitempty"`
}

// summaryLine is the last line of `syncer invoke --json`.
type summaryLine struct {
	Summary struct {
		Calls    uint64            `json:"calls"`
		Outcomes map[string]uint64 `json:"outcomes"`
		Retries  uint64            `json:"retries"`
		P50MS    float64           `json:"p50_ms"`
		P95MS    float64           `json:"p95_ms"`
		P99MS    float64           `json:"p99_ms"`
	} `json:"summary"`
}

// cmdInvoke calls an extension through client.Invoke, exactly as a router does,
// and prints each result and a summary.
func cmdInvoke(ctx context.Context, e *env, args []string) error {
	f := newCallFlags("invoke")
	payload := f.fs.String("payload", "", "the request payload (JSON; default null)")
	metadata := f.fs.String("metadata", "", "the request metadata (a JSON object; default {})")
	traceID := f.fs.String("trace-id", "", "trace_id of the requests (default: a new one per call)")
	count := f.fs.Int("count", 1, "number of calls")
	rate := f.fs.Float64("rate", 0, "calls per second, one at a time (0: back to back)")
	id, err := f.parse(args)
	if err != nil {
		return err
	}
	switch {
	case *count < 1:
		return usagef("-count must be at least 1")
	case *rate < 0:
		return usagef("-rate must not be negative")
	case *payload != "" && !json.Valid([]byte(*payload)):
		return usagef("-payload is not valid JSON")
	case *metadata != "" && !json.Valid([]byte(*metadata)):
		return usagef("-metadata is not valid JSON")
	}
	cfg, err := e.config()
	if err != nil {
		return err
	}
	log := newLogger(e.stderr, cfg)
	cl, done, err := routerClient(ctx, cfg, log, *f.wait, "invoke")
	if err != nil {
		return err
	}
	defer done()

	req := client.Request{TenantID: f.attrs["tenant_id"], StickyKey: *f.sticky}
	if *payload != "" {
		req.Payload = json.RawMessage(*payload)
	}
	if *metadata != "" {
		req.Metadata = json.RawMessage(*metadata)
	}
	var tick *time.Ticker
	if *rate > 0 {
		tick = time.NewTicker(time.Duration(float64(time.Second) / *rate))
		defer tick.Stop()
	}
	_ = cl.CallStats() // start counting now
	failed, made := 0, 0
	var lastErr error
loop:
	for n := 1; n <= *count; n++ {
		if n > 1 && tick != nil {
			select {
			case <-tick.C:
			case <-ctx.Done():
				break loop
			}
		}
		if ctx.Err() != nil {
			break
		}
		req.TraceID = *traceID
		if req.TraceID == "" {
			req.TraceID = nuid.Next()
		}
		start := time.Now()
		res, err := cl.Invoke(ctx, id, req, f.attrs)
		made++
		printCall(e.stdout, *f.asJSON, n, res, err, time.Since(start))
		if err != nil {
			failed++
			lastErr = err
		}
	}
	stats := cl.CallStats().Extension(id)
	printSummary(e.stdout, *f.asJSON, &stats)
	if failed > 0 {
		if made == 1 {
			return fmt.Errorf("invoke: %w", lastErr)
		}
		return fmt.Errorf("invoke: %d of %d calls failed (last: %w)", failed, made, lastErr)
	}
	return nil
}

func printCall(w io.Writer, asJSON bool, n int, res *client.Result, err error, took time.Duration) {
	line := callLine{N: n, Outcome: client.OutcomeSuccess, LatencyMS: float64(took.Microseconds()) / 1000}
	if res != nil {
		line.Version, line.Target, line.Subject, line.Attempts, line.Reply = res.Version, res.Target, res.Subject, res.Attempts, res.Reply
		line.LatencyMS = float64(res.Latency.Microseconds()) / 1000
	}
	var ie *client.InvokeError
	if errors.As(err, &ie) {
		line.Outcome, line.Error = ie.Code, err.Error()
		line.Version, line.Target, line.Subject, line.Attempts = ie.Version, ie.Target, ie.Subject, ie.Attempts
	} else if err != nil {
		line.Outcome, line.Error = client.CodeExtensionError, err.Error()
	}
	if asJSON {
		data, _ := json.Marshal(line)
		fmt.Fprintln(w, string(data))
		return
	}
	target := line.Target
	if target == "" {
		target = "-"
	}
	fmt.Fprintf(w, "%d %s %.3fms %s attempts=%d", n, line.Outcome, line.LatencyMS, target, line.Attempts)
	if line.Error != "" {
		fmt.Fprintf(w, ": %s", line.Error)
	}
	if len(line.Reply) > 0 {
		fmt.Fprintf(w, " %s", line.Reply)
	}
	fmt.Fprintln(w)
}

func printSummary(w io.Writer, asJSON bool, s *client.TargetStats) {
	ms := func(q float64) float64 { return float64(s.Quantile(q).Microseconds()) / 1000 }
	if asJSON {
		var l summaryLine
		l.Summary.Calls, l.Summary.Outcomes, l.Summary.Retries = s.Calls, s.Outcomes, s.Retries
		l.Summary.P50MS, l.Summary.P95MS, l.Summary.P99MS = ms(.5), ms(.95), ms(.99)
		data, _ := json.Marshal(l)
		fmt.Fprintln(w, string(data))
		return
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(s.Outcomes)) {
		parts = append(parts, fmt.Sprintf("%s %d", k, s.Outcomes[k]))
	}
	fmt.Fprintf(w, "%d calls: %s; retries %d; latency p50 %.3fms p95 %.3fms p99 %.3fms\n",
		s.Calls, strings.Join(parts, ", "), s.Retries, ms(.5), ms(.95), ms(.99))
}
