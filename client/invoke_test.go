package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/beamline/registry-syncer/cache"
)

// TestInvokeContract: each type's request and reply, as the router project's
// contract has them, over a real responder.
func TestInvokeContract(t *testing.T) {
	t.Parallel()
	pre, val, post, prov := ext("norm", cache.TypePre), ext("guard", cache.TypeValidator), ext("mask", cache.TypePost), ext("llm", cache.TypeProvider)
	b := setupInvoke(t, pre, val, post, prov)
	rPre := b.respond(t, pre.Subject, `{"payload":{"text":"hello"},"metadata":{"normalized":true}}`)
	b.respond(t, val.Subject, `{"status":"ok","reason":"","details":{}}`)
	b.respond(t, post.Subject, `{}`)
	b.respond(t, prov.Subject, `{"provider_id":"llm","output":{"text":"hi"},"usage":{"tokens":3},"metadata":{"m":1}}`)

	req := Request{TraceID: "tr-1", TenantID: "t9", Payload: json.RawMessage(`{"text":" Hello "}`), Metadata: json.RawMessage(`{"k":"v"}`)}
	res, err := b.invoke(t, "norm", req, nil)
	if err != nil {
		t.Fatalf("pre: %v", err)
	}
	if string(res.Payload) != `{"text":"hello"}` || string(res.Metadata) != `{"normalized":true}` || res.Attempts != 1 ||
		res.Subject != pre.Subject || res.Version != "v1" || res.Latency <= 0 {
		t.Errorf("pre result %+v", res)
	}
	got := rPre.all()[0].req
	if got.TraceID != "tr-1" || got.TenantID != "t9" || string(got.Payload) != `{"text":" Hello "}` || string(got.Metadata) != `{"k":"v"}` {
		t.Errorf("request on the wire %+v", got)
	}
	if res, err = b.invoke(t, "guard", Request{}, nil); err != nil || res.Status != "ok" {
		t.Errorf("validator: %+v %v", res, err)
	}
	if res, err = b.invoke(t, "mask", Request{}, nil); err != nil || res.Payload != nil || string(res.Reply) != `{}` {
		t.Errorf("post with an empty answer: %+v %v", res, err)
	}
	if res, err = b.invoke(t, "llm", Request{}, nil); err != nil || res.ProviderID != "llm" || string(res.Output) != `{"text":"hi"}` ||
		string(res.Usage) != `{"tokens":3}` || string(res.Metadata) != `{"m":1}` {
		t.Errorf("provider: %+v %v", res, err)
	}
}

