package client

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/beamline/registry-syncer/cache"
)

// Invocation defaults, from the router project's contract and the defaults of the
// extension_health columns.
const (
	DefaultFailureThreshold    = 5
	DefaultErrorRateThreshold  = 0.5
	DefaultWindow              = 60 * time.Second
	DefaultHalfOpenMaxRequests = 3
	DefaultMinRequests         = 10
	DefaultOpenTimeout         = 30 * time.Second
	DefaultMaxPayloadBytes     = 1 << 20
	DefaultMaxMetadataBytes    = 64 << 10
)

// BreakerConfig is the circuit breaker of one invocation target (an instance, or
// the subject of an extension without instances).
//
// Closed, a target opens after FailureThreshold consecutive failed calls, or once
// at least MinRequests calls were made over the rolling Window and the share of
// failures among them reaches ErrorRateThreshold. Open, every call fails at once
// with extension_unavailable for OpenTimeout; then the breaker is half-open and
// lets HalfOpenMaxRequests probe calls through (any further call is
// extension_unavailable): a failed probe reopens it, and once all of them have
// succeeded it closes with its counts reset. A call is one Invoke, retries
// included; validator_blocked is a success (the extension answered), a call
// abandoned by the caller's context counts neither way.
type BreakerConfig struct {
	FailureThreshold    int           `json:"failure_threshold"`
	ErrorRateThreshold  float64       `json:"error_rate_threshold"`
	Window              time.Duration `json:"window_ns"`
	HalfOpenMaxRequests int           `json:"half_open_max_requests"`
	MinRequests         int           `json:"min_requests"`
	OpenTimeout         time.Duration `json:"open_timeout_ns"`
}

// policy is what an extension's metadata says about how to invoke it.
type policy struct {
	breaker     BreakerConfig
	maxPayload  int
	maxMetadata int
	stickyAttr  string
	killed      bool
	problems    []string // metadata fields ignored (wrong type or out of range)
}

// metaPolicy is the part of an extension's metadata that the client reads.
// Every field is optional.
type metaPolicy struct {
	KillSwitch     json.RawMessage `json:"kill_switch"`
	StickyAttr     json.RawMessage `json:"sticky_attr"`
	CircuitBreaker json.RawMessage `json:"circuit_breaker"`
	Limits         json.RawMessage `json:"limits"`
}

type metaBreaker struct {
	FailureThreshold    *int     `json:"failure_threshold"`
	ErrorRateThreshold  *float64 `json:"error_rate_threshold"`
	WindowSeconds       *float64 `json:"window_seconds"`
	HalfOpenMaxRequests *int     `json:"half_open_max_requests"`
	MinRequests         *int     `json:"min_requests"`
	OpenTimeoutMS       *int     `json:"open_timeout_ms"`
}

type metaLimits struct {
	MaxPayloadBytes  *int `json:"max_payload_bytes"`
	MaxMetadataBytes *int `json:"max_metadata_bytes"`
}

func defaultPolicy() policy {
	return policy{
		breaker: BreakerConfig{
			FailureThreshold:    DefaultFailureThreshold,
			ErrorRateThreshold:  DefaultErrorRateThreshold,
			Window:              DefaultWindow,
			HalfOpenMaxRequests: DefaultHalfOpenMaxRequests,
			MinRequests:         DefaultMinRequests,
			OpenTimeout:         DefaultOpenTimeout,
		},
		maxPayload:  DefaultMaxPayloadBytes,
		maxMetadata: DefaultMaxMetadataBytes,
	}
}

// parsePolicy reads the invocation policy from an extension's metadata. A field
// of the wrong type or out of range keeps its default and is named in problems;
// the rest still applies.
func parsePolicy(e *cache.Extension) policy {
	p := defaultPolicy()
	var m metaPolicy
	if len(e.Metadata) == 0 {
		return p
	}
	if err := json.Unmarshal(e.Metadata, &m); err != nil {
		p.problems = append(p.problems, fmt.Sprintf("metadata: %v", err))
		return p
	}
	if len(m.KillSwitch) > 0 {
		if err := json.Unmarshal(m.KillSwitch, &p.killed); err != nil {
			p.problems = append(p.problems, "metadata.kill_switch: not a boolean")
		}
	}
	if len(m.StickyAttr) > 0 {
		if err := json.Unmarshal(m.StickyAttr, &p.stickyAttr); err != nil {
			p.problems = append(p.problems, "metadata.sticky_attr: not a string")
		}
	}
	if len(m.CircuitBreaker) > 0 && string(m.CircuitBreaker) != "null" {
		var b metaBreaker
		if err := json.Unmarshal(m.CircuitBreaker, &b); err != nil {
			p.problems = append(p.problems, fmt.Sprintf("metadata.circuit_breaker: %v", err))
		} else {
			p.applyBreaker(&b)
		}
	}
	if len(m.Limits) > 0 && string(m.Limits) != "null" {
		var l metaLimits
		if err := json.Unmarshal(m.Limits, &l); err != nil {
			p.problems = append(p.problems, fmt.Sprintf("metadata.limits: %v", err))
		} else {
			setInt(&p, &p.maxPayload, l.MaxPayloadBytes, 1, "metadata.limits.max_payload_bytes")
			setInt(&p, &p.maxMetadata, l.MaxMetadataBytes, 1, "metadata.limits.max_metadata_bytes")
		}
	}
	return p
}

func (p *policy) applyBreaker(b *metaBreaker) {
	c := &p.breaker
	setInt(p, &c.FailureThreshold, b.FailureThreshold, 1, "metadata.circuit_breaker.failure_threshold")
	setInt(p, &c.HalfOpenMaxRequests, b.HalfOpenMaxRequests, 1, "metadata.circuit_breaker.half_open_max_requests")
	setInt(p, &c.MinRequests, b.MinRequests, 1, "metadata.circuit_breaker.min_requests")
	if v := b.ErrorRateThreshold; v != nil {
		if *v > 0 && *v <= 1 {
			c.ErrorRateThreshold = *v
		} else {
			p.problems = append(p.problems, fmt.Sprintf("metadata.circuit_breaker.error_rate_threshold: must be in (0, 1] (got %g)", *v))
		}
	}
	if v := b.WindowSeconds; v != nil {
		if *v >= 0.01 && *v <= 86400 {
			c.Window = time.Duration(*v * float64(time.Second))
		} else {
			p.problems = append(p.problems, fmt.Sprintf("metadata.circuit_breaker.window_seconds: must be in 0.01..86400 (got %g)", *v))
		}
	}
	if v := b.OpenTimeoutMS; v != nil {
		if *v >= 1 {
			c.OpenTimeout = time.Duration(*v) * time.Millisecond
		} else {
			p.problems = append(p.problems, fmt.Sprintf("metadata.circuit_breaker.open_timeout_ms: must be positive (got %d)", *v))
		}
	}
}

func setInt(p *policy, dst *int, v *int, minimum int, name string) {
	if v == nil {
		return
	}
	if *v < minimum {
		p.problems = append(p.problems, fmt.Sprintf("%s: must be at least %d (got %d)", name, minimum, *v))
		return
	}
	*dst = *v
}
