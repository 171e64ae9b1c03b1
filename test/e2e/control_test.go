package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/DataDog/sketches-go/ddsketch"
	"github.com/DataDog/sketches-go/ddsketch/pb/sketchpb"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"github.com/beamline/registry-syncer/cache"
	"github.com/beamline/registry-syncer/client"
	"github.com/beamline/registry-syncer/protocol"
)

// service is a real extension service: a NATS responder on the extension's subject that
// fails on command (answers a non-object: invalid_response_format) and records arrivals.
type service struct {
	fail     atomic.Bool
	mu       sync.Mutex
	arrivals []time.Time
}

func (s *service) between(from, to time.Time) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, at := range s.arrivals {
		if !at.Before(from) && at.Before(to) {
			n++
		}
	}
	return n
}

// controlRouter is a router invoking the extension as fast as it can, with its own tally
// of outcomes and a copy of every "calls" entry its reports carried.
type controlRouter struct {
	id    string
	c     *client.Client
	tally map[string]*atomic.Uint64 // outcome class -> calls

	mu       sync.Mutex
	reported map[string]uint64 // outcome class -> calls, from the reports
	sketches []*ddsketch.DDSketch
	breakers map[string]bool // breaker states seen in reports
	autoAt   time.Time       // when it installed the auto-disabled extension
}

func classOf(err error) string {
	if err == nil {
		return protocol.ClassSuccess
	}
	var ie *client.InvokeError
	if !errors.As(err, &ie) {
		return "other"
	}
	return protocol.OutcomeClass(ie.Code)
}

