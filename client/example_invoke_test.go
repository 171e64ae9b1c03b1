package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"

	"github.com/beamline/registry-syncer/client"
)

// ExampleClient_Invoke calls an extension as the router does, and reports the
// calls periodically.
func ExampleClient_Invoke() {
	var c *client.Client // created and started as in Example

	invoke := func(ctx context.Context) {
		attrs := map[string]string{"tenant_id": "t1", "environment": "prod"}
		req := client.Request{TraceID: "4bf92f35", TenantID: "t1", Payload: json.RawMessage(`{"text":" Hello "}`)}
		res, err := c.Invoke(ctx, "normalize_text", req, attrs)
		switch {
		case errors.Is(err, client.ErrExtensionUnavailable): // circuit open: skip this step
		case errors.Is(err, client.ErrValidatorBlocked): // res.Reason, res.Details
		case err != nil:
			var ie *client.InvokeError
			if errors.As(err, &ie) {
				slog.Warn("extension failed", "code", ie.Code, "target", ie.Target, "attempts", ie.Attempts)
			}
		default:
			_ = res.Payload // the normalized payload
		}
	}
	report := func() {
		stats := c.CallStats() // since the previous report
		for _, t := range stats.Targets {
			slog.Info("calls", "extension", t.Extension, "target", t.Target, "calls", t.Calls,
				"p99", t.Quantile(0.99), "breaker", t.Breaker)
		}
	}
	_, _ = invoke, report
}
