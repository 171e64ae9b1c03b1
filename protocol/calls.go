package protocol

import (
	"encoding/json"
	"fmt"
	"time"
)

// Features a router lists in its reports (Report.Features): what it implements beyond
// protocol version 1 as first published.
const (
	// FeatureAutoDisabled: the router computes checksums with the aggregate's
	// auto_disabled field (§3.1, §4) and honours it (probe calls only). The syncer's
	// automatic disable waits until every live router lists it.
	FeatureAutoDisabled = "auto_disabled"
	// FeatureChecksumV2: the router verifies checksum v2 (PROTOCOL.md §4) whenever a
	// message carries it, and the manifest's document digest with it.
	FeatureChecksumV2 = "checksum_v2"
)

// Call outcomes of the invocation contract, as counted in a report's calls.
const (
	OutcomeSuccess               = "success"
	OutcomeValidatorBlocked      = "validator_blocked"
	OutcomeExtensionTimeout      = "extension_timeout"
	OutcomeExtensionError        = "extension_error"
	OutcomeInvalidResponseFormat = "invalid_response_format"
	OutcomeExtensionUnavailable  = "extension_unavailable"
	OutcomeExtensionNotFound     = "extension_not_found"
	OutcomeInvalidRequest        = "invalid_request"
)

// Outcome classes for fleet health.
const (
	ClassSuccess  = "success"  // the extension answered: success, validator_blocked
	ClassFailure  = "failure"  // it was called and failed: extension_timeout, extension_error, invalid_response_format
	ClassRejected = "rejected" // not sent, the circuit (or the auto-disable probe budget) refused it: extension_unavailable
	ClassIgnored  = ""         // never concerned the extension: extension_not_found, invalid_request, unknown codes
)

// OutcomeClass tells how fleet health counts an outcome (PROTOCOL.md §3.7).
func OutcomeClass(outcome string) string {
	switch outcome {
	case OutcomeSuccess, OutcomeValidatorBlocked:
		return ClassSuccess
	case OutcomeExtensionTimeout, OutcomeExtensionError, OutcomeInvalidResponseFormat:
		return ClassFailure
	case OutcomeExtensionUnavailable:
		return ClassRejected
	}
	return ClassIgnored
}

// Breaker states of a target in a report.
const (
	BreakerClosed   = "closed"
	BreakerHalfOpen = "half_open"
	BreakerOpen     = "open"
)

// ExtensionCalls is one extension's entry in a router report's "calls" (§3.7): the calls
// since the router's previous report.
type ExtensionCalls struct {
	Calls    uint64            `json:"calls"`
	Outcomes map[string]uint64 `json:"outcomes"`
	Retries  uint64            `json:"retries"`
	P50MS    float64           `json:"p50_ms"`
	P95MS    float64           `json:"p95_ms"`
	P99MS    float64           `json:"p99_ms"`
	// Sketch is the latency DDSketch (seconds) in its protobuf encoding
	// (github.com/DataDog/sketches-go ddsketch.proto; base64 in JSON), so that the
	// fleet view can merge routers exactly.
	Sketch []byte `json:"sketch,omitempty"`
	// LastSuccess and LastFailure are the times of the last call of each class in the
	// period (absent: none).
	LastSuccess *time.Time `json:"last_success,omitempty"`
	LastFailure *time.Time `json:"last_failure,omitempty"`
	// Targets splits the calls by target (instance id, or subject); its entries
	// have no Targets and no Sketch.
	Targets map[string]TargetCalls `json:"targets,omitempty"`
}

// TargetCalls is one target of an ExtensionCalls.
type TargetCalls struct {
	Calls       uint64            `json:"calls"`
	Outcomes    map[string]uint64 `json:"outcomes"`
	Breaker     string            `json:"breaker,omitempty"`
	P99MS       float64           `json:"p99_ms"`
	LastSuccess *time.Time        `json:"last_success,omitempty"`
	LastFailure *time.Time        `json:"last_failure,omitempty"`
}

// Bounds on one report's calls: a report beyond them is refused (reports are not signed;
// whoever may publish on P.report.* must not be able to grow the syncer's memory).
const (
	MaxReportExtensions = 10_000
	MaxReportTargets    = 1_000 // per extension
	MaxReportOutcomes   = 32    // per extension or target
)

// DecodeCalls decodes one entry of a report's calls.
func DecodeCalls(id string, raw json.RawMessage) (*ExtensionCalls, error) {
	var c ExtensionCalls
	if err := json.Unmarshal(raw, &c); err != nil {
		return nil, invalid("calls of %q: %v", id, err)
	}
	if len(c.Targets) > MaxReportTargets {
		return nil, invalid("calls of %q: %d targets (at most %d)", id, len(c.Targets), MaxReportTargets)
	}
	if err := checkOutcomes(c.Calls, c.Outcomes); err != nil {
		return nil, invalid("calls of %q: %v", id, err)
	}
	for t, tc := range c.Targets {
		if err := checkOutcomes(tc.Calls, tc.Outcomes); err != nil {
			return nil, invalid("calls of %q, target %q: %v", id, t, err)
		}
		switch tc.Breaker {
		case "", BreakerClosed, BreakerHalfOpen, BreakerOpen:
		default:
			return nil, invalid("calls of %q, target %q: unknown breaker state %q", id, t, tc.Breaker)
		}
	}
	return &c, nil
}

func checkOutcomes(calls uint64, outcomes map[string]uint64) error {
	if len(outcomes) > MaxReportOutcomes {
		return fmt.Errorf("%d outcomes (at most %d)", len(outcomes), MaxReportOutcomes)
	}
	var sum uint64
	for _, n := range outcomes {
		if sum+n < sum {
			return fmt.Errorf("outcome counts overflow")
		}
		sum += n
	}
	if sum != calls {
		return fmt.Errorf("outcomes add up to %d, calls is %d", sum, calls)
	}
	return nil
}