// TestControlLoop: the "done when" of the control loop, with real extension services,
// several clients invoking, and the real `syncer run`: failures open the breakers; with
// the policy on, the quorum auto-disables the extension and every router stops calling it
// within 1 s of the decision; recovery re-enables it; extension_health matches what the
// clients observed (counts exact, percentiles within the sketch's error); the audit log
// holds both changes; `syncer wait` and `syncer status` reflect every router.
func TestControlLoop(t *testing.T) {
	t.Parallel()
	b := setup(t, "e2e.control")
	const subject = "beamline.ext.pre.flaky.v1"
	b.commit(t, `INSERT INTO extensions (id, type, subject, timeout_ms, metadata) VALUES ('flaky', 'pre', '`+subject+`', 500,
		'{"circuit_breaker": {"failure_threshold": 3, "min_requests": 100000, "open_timeout_ms": 300, "half_open_max_requests": 1}}')`)
	ctx := context.Background()
	// A window longer than the test: every call of the test stays in extension_health.
	if _, err := b.schema.Pool.Exec(ctx, `INSERT INTO extension_health (extension_id, window_seconds) VALUES ('flaky', 900)`); err != nil {
		t.Fatal(err)
	}
	s := b.startSyncer(t, "AUTO_DISABLE", "true", "HEALTH_INTERVAL", "200ms", "AUTO_HOLD", "2", "AUTO_COOLDOWN", "500ms",
		"AUTO_QUORUM_ROUTERS", "2", "AUTO_QUORUM_FRACTION", "0.6")
	s.waitReady(t, 30*time.Second)

	svc := &service{}
	snc := b.connect(t)
	if _, err := snc.Subscribe(subject, func(m *nats.Msg) {
		svc.mu.Lock()
		svc.arrivals = append(svc.arrivals, time.Now())
		svc.mu.Unlock()
		if svc.fail.Load() {
			_ = m.Respond([]byte(`"boom"`))
		} else {
			_ = m.Respond([]byte(`{"payload": {"ok": true}}`))
		}
	}); err != nil {
		t.Fatal(err)
	}
	if err := snc.Flush(); err != nil {
		t.Fatal(err)
	}

	routers := make([]*controlRouter, 3)
	for i := range routers {
		r := &controlRouter{id: fmt.Sprintf("control-%d", i+1), tally: map[string]*atomic.Uint64{}, reported: map[string]uint64{},
			breakers: map[string]bool{}}
		for _, c := range []string{protocol.ClassSuccess, protocol.ClassFailure, protocol.ClassRejected, protocol.ClassIgnored, "other"} {
			r.tally[c] = &atomic.Uint64{}
		}
		var self atomic.Pointer[client.Client]
		c, err := client.New(b.connect(t), client.Config{Prefix: b.prefix, RouterID: r.id, ReportInterval: 200 * time.Millisecond,
			CallStats: func() map[string]json.RawMessage {
				c := self.Load()
				if c == nil {
					return nil
				}
				calls := c.ReportCalls()
				r.record(t, calls)
				return calls
			},
			OnChange: func(_, next *cache.Snapshot, _ []string) {
				if e, ok := next.Get("flaky"); ok && e.AutoDisabled {
					r.mu.Lock()
					if r.autoAt.IsZero() {
						r.autoAt = time.Now()
					}
					r.mu.Unlock()
				}
			}})
		if err != nil {
			t.Fatal(err)
		}
		self.Store(c)
		if err := c.Start(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.Stop)
		r.c = c
		routers[i] = r
	}
	for _, r := range routers {
		eventually(t, 20*time.Second, r.id+" bootstrapped", func() error {
			if _, ok := r.c.Lookup("flaky"); !ok {
				return fmt.Errorf("%s: flaky not served", r.id)
			}
			return nil
		})
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, r := range routers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				_, err := r.c.Invoke(ctx, "flaky", client.Request{TraceID: "t", TenantID: "tenant"}, nil)
				r.tally[classOf(err)].Add(1)
				if err != nil && classOf(err) == protocol.ClassRejected {
					// Refused without a request: do not spin.
					select {
					case <-stop:
						return
					case <-time.After(2 * time.Millisecond):
					}
				}
			}
		}()
	}
	stopped := false
	stopInvoking := func() {
		if !stopped {
			stopped = true
			close(stop)
			wg.Wait()
		}
	}
	defer stopInvoking()

	// 1. Healthy traffic.
	eventually(t, 10*time.Second, "successful calls at every router", func() error {
		for _, r := range routers {
			if r.tally[protocol.ClassSuccess].Load() < 50 {
				return fmt.Errorf("%s: %d successes", r.id, r.tally[protocol.ClassSuccess].Load())
			}
		}
		return nil
	})

	// 2. The service fails: breakers open everywhere, the quorum auto-disables it.
	failAt := time.Now()
	svc.fail.Store(true)
	var decided time.Time
	var disabledBy string
	eventually(t, 30*time.Second, "the syncer auto-disables flaky", func() error {
		return b.schema.Pool.QueryRow(ctx, `SELECT changed_at, changed_by FROM extension_audit_log
			WHERE extension_id = 'flaky' AND entity = 'extension' AND (new_values->>'auto_disabled')::boolean
			  AND NOT (old_values->>'auto_disabled')::boolean ORDER BY seq LIMIT 1`).Scan(&decided, &disabledBy)
	})
	t.Logf("auto-disabled %s after the service started failing: %s", decided.Sub(failAt).Round(time.Millisecond), disabledBy)
	if !strings.HasPrefix(disabledBy, "syncer ") || !strings.Contains(disabledBy, "auto_disable: circuit open in") {
		t.Errorf("the auto-disable is audited as %q, want the syncer and the reason", disabledBy)
	}
	var worst time.Duration
	eventually(t, 10*time.Second, "every router applied the auto-disable", func() error {
		for _, r := range routers {
			r.mu.Lock()
			at := r.autoAt
			r.mu.Unlock()
			if at.IsZero() {
				return fmt.Errorf("%s: still calls flaky freely", r.id)
			}
			worst = max(worst, at.Sub(decided))
		}
		return nil
	})
	t.Logf("decision to the last router: %s", worst.Round(time.Microsecond))
	if worst > time.Second {
		t.Errorf("the last router applied the auto-disable %s after the decision, want within 1s", worst)
	}
	for _, r := range routers {
		r.mu.Lock()
		open := r.breakers[protocol.BreakerOpen]
		r.mu.Unlock()
		if !open {
			t.Errorf("%s never reported an open breaker", r.id)
		}
	}
	// The leader's gauges (what the alerts RegistryExtensionsCircuitOpen and
	// RegistryExtensionsAutoDisabled read) say so.
	eventually(t, 10*time.Second, "the circuit-open and auto-disabled gauges", func() error {
		resp, err := http.Get("http://" + s.addr + "/metrics")
		if err != nil {
			return err
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return err
		}
		for _, want := range []string{"\nregistry_syncer_extensions_circuit_open 1\n", "\nregistry_syncer_extensions_auto_disabled 1\n"} {
			if !strings.Contains(string(body), want) {
				return fmt.Errorf("/metrics lacks %q", strings.TrimSpace(want))
			}
		}
		return nil
	})
	// After that only probes reach the service: at most one per open timeout per router.
	from := decided.Add(time.Second)
	eventually(t, 10*time.Second, "2s of auto-disabled traffic", func() error {
		if time.Since(from) < 2*time.Second {
			return fmt.Errorf("%s so far", time.Since(from).Round(time.Millisecond))
		}
		return nil
	})
	probes := svc.between(from, from.Add(2*time.Second))
	before := svc.between(failAt.Add(-2*time.Second), failAt)
	t.Logf("calls reaching the service in 2s: %d before the failure, %d while auto-disabled (probes)", before, probes)
	if limit := len(routers) * (int(2*time.Second/(300*time.Millisecond)) + 2); probes > limit {
		t.Errorf("%d calls reached the auto-disabled extension in 2s, want at most %d probes", probes, limit)
	}

	// 3. The service recovers: the probes succeed, the syncer enables it again.
	recoverAt := time.Now()
	svc.fail.Store(false)
	var enabledBy string
	var enabled time.Time
	eventually(t, 30*time.Second, "the syncer re-enables flaky", func() error {
		return b.schema.Pool.QueryRow(ctx, `SELECT changed_at, changed_by FROM extension_audit_log
			WHERE extension_id = 'flaky' AND entity = 'extension' AND NOT (new_values->>'auto_disabled')::boolean
			  AND (old_values->>'auto_disabled')::boolean ORDER BY seq LIMIT 1`).Scan(&enabled, &enabledBy)
	})
	t.Logf("re-enabled %s after the service recovered: %s", enabled.Sub(recoverAt).Round(time.Millisecond), enabledBy)
	if !strings.HasPrefix(enabledBy, "syncer ") || !strings.Contains(enabledBy, "auto_enable: recovered") {
		t.Errorf("the auto-enable is audited as %q", enabledBy)
	}
	marks := make([]uint64, len(routers))
	for i, r := range routers {
		marks[i] = r.tally[protocol.ClassSuccess].Load()
	}
	eventually(t, 10*time.Second, "every router calls flaky again", func() error {
		for i, r := range routers {
			if got := r.tally[protocol.ClassSuccess].Load() - marks[i]; got < 50 {
				return fmt.Errorf("%s: %d successes since the re-enable", r.id, got)
			}
		}
		return nil
	})
	stopInvoking()

	// 4. extension_health is what the clients observed.
	var want [3]uint64
	sk, err := ddsketch.LogCollapsingLowestDenseDDSketch(0.01, 2048)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "every call reported", func() error {
		want = [3]uint64{}
		for _, r := range routers {
			r.mu.Lock()
			rep := r.reported
			for i, c := range []string{protocol.ClassSuccess, protocol.ClassFailure, protocol.ClassRejected} {
				if n := rep[c]; n != r.tally[c].Load() {
					r.mu.Unlock()
					return fmt.Errorf("%s: %d %s calls reported, %d made", r.id, n, c, r.tally[c].Load())
				}
				want[i] += rep[c]
			}
			r.mu.Unlock()
		}
		return nil
	})
	for _, r := range routers {
		if n := r.tally["other"].Load() + r.tally[protocol.ClassIgnored].Load(); n != 0 {
			t.Errorf("%s: %d calls failed outside the contract's outcomes", r.id, n)
		}
		for _, x := range r.sketches {
			if err := sk.MergeWith(x); err != nil {
				t.Fatal(err)
			}
		}
	}
	var got [3]int64
	var p50, p95 float64
	eventually(t, 10*time.Second, "extension_health equals the clients' counts", func() error {
		if err := b.schema.Pool.QueryRow(ctx, `SELECT success_count, failure_count, rejected_count, coalesce(p50_latency_ms, 0),
			coalesce(p95_latency_ms, 0) FROM extension_health WHERE extension_id = 'flaky'`).Scan(&got[0], &got[1], &got[2], &p50, &p95); err != nil {
			return err
		}
		for i := range got {
			if uint64(got[i]) != want[i] {
				return fmt.Errorf("extension_health success/failure/rejected %v, the clients made %v", got, want)
			}
		}
		return nil
	})
	for q, v := range map[float64]float64{0.5: p50, 0.95: p95} {
		ref, err := sk.GetValueAtQuantile(q)
		if err != nil {
			t.Fatal(err)
		}
		if ref *= 1000; math.Abs(v-ref) > 0.02*ref+0.001 {
			t.Errorf("extension_health p%.0f %.3f ms, the clients' merged sketch says %.3f ms", q*100, v, ref)
		}
	}
	t.Logf("extension_health: %d successes, %d failures, %d refused by open breakers; p50 %.3f ms, p95 %.3f ms", got[0], got[1], got[2], p50, p95)

	resp, err := http.Get("http://" + s.addr + "/admin/extensions/health")
	if err != nil {
		t.Fatal(err)
	}
	var view struct {
		Summary struct {
			Total int `json:"total"`
		} `json:"summary"`
		Extensions []struct {
			ExtensionID  string `json:"extension_id"`
			SuccessCount int64  `json:"success_count"`
		} `json:"extensions"`
	}
	err = json.NewDecoder(resp.Body).Decode(&view)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || view.Summary.Total != 1 || len(view.Extensions) != 1 || view.Extensions[0].SuccessCount != got[0] {
		t.Errorf("GET /admin/extensions/health: %d %+v %v", resp.StatusCode, view, err)
	}

	// 5. status and wait see every router.
	vars := b.vars()
	if res := runCLI(t, vars, "wait", "--current", "--all", "--timeout", "20s"); res.code != 0 {
		t.Errorf("wait --current --all: exit %d\n%s%s", res.code, res.stdout, res.stderr)
	}
	res := runCLI(t, vars, "status", "--json")
	var st protocol.FleetStatus
	if err := json.Unmarshal([]byte(res.stdout), &st); err != nil || res.code != 0 {
		t.Fatalf("status --json: exit %d %v\n%s", res.code, err, res.stderr)
	}
	seen := map[string]bool{}
	for _, r := range st.Routers {
		if r.Revision == st.PublishedRevision && r.State == protocol.RouterReady {
			seen[r.RouterID] = true
		}
	}
	for _, r := range routers {
		if !seen[r.id] {
			t.Errorf("syncer status does not show %s ready at revision %d: %+v", r.id, st.PublishedRevision, st.Routers)
		}
	}
}