// TestInvokeErrorCodes: every code of the contract, with errors.Is and errors.As.
func TestInvokeErrorCodes(t *testing.T) {
	t.Parallel()
	val := ext("guard", cache.TypeValidator)
	bad := ext("bad", cache.TypePre)
	badVal := ext("badval", cache.TypeValidator)
	silent := ext("silent", cache.TypePost)
	silent.TimeoutMS = 20
	gone := ext("gone", cache.TypePost) // nobody subscribes
	off := ext("off", cache.TypePost)
	off.Enabled = false
	killed := ext("killed", cache.TypePost)
	killed.Metadata = json.RawMessage(`{"kill_switch":true}`)
	sick := ext("sick", cache.TypePost, inst("a", 50, cache.HealthUnhealthy))
	small := ext("small", cache.TypePost)
	small.Metadata = json.RawMessage(`{"limits":{"max_payload_bytes":10,"max_metadata_bytes":12}}`)
	b := setupInvoke(t, val, bad, badVal, silent, gone, off, killed, sick, small)
	b.respond(t, val.Subject, `{"status":"reject","reason":"pii found","details":{"field":"email"}}`)
	rBad := b.respond(t, bad.Subject, `[1,2]`)
	b.respond(t, badVal.Subject, `{"status":"maybe"}`)
	b.respond(t, silent.Subject, "")
	b.respond(t, small.Subject, `{}`)

	for _, tt := range []struct {
		id, code, reason string
		sentinel         error
		req              Request
	}{
		{"guard", CodeValidatorBlocked, "pii found", ErrValidatorBlocked, Request{}},
		{"bad", CodeInvalidResponseFormat, "not a JSON object", ErrInvalidResponseFormat, Request{}},
		{"badval", CodeInvalidResponseFormat, `status "maybe"`, ErrInvalidResponseFormat, Request{}},
		{"silent", CodeExtensionTimeout, "no reply within 20ms", ErrExtensionTimeout, Request{}},
		{"gone", CodeExtensionError, "", ErrExtensionError, Request{}},
		{"nope", CodeExtensionNotFound, "unknown", ErrExtensionNotFound, Request{}},
		{"off", CodeExtensionNotFound, "disabled", ErrExtensionNotFound, Request{}},
		{"killed", CodeExtensionNotFound, "kill_switch", ErrExtensionNotFound, Request{}},
		{"sick", CodeExtensionUnavailable, "no usable instance", ErrExtensionUnavailable, Request{}},
		{"small", CodeInvalidRequest, "payload is 11 bytes, over the limit of 10", ErrInvalidRequest, Request{Payload: json.RawMessage(`"123456789"`)}},
		{"small", CodeInvalidRequest, "metadata is 13 bytes", ErrInvalidRequest, Request{Metadata: json.RawMessage(`{"a":"12345"}`)}},
		{"small", CodeInvalidRequest, "metadata is not a JSON object", ErrInvalidRequest, Request{Metadata: json.RawMessage(`[]`)}},
		{"small", CodeInvalidRequest, "not valid JSON", ErrInvalidRequest, Request{Payload: json.RawMessage(`{"a"`)}},
	} {
		res, err := b.invoke(t, tt.id, tt.req, nil)
		var ie *InvokeError
		if !errors.As(err, &ie) || ie.Code != tt.code || !errors.Is(err, tt.sentinel) || !strings.Contains(ie.Error(), tt.reason) {
			t.Errorf("%s %+v: %v, want %s (%q)", tt.id, tt.req, err, tt.code, tt.reason)
			continue
		}
		for _, other := range sentinels {
			if other != tt.sentinel && errors.Is(err, other) {
				t.Errorf("%s: %v also matches %v", tt.id, err, other)
			}
		}
		if tt.code == CodeValidatorBlocked && (res == nil || res.Status != "reject" || string(ie.Details) != `{"field":"email"}`) {
			t.Errorf("validator_blocked: result %+v, details %s", res, ie.Details)
		}
		if tt.code == CodeExtensionError && !strings.Contains(err.Error(), "no responders") {
			t.Errorf("extension_error does not carry its cause: %v", err)
		}
	}
	if n := rBad.count(); n != 1 {
		t.Errorf("the non-object reply was requested %d times, want 1 (only timeouts are retried)", n)
	}
	if _, err := b.invoke(t, "small", Request{Payload: json.RawMessage(`"1234567"`), Metadata: json.RawMessage(`{"a":"1234"}`)}, nil); err != nil {
		t.Errorf("at the limits: %v", err)
	}

	// Default limits: 1 MiB of payload and 64 KiB of metadata.
	big := `"` + strings.Repeat("x", 1<<20-1) + `"`
	if _, err := b.invoke(t, "bad", Request{Payload: json.RawMessage(big)}, nil); !errors.Is(err, ErrInvalidRequest) {
		t.Errorf("payload of 1 MiB + 1: %v, want invalid_request", err)
	}
	meta := `{"a":"` + strings.Repeat("x", 64<<10-7) + `"}`
	if _, err := b.invoke(t, "bad", Request{Metadata: json.RawMessage(meta)}, nil); !errors.Is(err, ErrInvalidRequest) {
		t.Errorf("metadata of 64 KiB + 1: %v, want invalid_request", err)
	}

	// A client without a snapshot yet.
	fresh, err := New(b.nc, Config{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fresh.Invoke(context.Background(), "guard", Request{}, nil); !errors.Is(err, ErrExtensionNotFound) || !strings.Contains(err.Error(), "no snapshot") {
		t.Errorf("before the first snapshot: %v", err)
	}
}

// chiSquare of observed counts against expected shares.
func chiSquare(counts map[string]int, shares map[string]float64, n int) float64 {
	var x float64
	for k, s := range shares {
		e := s * float64(n)
		d := float64(counts[k]) - e
		x += d * d / e
	}
	return x
}

// TestInvokeWeighted: traffic follows the weights of the usable instances
// (degraded and unknown included, unhealthy and disabled never).
func TestInvokeWeighted(t *testing.T) {
	t.Parallel()
	off := inst("d", 100, cache.HealthHealthy)
	off.Enabled = false
	e := ext("lb", cache.TypePost, inst("a", 10, cache.HealthHealthy), inst("b", 30, cache.HealthDegraded),
		inst("c", 60, cache.HealthUnknown), off, inst("e", 100, cache.HealthUnhealthy))
	b := setupInvoke(t, e)
	b.seed(1)
	for _, in := range e.Instances {
		b.respond(t, in.Subject, `{}`)
	}
	b.respond(t, e.Subject, `{}`)
	const n = 3000
	counts := map[string]int{}
	for range n {
		res, err := b.invoke(t, "lb", Request{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		counts[res.Target]++
	}
	t.Logf("counts over %d calls: %v", n, counts)
	if counts["d"]+counts["e"]+counts[e.Subject] != 0 {
		t.Fatalf("a disabled or unhealthy instance, or the extension's subject, got traffic: %v", counts)
	}
	// df = 2: P(χ² > 13.8) = 0.001; the seed makes the run deterministic.
	if x := chiSquare(counts, map[string]float64{"a": .1, "b": .3, "c": .6}, n); x > 13.8 {
		t.Errorf("χ² = %.1f > 13.8 for weights 10/30/60: %v", x, counts)
	}

	// All-zero weights share equally; a zero weight beside non-zero ones gets nothing.
	e2 := ext("lb", cache.TypePost, inst("a", 0, cache.HealthHealthy), inst("b", 0, cache.HealthHealthy), inst("c", 0, cache.HealthDegraded))
	b.update(t, e2)
	counts = map[string]int{}
	for range n {
		res, err := b.invoke(t, "lb", Request{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		counts[res.Target]++
	}
	t.Logf("all-zero weights: %v", counts)
	if x := chiSquare(counts, map[string]float64{"a": 1. / 3, "b": 1. / 3, "c": 1. / 3}, n); x > 13.8 {
		t.Errorf("χ² = %.1f > 13.8 for equal shares: %v", x, counts)
	}
	e3 := ext("lb", cache.TypePost, inst("a", 0, cache.HealthHealthy), inst("b", 5, cache.HealthHealthy))
	b.update(t, e3)
	for range 200 {
		if res, err := b.invoke(t, "lb", Request{}, nil); err != nil || res.Target != "b" {
			t.Fatalf("a weight-0 instance beside a weighted one: %+v %v", res, err)
		}
	}
}

// TestPickWeightedExact: the selection function itself, over every value of a
// fine grid of r (uniform), gives each instance exactly its share.
func TestPickWeightedExact(t *testing.T) {
	t.Parallel()
	insts := []cache.Instance{inst("a", 1, cache.HealthHealthy), inst("b", 3, cache.HealthHealthy), inst("x", 50, cache.HealthUnhealthy), inst("c", 6, cache.HealthHealthy)}
	counts := map[string]int{}
	const steps = 1000
	for i := range steps {
		r := uint64(i)*(^uint64(0)/steps) + ^uint64(0)/steps/2 // the middle of each step
		counts[insts[pickWeighted(insts, r)].InstanceID]++
	}
	if counts["a"] != 100 || counts["b"] != 300 || counts["c"] != 600 || counts["x"] != 0 {
		t.Errorf("counts %v, want a 100, b 300, c 600", counts)
	}
	if got := pickWeighted([]cache.Instance{inst("x", 1, cache.HealthUnhealthy)}, 0); got != -1 {
		t.Errorf("no usable instance: %d, want -1", got)
	}
}

// TestInvokeSticky: with metadata.sticky_attr the same tenant always lands on
// the same instance; different tenants spread; removing an instance moves only
// the tenants it had.
func TestInvokeSticky(t *testing.T) {
	t.Parallel()
	e := ext("st", cache.TypePost, inst("a", 50, cache.HealthHealthy), inst("b", 50, cache.HealthHealthy), inst("c", 50, cache.HealthHealthy))
	e.Metadata = json.RawMessage(`{"sticky_attr":"tenant_id"}`)
	b := setupInvoke(t, e)
	for _, in := range e.Instances {
		b.respond(t, in.Subject, `{}`)
	}
	where := map[string]string{}
	spread := map[string]int{}
	for i := range 60 {
		tenant := fmt.Sprintf("tenant-%d", i)
		for range 3 {
			res, err := b.invoke(t, "st", Request{TenantID: tenant}, map[string]string{"tenant_id": tenant})
			if err != nil {
				t.Fatal(err)
			}
			if prev, ok := where[tenant]; ok && prev != res.Target {
				t.Fatalf("%s went to %s then %s", tenant, prev, res.Target)
			}
			where[tenant] = res.Target
		}
		spread[where[tenant]]++
	}
	t.Logf("60 tenants: %v", spread)
	if len(spread) != 3 || spread["a"] < 8 || spread["b"] < 8 || spread["c"] < 8 {
		t.Errorf("tenants do not spread over the instances: %v", spread)
	}
	// Request.StickyKey overrides the attribute.
	res1, _ := b.invoke(t, "st", Request{StickyKey: "k"}, map[string]string{"tenant_id": "tenant-1"})
	res2, _ := b.invoke(t, "st", Request{StickyKey: "k"}, map[string]string{"tenant_id": "tenant-2"})
	if res1 == nil || res2 == nil || res1.Target != res2.Target || res1.Target != e.Instances[pickSticky(e.Instances, "k")].InstanceID {
		t.Errorf("StickyKey k: %v and %v", res1, res2)
	}

	// c becomes unhealthy: only its tenants move.
	e2 := *e
	e2.Instances = append([]cache.Instance(nil), e.Instances...)
	e2.Instances[2].HealthStatus = cache.HealthUnhealthy
	b.update(t, &e2)
	for tenant, was := range where {
		res, err := b.invoke(t, "st", Request{}, map[string]string{"tenant_id": tenant})
		if err != nil {
			t.Fatal(err)
		}
		if was != "c" && res.Target != was {
			t.Errorf("%s moved from %s to %s when c went unhealthy", tenant, was, res.Target)
		}
		if res.Target == "c" {
			t.Errorf("%s still on the unhealthy instance", tenant)
		}
	}
}

// TestInvokeVersionSubjects: no instance → the version's subject; a routed
// version is called on its own subject, the instances serving the current one.
func TestInvokeVersionSubjects(t *testing.T) {
	t.Parallel()
	e := ext("ver", cache.TypePost, inst("a", 1, cache.HealthHealthy))
	e.Versions = []cache.Version{{Version: "v2", Subject: "beamline.ext.post.ver.v2", TimeoutMS: 300, Retry: 1, Enabled: true,
		Config: json.RawMessage(`{}`), Metadata: json.RawMessage(`{}`), RoutingRules: json.RawMessage(`{"tenant_id":["t2"]}`)}}
	plain := ext("plain", cache.TypePost)
	off := inst("z", 1, cache.HealthHealthy)
	off.Enabled = false
	allOff := ext("alloff", cache.TypePost, off)
	b := setupInvoke(t, e, plain, allOff)
	for _, s := range []string{"beamline.inst.a", "beamline.ext.post.ver.v2", plain.Subject, allOff.Subject} {
		b.respond(t, s, `{}`)
	}
	for _, tt := range []struct {
		id, tenant, version, subject, target string
	}{
		{"ver", "t1", "v1", "beamline.inst.a", "a"},
		{"ver", "t2", "v2", "beamline.ext.post.ver.v2", "beamline.ext.post.ver.v2"},
		{"plain", "t1", "v1", plain.Subject, plain.Subject},
		{"alloff", "t1", "v1", allOff.Subject, allOff.Subject},
	} {
		res, err := b.invoke(t, tt.id, Request{}, map[string]string{"tenant_id": tt.tenant})
		if err != nil || res.Version != tt.version || res.Subject != tt.subject || res.Target != tt.target {
			t.Errorf("%s for %s: %+v %v, want %s on %s", tt.id, tt.tenant, res, err, tt.version, tt.subject)
		}
		plan, err := b.c.Resolve(tt.id, map[string]string{"tenant_id": tt.tenant}, "")
		if err != nil || plan.Subject != tt.subject || plan.Version != tt.version {
			t.Errorf("Resolve %s for %s: %+v %v", tt.id, tt.tenant, plan, err)
		}
	}
}

// TestBreakerConsecutiveFailures: 5 consecutive failures open the circuit
// (defaults); the sixth call never reaches NATS.
func TestBreakerConsecutiveFailures(t *testing.T) {
	t.Parallel()
	e := ext("flaky", cache.TypePre, inst("a", 1, cache.HealthHealthy), inst("b", 1, cache.HealthHealthy))
	e.Metadata = json.RawMessage(`{"sticky_attr":"tenant_id"}`)
	b := setupInvoke(t, e)
	target := e.Instances[pickSticky(e.Instances, "t1")]
	r := b.respond(t, target.Subject, `"not an object"`)
	attrs := map[string]string{"tenant_id": "t1"}
	for i := 1; i <= DefaultFailureThreshold; i++ {
		if _, err := b.invoke(t, "flaky", Request{}, attrs); code(t, err) != CodeInvalidResponseFormat {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	_, err := b.invoke(t, "flaky", Request{}, attrs)
	if code(t, err) != CodeExtensionUnavailable || !strings.Contains(err.Error(), "circuit open") {
		t.Fatalf("after %d failures: %v, want extension_unavailable (circuit open)", DefaultFailureThreshold, err)
	}
	if n := r.count(); n != DefaultFailureThreshold {
		t.Errorf("the responder saw %d requests, want %d", n, DefaultFailureThreshold)
	}
	plan, _ := b.c.Resolve("flaky", attrs, "")
	if plan.BreakerState != BreakerOpen || plan.Breaker.FailureThreshold != 5 || plan.Breaker.ErrorRateThreshold != 0.5 ||
		plan.Breaker.Window != time.Minute || plan.Breaker.HalfOpenMaxRequests != 3 {
		t.Errorf("plan %+v", plan)
	}
	// The other instance's breaker is its own.
	other := e.Instances[1-pickSticky(e.Instances, "t1")]
	b.respond(t, other.Subject, `{}`)
	if _, err := b.invoke(t, "flaky", Request{StickyKey: stickyKeyFor(t, e.Instances, other.InstanceID)}, nil); err != nil {
		t.Errorf("the other instance: %v", err)
	}
	stats := b.c.CallStats()
	for _, ts := range stats.Targets {
		if ts.Target == target.InstanceID && (ts.Breaker != BreakerOpen || ts.Outcomes[CodeInvalidResponseFormat] != 5 || ts.Outcomes[CodeExtensionUnavailable] != 1) {
			t.Errorf("stats of %s: %+v", target.InstanceID, ts)
		}
	}
}

func stickyKeyFor(t *testing.T, insts []cache.Instance, id string) string {
	t.Helper()
	for i := range 1000 {
		k := fmt.Sprintf("k%d", i)
		if insts[pickSticky(insts, k)].InstanceID == id {
			return k
		}
	}
	t.Fatalf("no key lands on %s", id)
	return ""
}

// TestBreakerErrorRate: an error rate of 50% over at least min_requests calls
// opens the circuit although failures are never consecutive.
func TestBreakerErrorRate(t *testing.T) {
	t.Parallel()
	e := ext("half", cache.TypeValidator)
	e.Metadata = json.RawMessage(`{"circuit_breaker":{"min_requests":10}}`)
	b := setupInvoke(t, e)
	r := b.respond(t, e.Subject, "")
	for i := 1; i <= 10; i++ {
		want := ""
		if i%2 == 0 {
			r.set(`{"status":"maybe"}`)
			want = CodeInvalidResponseFormat
		} else {
			r.set(`{"status":"ok"}`)
		}
		if _, err := b.invoke(t, "half", Request{}, nil); code(t, err) != want {
			t.Fatalf("call %d: %v, want %q", i, err, want)
		}
	}
	r.set(`{"status":"ok"}`)
	if _, err := b.invoke(t, "half", Request{}, nil); code(t, err) != CodeExtensionUnavailable {
		t.Fatalf("after 5 failures in 10 calls: %v, want extension_unavailable", err)
	}
	if n := r.count(); n != 10 {
		t.Errorf("responder saw %d requests, want 10", n)
	}

	// Below the minimum count the rate does not trip: 4 failures in 8 calls.
	e2 := ext("half2", cache.TypeValidator)
	e2.Metadata = json.RawMessage(`{"circuit_breaker":{"min_requests":10}}`)
	b.update(t, e2)
	r2 := b.respond(t, e2.Subject, "")
	for i := 1; i <= 9; i++ {
		r2.set(map[bool]string{true: `{"status":"maybe"}`, false: `{"status":"ok"}`}[i%2 == 0])
		_, _ = b.invoke(t, "half2", Request{}, nil)
	}
	if plan, _ := b.c.Resolve("half2", nil, ""); plan.BreakerState != BreakerClosed {
		t.Errorf("4 failures in 9 calls (min 10): breaker %s", plan.BreakerState)
	}
}

// TestBreakerHalfOpen: after the open timeout at most half_open_max_requests
// probes go through; their success closes the circuit; a failed probe reopens it.
func TestBreakerHalfOpen(t *testing.T) {
	t.Parallel()
	e := ext("probe", cache.TypePost)
	e.Metadata = json.RawMessage(`{"circuit_breaker":{"failure_threshold":2,"open_timeout_ms":1000}}`)
	b := setupInvoke(t, e)
	r := b.respond(t, e.Subject, `[]`)
	open := func() {
		t.Helper()
		r.set(`[]`)
		for i := 0; i < 2; i++ {
			_, _ = b.invoke(t, "probe", Request{}, nil)
		}
		if plan, _ := b.c.Resolve("probe", nil, ""); plan.BreakerState != BreakerOpen {
			t.Fatalf("breaker %s, want open", plan.BreakerState)
		}
	}
	waitHalfOpen := func() {
		t.Helper()
		waitFor(t, "the breaker to be half-open", func() bool {
			plan, _ := b.c.Resolve("probe", nil, "")
			return plan.BreakerState == BreakerHalfOpen
		})
	}
	open()
	waitHalfOpen()

	// Five concurrent calls while the responder holds its replies: three probes
	// reach it, two are refused at once.
	r.set(`{}`)
	r.setHold(true)
	before := r.count()
	var wg sync.WaitGroup
	errs := make([]error, 5)
	for i := range errs {
		wg.Go(func() { _, errs[i] = b.invoke(t, "probe", Request{}, nil) })
	}
	waitFor(t, "three probes at the responder", func() bool {
		return r.count()-before == DefaultHalfOpenMaxRequests
	})
	refused := 0
	for _, a := range r.all()[before:] {
		if err := a.msg.Respond([]byte(`{}`)); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	for _, err := range errs {
		switch code(t, err) {
		case "":
		case CodeExtensionUnavailable:
			refused++
		default:
			t.Errorf("probe: %v", err)
		}
	}
	if refused != 2 || r.count()-before != 3 {
		t.Errorf("%d refused, %d probes; want 2 and 3", refused, r.count()-before)
	}
	r.setHold(false)
	if plan, _ := b.c.Resolve("probe", nil, ""); plan.BreakerState != BreakerClosed {
		t.Fatalf("after 3 successful probes: %s, want closed", plan.BreakerState)
	}
	// Closed again with counts reset: one failure does not reopen it.
	r.set(`[]`)
	_, _ = b.invoke(t, "probe", Request{}, nil)
	if plan, _ := b.c.Resolve("probe", nil, ""); plan.BreakerState != BreakerClosed {
		t.Errorf("one failure after closing: %s", plan.BreakerState)
	}

	// A failed probe reopens it.
	open()
	waitHalfOpen()
	r.set(`[]`)
	_, _ = b.invoke(t, "probe", Request{}, nil)
	if plan, _ := b.c.Resolve("probe", nil, ""); plan.BreakerState != BreakerOpen {
		t.Errorf("after a failed probe: %s, want open", plan.BreakerState)
	}
}

// TestInvokeRetries: only timeouts are retried, retry times, after 100 ms then
// 200 ms (measured at the responder); the caller's context cuts the backoff.
func TestInvokeRetries(t *testing.T) {
	t.Parallel()
	e := ext("slow", cache.TypePost)
	e.TimeoutMS, e.Retry = 50, 2
	noResp := ext("noresp", cache.TypePost)
	noResp.TimeoutMS, noResp.Retry = 50, 3
	b := setupInvoke(t, e, noResp)
	r := b.respond(t, e.Subject, "")
	start := time.Now()
	_, err := b.invoke(t, "slow", Request{}, nil)
	elapsed := time.Since(start)
	var ie *InvokeError
	if !errors.As(err, &ie) || ie.Code != CodeExtensionTimeout || ie.Attempts != 3 {
		t.Fatalf("%v, want extension_timeout after 3 attempts", err)
	}
	// The third request may still be on its way to the responder when its
	// attempt times out.
	waitFor(t, "3 attempts at the responder", func() bool { return r.count() >= 3 })
	a := r.all()
	if len(a) != 3 {
		t.Fatalf("%d attempts reached the responder, want 3", len(a))
	}
	// Attempt n is sent at the sum of the timeouts and backoffs before it: 0,
	// 50+100, 50+100+50+200 ms after Invoke started. An arrival, stamped by the
	// responder, can be late (a loaded machine) but never early: the lower bound
	// is exact, the upper one leaves 250 ms for scheduling (a doubled backoff
	// would still be 300 ms late at the third attempt).
	timeout := 50 * time.Millisecond
	for i, sent := range []time.Duration{0, timeout + 100*time.Millisecond, 2*timeout + 300*time.Millisecond} {
		at := a[i].at.Sub(start)
		t.Logf("attempt %d arrived %s after the call began (sent at %s)", i+1, at, sent)
		if at < sent || at > sent+250*time.Millisecond {
			t.Errorf("attempt %d arrived after %s, want %s (+ up to 250 ms)", i+1, at, sent)
		}
	}
	if elapsed < 3*timeout+300*time.Millisecond {
		t.Errorf("the call took %s, less than 3 timeouts and the 100 + 200 ms backoffs", elapsed)
	}
	t.Logf("whole call: %s", elapsed)
	stats := b.c.CallStats().Extension("slow")
	if stats.Retries != 2 || stats.Outcomes[CodeExtensionTimeout] != 1 || stats.Quantile(0.5) < 3*timeout+300*time.Millisecond {
		t.Errorf("stats %+v, p50 %s", stats, stats.Quantile(0.5))
	}

	// No responders is not a timeout: one attempt.
	_, err = b.invoke(t, "noresp", Request{}, nil)
	if !errors.As(err, &ie) || ie.Code != CodeExtensionError || ie.Attempts != 1 {
		t.Errorf("no responders: %v (attempts %d), want extension_error after 1", err, ie.Attempts)
	}

	// The caller's deadline ends the backoff: attempts at 0 and 150 ms, the second
	// backoff from 200 to 400 ms, the deadline at 250 ms.
	ctx, cancel := context.WithTimeout(context.Background(), 250*time.Millisecond)
	defer cancel()
	start = time.Now()
	_, err = b.c.Invoke(ctx, "slow", Request{}, nil)
	d := time.Since(start)
	t.Logf("with a 250 ms deadline: %v after %s", err, d)
	if code(t, err) != CodeExtensionTimeout || d < 250*time.Millisecond || d >= 400*time.Millisecond {
		t.Errorf("with a 250 ms deadline: %v after %s, want extension_timeout at the deadline, before the backoff's end at 400 ms", err, d)
	}
	if plan, _ := b.c.Resolve("slow", nil, ""); plan.BreakerState != BreakerClosed {
		t.Errorf("breaker %s", plan.BreakerState)
	}
}

// TestCallStatsAndMetrics: CallStats returns the calls since the previous call
// with real quantiles, and the Prometheus metrics count the same calls.
func TestCallStatsAndMetrics(t *testing.T) {
	t.Parallel()
	e := ext("m", cache.TypePost, inst("a", 1, cache.HealthHealthy))
	b := setupInvoke(t, e)
	r := b.respond(t, "beamline.inst.a", `{}`)
	for range 20 {
		if _, err := b.invoke(t, "m", Request{}, nil); err != nil {
			t.Fatal(err)
		}
	}
	r.set(`[]`)
	_, _ = b.invoke(t, "m", Request{}, nil)
	_, _ = b.invoke(t, "unknown-id", Request{}, nil)

	s := b.c.CallStats()
	var a *TargetStats
	for i := range s.Targets {
		if s.Targets[i].Extension == "m" && s.Targets[i].Target == "a" {
			a = &s.Targets[i]
		}
	}
	if a == nil || a.Calls != 21 || a.Outcomes[OutcomeSuccess] != 20 || a.Outcomes[CodeInvalidResponseFormat] != 1 ||
		a.Latency.GetCount() != 21 || a.Breaker != BreakerClosed {
		t.Fatalf("stats %+v", s.Targets)
	}
	p50, p99 := a.Quantile(.5), a.Quantile(.99)
	t.Logf("p50 %s p95 %s p99 %s", p50, a.Quantile(.95), p99)
	if p50 <= 0 || p99 < p50 || p99 > 5*time.Second {
		t.Errorf("quantiles p50 %s p99 %s", p50, p99)
	}
	if again := b.c.CallStats(); len(again.Targets) != 0 || !again.Since.Equal(s.Until) {
		t.Errorf("a second CallStats: %+v, want nothing since %s", again, s.Until)
	}

	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(b.c.Collector()); err != nil {
		t.Fatal(err)
	}
	if v := testutil.ToFloat64(b.c.invokerOf().rec.calls.WithLabelValues("m", "a", OutcomeSuccess)); v != 20 {
		t.Errorf("calls_total success = %v, want 20", v)
	}
	if v := testutil.ToFloat64(b.c.invokerOf().rec.calls.WithLabelValues("", "", CodeExtensionNotFound)); v != 1 {
		t.Errorf("calls_total for an unknown id = %v, want 1 under extension=\"\"", v)
	}
	problems, err := testutil.GatherAndLint(reg)
	if err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
	n, err := testutil.GatherAndCount(reg, "beamline_extension_calls_total", "beamline_extension_call_duration_seconds",
		"beamline_extension_circuit_state", "beamline_extension_retries_total")
	if err != nil || n < 4 {
		t.Errorf("gathered %d series (%v)", n, err)
	}
}

// TestPolicyFromMetadata: overrides are read, bad fields keep their defaults
// and are reported.
func TestPolicyFromMetadata(t *testing.T) {
	t.Parallel()
	e := ext("p", cache.TypePost)
	e.Metadata = json.RawMessage(`{"circuit_breaker":{"failure_threshold":7,"error_rate_threshold":2,"window_seconds":10,"half_open_max_requests":1,"open_timeout_ms":500},
		"limits":{"max_payload_bytes":100},"sticky_attr":"policy_id","kill_switch":"yes"}`)
	p := parsePolicy(e)
	want := BreakerConfig{FailureThreshold: 7, ErrorRateThreshold: 0.5, Window: 10 * time.Second, HalfOpenMaxRequests: 1,
		MinRequests: DefaultMinRequests, OpenTimeout: 500 * time.Millisecond}
	if p.breaker != want || p.maxPayload != 100 || p.maxMetadata != DefaultMaxMetadataBytes || p.stickyAttr != "policy_id" || p.killed {
		t.Errorf("policy %+v", p)
	}
	if len(p.problems) != 2 || !strings.Contains(strings.Join(p.problems, ";"), "error_rate_threshold") ||
		!strings.Contains(strings.Join(p.problems, ";"), "kill_switch") {
		t.Errorf("problems %q", p.problems)
	}
}

// TestBreakerWindowRolls: failures older than window_seconds no longer count
// towards the error rate.
func TestBreakerWindowRolls(t *testing.T) {
	t.Parallel()
	e := ext("roll", cache.TypePost)
	e.Metadata = json.RawMessage(`{"circuit_breaker":{"window_seconds":1,"min_requests":4,"failure_threshold":100}}`)
	b := setupInvoke(t, e)
	r := b.respond(t, e.Subject, `[]`)
	for range 3 {
		_, _ = b.invoke(t, "roll", Request{}, nil)
	}
	br := b.c.invokerOf().breakers.peek("roll", e.Subject)
	if c := br.cb.Counts(); c.TotalFailures != 3 {
		t.Fatalf("counts %+v, want 3 failures", c)
	}
	waitFor(t, "the failures to leave the window", func() bool {
		_ = br.cb.State() // advances the rolling window; Counts alone does not
		return br.cb.Counts().TotalFailures == 0
	})
	// 1 failure in 4 calls now: 25%, below the threshold (3 more failures would have been 4 of 4).
	r.set(`{}`)
	for range 3 {
		if _, err := b.invoke(t, "roll", Request{}, nil); err != nil {
			t.Fatal(err)
		}
	}
	r.set(`[]`)
	_, _ = b.invoke(t, "roll", Request{}, nil)
	if s := stateName(br.cb.State()); s != BreakerClosed {
		t.Errorf("breaker %s after the window rolled, want closed", s)
	}
}

// TestInvokeConcurrent: many goroutines invoking while the snapshot changes,
// statistics are taken and metrics scraped (run with -race); a removed
// instance's breaker is forgotten.
func TestInvokeConcurrent(t *testing.T) {
	t.Parallel()
	e := ext("conc", cache.TypePost, inst("a", 1, cache.HealthHealthy), inst("b", 1, cache.HealthHealthy))
	b := setupInvoke(t, e)
	b.respond(t, "beamline.inst.a", `{}`)
	b.respond(t, "beamline.inst.b", `{}`)
	reg := prometheus.NewRegistry()
	reg.MustRegister(b.c.Collector())
	var wg sync.WaitGroup
	var mu sync.Mutex
	var total uint64
	stop := make(chan struct{})
	for range 8 {
		wg.Go(func() {
			for range 100 {
				if _, err := b.invoke(t, "conc", Request{}, map[string]string{"tenant_id": "t1"}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			s := b.c.CallStats()
			mu.Lock()
			for _, ts := range s.Targets {
				total += ts.Calls
			}
			mu.Unlock()
			if _, err := reg.Gather(); err != nil {
				t.Error(err)
			}
		}
	})
	e2 := ext("conc", cache.TypePost, inst("a", 1, cache.HealthHealthy), inst("b", 1, cache.HealthDegraded))
	b.update(t, e2)
	waitFor(t, "800 calls", func() bool {
		return testutil.ToFloat64(b.c.invokerOf().rec.calls.WithLabelValues("conc", "a", OutcomeSuccess))+
			testutil.ToFloat64(b.c.invokerOf().rec.calls.WithLabelValues("conc", "b", OutcomeSuccess)) == 800
	})
	close(stop)
	wg.Wait()
	for _, ts := range b.c.CallStats().Targets {
		total += ts.Calls
	}
	if total != 800 {
		t.Errorf("CallStats counted %d calls over all takes, want 800", total)
	}

	// b is removed: its breaker (and circuit_state series) goes.
	b.update(t, ext("conc", cache.TypePost, inst("a", 1, cache.HealthHealthy)))
	_ = b.c.CallStats()
	if br := b.c.invokerOf().breakers.peek("conc", "b"); br != nil {
		t.Error("the removed instance's breaker is still there")
	}
	if br := b.c.invokerOf().breakers.peek("conc", "a"); br == nil {
		t.Error("the remaining instance's breaker was dropped")
	}
}

// TestEncodeRequestMatchesEncodingJSON: the hand-written request encoder gives
// the bytes encoding/json gives.
func TestEncodeRequestMatchesEncodingJSON(t *testing.T) {
	t.Parallel()
	e := ext("enc", cache.TypePost)
	r := route{ext: e, pol: &policy{maxPayload: 1 << 20, maxMetadata: 1 << 16}}
	for _, s := range []string{"", "plain", `q"uote\back`, "ctl\x00\x01\x1f\n\r\t\b\f", "<html>&amp;", "ünïcødé ✓ 🚀",
		"bad\xffutf8\xc3", "line\u2028sep\u2029", strings.Repeat("x", 300)} {
		req := Request{TraceID: s, TenantID: s + "t", Payload: json.RawMessage(`{"a":[1,2]}`), Metadata: json.RawMessage(`{"k":"v"}`)}
		got, ierr := encodeRequest(&r, &req)
		if ierr != nil {
			t.Fatal(ierr)
		}
		want, err := json.Marshal(wireRequest{TraceID: req.TraceID, TenantID: req.TenantID, Payload: req.Payload, Metadata: req.Metadata})
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != string(want) {
			t.Errorf("%q:\n got %s\nwant %s", s, got, want)
		}
	}
}

// TestStickyHashGolden pins the sticky hash of PROTOCOL.md's appendix (the
// values were checked against an independent implementation of the text): a
// change would send every tenant elsewhere, and routers of two versions apart.
func TestStickyHashGolden(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		key, instance string
		want          uint64
	}{
		{"", "", 0x25fc6dd36ce04b20},
		{"t1", "i1", 0x929faa52d290d8e4},
		{"tenant-42", "normalize_text-7", 0x6a1f7872469bdae},
	} {
		if got := stickyHash(tt.key, tt.instance); got != tt.want {
			t.Errorf("stickyHash(%q, %q) = %#x, want %#x", tt.key, tt.instance, got, tt.want)
		}
	}
}
