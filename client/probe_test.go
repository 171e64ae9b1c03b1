package client

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/beamline/registry-syncer/cache"
)

// TestInvokeAutoDisabledProbes: an auto-disabled extension gets at most
// half_open_max_requests probe calls per open timeout from a client; every other call
// is extension_unavailable without a request; once the registry clears auto_disabled,
// every call goes through again.
func TestInvokeAutoDisabledProbes(t *testing.T) {
	t.Parallel()
	e := ext("flaky", cache.TypePre)
	e.Metadata = json.RawMessage(`{"circuit_breaker": {"half_open_max_requests": 2, "open_timeout_ms": 400}}`)
	e.AutoDisabled = true
	b := setupInvoke(t, e)
	r := b.respond(t, e.Subject, `{}`)

	start := time.Now()
	unavailable := 0
	for range 10 {
		_, err := b.invoke(t, "flaky", Request{}, nil)
		if err == nil {
			continue
		}
		if code(t, err) != CodeExtensionUnavailable {
			t.Fatalf("an auto-disabled extension failed with %v, want extension_unavailable or a probe", err)
		}
		unavailable++
	}
	if time.Since(start) < 400*time.Millisecond {
		if r.count() != 2 || unavailable != 8 {
			t.Fatalf("10 calls within one open timeout: %d reached the extension, %d unavailable; want 2 and 8", r.count(), unavailable)
		}
	}
	// The next window lets two more probes through.
	deadline := time.Now().Add(10 * time.Second)
	for r.count() < 4 {
		if time.Now().After(deadline) {
			t.Fatalf("no probe after the open timeout: %d calls reached the extension", r.count())
		}
		_, _ = b.invoke(t, "flaky", Request{}, nil)
	}
	stats := b.c.CallStats().Extension("flaky")
	if stats.Outcomes[OutcomeSuccess] != uint64(r.count()) || stats.Outcomes[CodeExtensionUnavailable] == 0 {
		t.Errorf("call statistics %v with %d calls answered", stats.Outcomes, r.count())
	}

	cleared := *e
	cleared.AutoDisabled = false
	b.update(t, &cleared)
	before := r.count()
	for range 10 {
		if _, err := b.invoke(t, "flaky", Request{}, nil); err != nil {
			t.Fatalf("after auto_disabled cleared: %v", err)
		}
	}
	if got := r.count() - before; got != 10 {
		t.Errorf("after auto_disabled cleared %d of 10 calls reached the extension", got)
	}
}