// record keeps what one report carried.
func (r *controlRouter) record(t *testing.T, calls map[string]json.RawMessage) {
	raw, ok := calls["flaky"]
	if !ok {
		return
	}
	var c protocol.ExtensionCalls
	if err := json.Unmarshal(raw, &c); err != nil {
		t.Errorf("%s: report calls: %v", r.id, err)
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for o, n := range c.Outcomes {
		r.reported[protocol.OutcomeClass(o)] += n
	}
	for _, tc := range c.Targets {
		r.breakers[tc.Breaker] = true
	}
	if len(c.Sketch) > 0 {
		var pb sketchpb.DDSketch
		if err := proto.Unmarshal(c.Sketch, &pb); err != nil {
			t.Errorf("%s: sketch: %v", r.id, err)
			return
		}
		s, err := ddsketch.FromProto(&pb)
		if err != nil {
			t.Errorf("%s: sketch: %v", r.id, err)
			return
		}
		r.sketches = append(r.sketches, s)
	}
}

// connect is a new NATS connection to the test's server, closed when the test ends.
func (b *testBundle) connect(t *testing.T) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(b.url, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// serve starts a service on subject.
func (b *testBundle) serve(t *testing.T, subject string) *service {
	t.Helper()
	svc := &service{}
	nc := b.connect(t)
	if _, err := nc.Subscribe(subject, func(m *nats.Msg) {
		svc.mu.Lock()
		svc.arrivals = append(svc.arrivals, time.Now())
		svc.mu.Unlock()
		if svc.fail.Load() {
			_ = m.Respond([]byte(`"boom"`))
		} else {
			_ = m.Respond([]byte(`{}`))
		}
	}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return svc
}

// TestInstanceHealthRouting: with AUTO_INSTANCE_HEALTH on, an instance whose calls fail
// at every router is marked unhealthy by the syncer (audited), every router stops sending
// it traffic, and once it works again it goes back to unknown and then healthy.
func TestInstanceHealthRouting(t *testing.T) {
	t.Parallel()
	b := setup(t, "e2e.instances")
	b.commit(t,
		`INSERT INTO extensions (id, type, subject, timeout_ms, metadata) VALUES ('multi', 'pre', 'beamline.ext.pre.multi.v1', 500,
			'{"circuit_breaker": {"failure_threshold": 3, "min_requests": 100000, "open_timeout_ms": 300}}')`,
		`INSERT INTO extension_instances (extension_id, instance_id, subject, weight, health_status) VALUES
			('multi', 'i1', 'beamline.ext.pre.multi.v1.i1', 50, 'healthy'), ('multi', 'i2', 'beamline.ext.pre.multi.v1.i2', 50, 'healthy')`)
	s := b.startSyncer(t, "AUTO_INSTANCE_HEALTH", "true", "HEALTH_INTERVAL", "200ms", "AUTO_HOLD", "2", "AUTO_COOLDOWN", "1s",
		"AUTO_MIN_CALLS", "10")
	s.waitReady(t, 30*time.Second)
	i1, i2 := b.serve(t, "beamline.ext.pre.multi.v1.i1"), b.serve(t, "beamline.ext.pre.multi.v1.i2")
	ctx := context.Background()
	var clients []*client.Client
	for i := range 3 {
		c, err := client.New(b.connect(t), client.Config{Prefix: b.prefix, RouterID: fmt.Sprintf("inst-%d", i), ReportInterval: 200 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Start(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.Stop)
		clients = append(clients, c)
	}
	health := func(c *client.Client, id string) string {
		e, ok := c.Lookup("multi")
		if !ok {
			return ""
		}
		for _, in := range e.Instances {
			if in.InstanceID == id {
				return in.HealthStatus
			}
		}
		return ""
	}
	for _, c := range clients {
		eventually(t, 20*time.Second, "bootstrapped", func() error {
			if health(c, "i2") == "" {
				return fmt.Errorf("multi not served")
			}
			return nil
		})
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				case <-time.After(2 * time.Millisecond):
				}
				_, _ = c.Invoke(ctx, "multi", client.Request{}, nil)
			}
		}()
	}
	defer func() { close(stop); wg.Wait() }()

	i2.fail.Store(true)
	var by string
	eventually(t, 30*time.Second, "the syncer marks i2 unhealthy", func() error {
		return b.schema.Pool.QueryRow(ctx, `SELECT changed_by FROM extension_audit_log WHERE extension_id = 'multi'
			AND entity = 'instance' AND entity_key = 'i2' AND new_values->>'health_status' = 'unhealthy' ORDER BY seq LIMIT 1`).Scan(&by)
	})
	if !strings.HasPrefix(by, "syncer ") || !strings.Contains(by, "instance_health") {
		t.Errorf("i2 marked unhealthy by %q", by)
	}
	var applied time.Time
	eventually(t, 10*time.Second, "every router sees i2 unhealthy", func() error {
		for _, c := range clients {
			if h := health(c, "i2"); h != cache.HealthUnhealthy {
				return fmt.Errorf("i2 is %q", h)
			}
		}
		applied = time.Now()
		return nil
	})
	// No traffic to i2 while it is unhealthy (until the syncer sets it back to unknown after
	// the 1 s cooldown); i1 takes it all.
	eventually(t, 5*time.Second, "half a second of routing", func() error {
		if time.Since(applied) < 500*time.Millisecond {
			return fmt.Errorf("%s", time.Since(applied))
		}
		return nil
	})
	if n, m := i2.between(applied, applied.Add(500*time.Millisecond)), i1.between(applied, applied.Add(500*time.Millisecond)); n != 0 || m == 0 {
		t.Errorf("with i2 unhealthy at every router: %d calls reached i2, %d i1", n, m)
	}
	i2.fail.Store(false)
	eventually(t, 30*time.Second, "i2 healthy again", func() error {
		var st string
		if err := b.schema.Pool.QueryRow(ctx, `SELECT health_status FROM extension_instances WHERE extension_id = 'multi' AND instance_id = 'i2'`).Scan(&st); err != nil {
			return err
		}
		if st != cache.HealthHealthy {
			return fmt.Errorf("i2 is %s", st)
		}
		return nil
	})
	var trail []string
	rows, err := b.schema.Pool.Query(ctx, `SELECT new_values->>'health_status' FROM extension_audit_log
		WHERE extension_id = 'multi' AND entity = 'instance' AND entity_key = 'i2' AND changed_by LIKE 'syncer %' ORDER BY seq`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var st string
		if err := rows.Scan(&st); err != nil {
			t.Fatal(err)
		}
		trail = append(trail, st)
	}
	rows.Close()
	t.Logf("i2's health_status set by the syncer: %v", trail)
	if len(trail) < 2 || trail[0] != cache.HealthUnhealthy || trail[len(trail)-1] != cache.HealthHealthy {
		t.Errorf("i2's trail %v, want unhealthy first and healthy last", trail)
	}
}
