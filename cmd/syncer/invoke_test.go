package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/beamline/registry-syncer/cache"
	"github.com/beamline/registry-syncer/protocol"
	"github.com/beamline/registry-syncer/publisher"
	"github.com/beamline/registry-syncer/test/harness"
)

// publishRegistry stores a snapshot of exts on a fresh in-process NATS server
// under prefix, as a syncer would, and returns the CLI environment pointing at it
// and a connection for responders.
func publishRegistry(t *testing.T, prefix string, exts []cache.Extension) (envMap, *nats.Conn) {
	t.Helper()
	srv := harness.NewNATS(t, harness.NATSOptions{})
	nc := srv.Connect(t)
	signer, _, err := protocol.GenerateSigner()
	if err != nil {
		t.Fatal(err)
	}
	pub, err := publisher.New(nc, publisher.Config{Prefix: prefix, Signer: signer})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := pub.EnsureStreams(ctx); err != nil {
		t.Fatal(err)
	}
	snap, err := cache.New(3, protocol.SourceDatabase, exts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pub.WriteSnapshot(ctx, snap, false); err != nil {
		t.Fatal(err)
	}
	return envMap{"EXTENSION_REGISTRY_NATS_URL": srv.URL(), "EXTENSION_REGISTRY_SUBJECT_PREFIX": prefix}, nc
}

func reply(t *testing.T, nc *nats.Conn, subject, body string) {
	t.Helper()
	if _, err := nc.Subscribe(subject, func(m *nats.Msg) {
		if body != "" {
			_ = m.Respond([]byte(body))
		}
	}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
}

func cliExtensions() []cache.Extension {
	obj := json.RawMessage(`{}`)
	return []cache.Extension{
		{ID: "normalize_text", Type: cache.TypePre, Subject: "beamline.ext.pre.normalize_text.v1", TimeoutMS: 100, Enabled: true,
			Version: "v1", Config: obj, Metadata: json.RawMessage(`{"circuit_breaker":{"failure_threshold":7}}`),
			Versions: []cache.Version{{Version: "v2", Subject: "beamline.ext.pre.normalize_text.v2", TimeoutMS: 120, Retry: 1, Enabled: true,
				Config: obj, Metadata: obj, RoutingRules: json.RawMessage(`{"tenant_id":["t2"]}`)}},
			Instances: []cache.Instance{
				{InstanceID: "i1", Subject: "beamline.ext.pre.normalize_text.v1.i1", Weight: 75, Enabled: true, HealthStatus: cache.HealthHealthy},
				{InstanceID: "i2", Subject: "beamline.ext.pre.normalize_text.v1.i2", Weight: 25, Enabled: true, HealthStatus: cache.HealthDegraded},
				{InstanceID: "i3", Subject: "beamline.ext.pre.normalize_text.v1.i3", Weight: 50, Enabled: true, HealthStatus: cache.HealthUnhealthy},
			}},
		{ID: "pii_guard", Type: cache.TypeValidator, Subject: "beamline.ext.validate.pii_guard.v1", TimeoutMS: 200, Enabled: true,
			Version: "v1", Config: obj, Metadata: obj, Versions: []cache.Version{}, Instances: []cache.Instance{}},
		{ID: "test_provider", Type: cache.TypeProvider, Subject: "beamline.provider.test_provider.v1", TimeoutMS: 10, Retry: 1, Enabled: true,
			Version: "v1", Config: obj, Metadata: obj, Versions: []cache.Version{}, Instances: []cache.Instance{}},
		{ID: "mask_pii", Type: cache.TypePost, Subject: "beamline.ext.post.mask_pii.v1", TimeoutMS: 150, Enabled: false,
			Version: "v1", Config: obj, Metadata: obj, Versions: []cache.Version{}, Instances: []cache.Instance{}},
	}
}

func TestCLIResolve(t *testing.T) {
	t.Parallel()
	env, _ := publishRegistry(t, "cli.resolve", cliExtensions())

	r := runCLI(t, context.Background(), env, "resolve", "normalize_text")
	if r.code != exitOK {
		t.Fatalf("resolve: exit %d", r.code)
	}
	for _, want := range []string{"version    v1 (subject beamline.ext.pre.normalize_text.v1)", "beamline.ext.pre.normalize_text.v1", "timeout    100 ms, retry 0",
		"closed: opens after 7 consecutive failures or an error rate ≥ 0.5 over 1m0s (min 10 calls); open 30s; half-open max 3",
		"i1        beamline.ext.pre.normalize_text.v1.i1  75      healthy    true     true    75.0%",
		"i3        beamline.ext.pre.normalize_text.v1.i3  50      unhealthy  true     false   0.0%"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("resolve output lacks %q", want)
		}
	}

	// Flags after the id; a routed version; JSON.
	r = runCLI(t, context.Background(), env, "resolve", "normalize_text", "--attr", "tenant_id=t2", "--json")
	var plan struct {
		Revision  int64  `json:"revision"`
		Version   string `json:"version"`
		Subject   string `json:"subject"`
		TimeoutMS int    `json:"timeout_ms"`
		Retry     int    `json:"retry"`
		Breaker   struct {
			FailureThreshold int     `json:"failure_threshold"`
			WindowSeconds    float64 `json:"window_seconds"`
		} `json:"breaker"`
		BreakerState string `json:"breaker_state"`
	}
	if r.code != exitOK || json.Unmarshal([]byte(r.stdout), &plan) != nil {
		t.Fatalf("resolve --json: exit %d, output not JSON", r.code)
	}
	if plan.Revision != 3 || plan.Version != "v2" || plan.Subject != "beamline.ext.pre.normalize_text.v2" || plan.TimeoutMS != 120 ||
		plan.Retry != 1 || plan.Breaker.FailureThreshold != 7 || plan.Breaker.WindowSeconds != 60 || plan.BreakerState != "closed" {
		t.Errorf("plan %+v", plan)
	}

	// Sticky keys are stable.
	first := runCLI(t, context.Background(), env, "resolve", "--sticky", "tenant-42", "normalize_text", "--json")
	second := runCLI(t, context.Background(), env, "resolve", "--sticky", "tenant-42", "normalize_text", "--json")
	if first.code != exitOK || first.stdout != second.stdout || !strings.Contains(first.stdout, `"sticky_key": "tenant-42"`) {
		t.Errorf("sticky resolve differs or lacks the key")
	}

	for _, tt := range []struct {
		args   []string
		code   int
		stderr string
	}{
		{[]string{"resolve", "nope"}, exitError, "extension_not_found: nope: unknown"},
		{[]string{"resolve", "mask_pii"}, exitError, "extension_not_found: mask_pii: disabled"},
		{[]string{"resolve"}, exitUsage, "missing extension id"},
		{[]string{"resolve", "a", "b"}, exitUsage, `unexpected argument "b"`},
		{[]string{"resolve", "a", "--attr", "novalue"}, exitUsage, `want k=v, got "novalue"`},
		{[]string{"resolve", "-h"}, exitOK, ""},
		{[]string{"help"}, exitOK, ""},
	} {
		r := runCLI(t, context.Background(), env, tt.args...)
		if r.code != tt.code || !strings.Contains(r.stderr, tt.stderr) {
			t.Errorf("%v: exit %d, want %d with %q", tt.args, r.code, tt.code, tt.stderr)
		}
		if tt.args[0] == "help" && (!strings.Contains(r.stdout, "resolve ID [--attr k=v]...") || !strings.Contains(r.stdout, "invoke ID [--attr k=v]...")) {
			t.Error("syncer help does not list resolve and invoke")
		}
	}

	// No registry under this prefix: a clear error, not a hang.
	other := envMap{"EXTENSION_REGISTRY_NATS_URL": env["EXTENSION_REGISTRY_NATS_URL"], "EXTENSION_REGISTRY_SUBJECT_PREFIX": "cli.elsewhere"}
	r = runCLI(t, context.Background(), other, "resolve", "normalize_text", "--timeout", "300ms")
	if r.code != exitError || !strings.Contains(r.stderr, "resolve: no registry snapshot on cli.elsewhere.* within 300ms") {
		t.Errorf("without a registry: exit %d", r.code)
	}
}

func TestCLIInvoke(t *testing.T) {
	t.Parallel()
	env, nc := publishRegistry(t, "cli.invoke", cliExtensions())
	reply(t, nc, "beamline.ext.pre.normalize_text.v1.i1", `{"payload":{"text":"hello"}}`)
	reply(t, nc, "beamline.ext.pre.normalize_text.v1.i2", `{"payload":{"text":"hello"}}`)
	reply(t, nc, "beamline.ext.validate.pii_guard.v1", `{"status":"reject","reason":"email found","details":{}}`)
	reply(t, nc, "beamline.provider.test_provider.v1", "") // never answers

	r := runCLI(t, context.Background(), env, "invoke", "normalize_text", "--attr", "tenant_id=t1", "--payload", `{"text":" Hello "}`,
		"--count", "20", "--rate", "500")
	if r.code != exitOK {
		t.Fatalf("invoke: exit %d", r.code)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 21 || !strings.HasPrefix(lines[0], "1 success ") || !strings.Contains(lines[0], `{"payload":{"text":"hello"}}`) ||
		!strings.HasPrefix(lines[20], "20 calls: success 20; retries 0; latency p50 ") {
		t.Errorf("invoke printed %d lines, want 20 results and a summary", len(lines))
	}
	if strings.Contains(r.stdout, " i3 ") {
		t.Error("the unhealthy instance was called")
	}

	r = runCLI(t, context.Background(), env, "invoke", "pii_guard", "--json", "--count", "2")
	var call callLine
	if r.code != exitError || json.Unmarshal([]byte(strings.Split(r.stdout, "\n")[0]), &call) != nil ||
		call.Outcome != "validator_blocked" || !strings.Contains(call.Error, "email found") ||
		!strings.Contains(r.stderr, "invoke: 2 of 2 calls failed (last: validator_blocked") {
		t.Errorf("a rejecting validator: exit %d, call %+v", r.code, call)
	}
	var sum summaryLine
	if err := json.Unmarshal([]byte(strings.Split(strings.TrimSpace(r.stdout), "\n")[2]), &sum); err != nil ||
		sum.Summary.Calls != 2 || sum.Summary.Outcomes["validator_blocked"] != 2 {
		t.Errorf("summary %+v (%v)", sum, err)
	}

	r = runCLI(t, context.Background(), env, "invoke", "test_provider")
	if r.code != exitError || !strings.Contains(r.stdout, "1 extension_timeout ") || !strings.Contains(r.stdout, "attempts=2") ||
		!strings.Contains(r.stdout, "1 calls: extension_timeout 1; retries 1") ||
		!strings.Contains(r.stderr, "syncer: invoke: extension_timeout: test_provider (beamline.provider.test_provider.v1): no reply within 10ms (2 attempts)") {
		t.Errorf("a silent provider: exit %d", r.code)
	}

	for _, tt := range []struct {
		args   []string
		code   int
		stderr string
	}{
		{[]string{"invoke", "nope"}, exitError, "extension_not_found"},
		{[]string{"invoke", "normalize_text", "--count", "0"}, exitUsage, "-count must be at least 1"},
		{[]string{"invoke", "normalize_text", "--payload", "{"}, exitUsage, "-payload is not valid JSON"},
		{[]string{"invoke", "normalize_text", "--rate", "-1"}, exitUsage, "-rate must not be negative"},
		{[]string{"invoke", "normalize_text", "--metadata", "[]"}, exitError, "invalid_request"},
	} {
		r := runCLI(t, context.Background(), env, tt.args...)
		if r.code != tt.code || !strings.Contains(r.stderr, tt.stderr) {
			t.Errorf("%v: exit %d, want %d with %q", tt.args, r.code, tt.code, tt.stderr)
		}
	}
}
