package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/sony/gobreaker/v2"

	"github.com/beamline/registry-syncer/cache"
	"github.com/beamline/registry-syncer/protocol"
)

// Invocation: what the Beamline router does around every extension call.
//
// Invoke looks the extension up in the snapshot being served, selects its
// version (cache.Extension.Choose with the request's attributes) and then
// its target: the extension's instances serve its current version (the
// extension's own definition); when the selected version is the current one and
// the extension has enabled instances, one of them is chosen (see balance.go),
// otherwise the version's subject is called. It then passes the call through the
// target's circuit breaker (BreakerConfig) and makes it: a NATS request on the
// target's subject with timeout_ms per attempt; only a NATS timeout is retried,
// up to retry times, after a backoff of 100·2^(n−1) ms before retry n (the
// caller's context cancels it). Every call is counted and timed (callstats.go).
//
// Extension not found: an id unknown to the snapshot, an extension whose
// metadata.kill_switch is true (whatever else it says), and a disabled
// extension (enabled false) for a request that none of its enabled routed
// versions matches (cache.Extension.Choose: a disabled extension in rollout
// serves its allow-listed attributes and its $percent share, nobody else) all
// fail with extension_not_found, before any breaker or NATS traffic;
// InvokeError.Reason says which ("unknown", "kill_switch", "disabled", or
// "disabled (in rollout: …)"), and so does a client without a snapshot yet
// ("no snapshot").
//
// Extension metadata read by the client (every field optional; a field of the
// wrong type or out of range keeps its default and is listed in
// Plan.Problems):
//
//	{"kill_switch": true,                  // never invoke (wins over everything)
//	 "sticky_attr": "tenant_id",           // attribute whose value is the sticky key
//	 "circuit_breaker": {"failure_threshold": 5, "error_rate_threshold": 0.5,
//	                     "window_seconds": 60, "half_open_max_requests": 3,
//	                     "min_requests": 10, "open_timeout_ms": 30000},
//	 "limits": {"max_payload_bytes": 1048576, "max_metadata_bytes": 65536}}
//
// The extension_health columns (thresholds per extension) are not carried in the
// snapshot: metadata.circuit_breaker stands in for them until the protocol
// carries them.

// Error codes of InvokeError, from the router project's contract.
const (
	CodeExtensionUnavailable  = protocol.OutcomeExtensionUnavailable  // circuit open (or half-open and busy), or no usable instance
	CodeExtensionTimeout      = protocol.OutcomeExtensionTimeout      // every attempt timed out, or the caller's deadline passed
	CodeExtensionNotFound     = protocol.OutcomeExtensionNotFound     // unknown, disabled or kill-switched
	CodeValidatorBlocked      = protocol.OutcomeValidatorBlocked      // a validator answered "reject"
	CodeInvalidRequest        = protocol.OutcomeInvalidRequest        // payload or metadata over the limits, or not JSON
	CodeInvalidResponseFormat = protocol.OutcomeInvalidResponseFormat // the reply is not a JSON object of the type's shape
	CodeExtensionError        = protocol.OutcomeExtensionError        // anything else (no responders, connection closed, …)
)

// Sentinels: errors.Is(err, ErrExtensionTimeout) holds for an *InvokeError of
// that code.
var (
	ErrExtensionUnavailable  = errors.New(CodeExtensionUnavailable)
	ErrExtensionTimeout      = errors.New(CodeExtensionTimeout)
	ErrExtensionNotFound     = errors.New(CodeExtensionNotFound)
	ErrValidatorBlocked      = errors.New(CodeValidatorBlocked)
	ErrInvalidRequest        = errors.New(CodeInvalidRequest)
	ErrInvalidResponseFormat = errors.New(CodeInvalidResponseFormat)
	ErrExtensionError        = errors.New(CodeExtensionError)
)

var sentinels = map[string]error{
	CodeExtensionUnavailable:  ErrExtensionUnavailable,
	CodeExtensionTimeout:      ErrExtensionTimeout,
	CodeExtensionNotFound:     ErrExtensionNotFound,
	CodeValidatorBlocked:      ErrValidatorBlocked,
	CodeInvalidRequest:        ErrInvalidRequest,
	CodeInvalidResponseFormat: ErrInvalidResponseFormat,
	CodeExtensionError:        ErrExtensionError,
}

// InvokeError is the error of a failed Invoke. errors.Is matches it against the
// sentinel of its Code; Unwrap gives the underlying cause, if any.
type InvokeError struct {
	Code      string
	Extension string
	Version   string // "" when no version was selected
	Target    string // instance id, or the subject when the extension has no instance
	Subject   string // the subject called (or that would have been)
	Attempts  int    // NATS requests made
	// Reason explains the error (a validator's reason for validator_blocked).
	Reason string
	// Details is a validator's details (validator_blocked only).
	Details json.RawMessage
	Err     error
}

func (e *InvokeError) Error() string {
	msg := e.Code + ": " + e.Extension
	if e.Target != "" {
		msg += " (" + e.Target + ")"
	}
	if e.Reason != "" {
		msg += ": " + e.Reason
	}
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

func (e *InvokeError) Unwrap() error { return e.Err }

// Is reports whether target is the sentinel of e's code.
func (e *InvokeError) Is(target error) bool { return sentinels[e.Code] == target }

// Request is one extension call's input.
type Request struct {
	TraceID  string
	TenantID string
	// Payload is any JSON value (null when empty).
	Payload json.RawMessage
	// Metadata is a JSON object ({} when empty).
	Metadata json.RawMessage
	// StickyKey, when set, pins the call to the instance this key hashes to
	// (overriding the extension's metadata.sticky_attr).
	StickyKey string
}

// wireRequest is the body of the NATS request.
type wireRequest struct {
	TraceID  string          `json:"trace_id"`
	TenantID string          `json:"tenant_id"`
	Payload  json.RawMessage `json:"payload"`
	Metadata json.RawMessage `json:"metadata"`
}

// Result is a successful call's outcome. The type's fields are set from the
// reply: Payload and Metadata for pre and post (nil when absent); Status,
// Reason, Details for validators (Status "ok"; a "reject" is a
// validator_blocked error); ProviderID, Output, Usage, Metadata for providers.
type Result struct {
	Extension string
	Type      string
	Version   string
	Target    string
	Subject   string
	Attempts  int
	Latency   time.Duration
	Reply     json.RawMessage // the whole reply object

	Payload    json.RawMessage
	Metadata   json.RawMessage
	Status     string
	Reason     string
	Details    json.RawMessage
	ProviderID string
	Output     json.RawMessage
	Usage      json.RawMessage
}

// invoker is the invocation state of a Client: policies, breakers and
// statistics. It is created on first use.
type invoker struct {
	c        *Client
	policies sync.Map // extension id -> *policyEntry
	breakers breakers
	probes   probeBudget
	rec      *callRecorder

	// rnd, when set by a test, replaces rand.Uint64 for weighted picks.
	rndMu sync.Mutex
	rnd   *rand.Rand
}

// policyEntry caches the policy parsed from one extension value.
type policyEntry struct {
	ext *cache.Extension
	pol policy
}

// invokerOf returns c's invoker, creating it on first use.
func (c *Client) invokerOf() *invoker {
	if inv := c.calls.Load(); inv != nil {
		return inv
	}
	inv := &invoker{c: c, rec: newCallRecorder()}
	if c.calls.CompareAndSwap(nil, inv) {
		return inv
	}
	return c.calls.Load()
}

func (inv *invoker) policy(e *cache.Extension) *policy {
	if v, ok := inv.policies.Load(e.ID); ok {
		if pe := v.(*policyEntry); pe.ext == e {
			return &pe.pol
		}
	}
	pe := &policyEntry{ext: e, pol: parsePolicy(e)}
	inv.policies.Store(e.ID, pe)
	return &pe.pol
}

func (inv *invoker) random() uint64 {
	if inv.rnd == nil {
		return rand.Uint64()
	}
	inv.rndMu.Lock()
	defer inv.rndMu.Unlock()
	return inv.rnd.Uint64()
}

// route is the outcome of selection for one request.
type route struct {
	ext      *cache.Extension
	pol      *policy
	choice   cache.VersionChoice
	instance int // index into ext.Instances, -1 when calling the version's subject
	subject  string
	target   string
	stickKey string
}

// notFound returns the extension_not_found error for id, or nil when the
// extension may be invoked.
func (inv *invoker) lookup(id string) (*cache.Extension, *policy, *InvokeError) {
	s := inv.c.snap.Load()
	if s == nil {
		return nil, nil, &InvokeError{Code: CodeExtensionNotFound, Extension: id, Reason: "no snapshot"}
	}
	e, ok := s.Get(id)
	if !ok {
		return nil, nil, &InvokeError{Code: CodeExtensionNotFound, Extension: id, Reason: "unknown"}
	}
	p := inv.policy(e)
	if p.killed {
		return e, p, &InvokeError{Code: CodeExtensionNotFound, Extension: id, Reason: "kill_switch"}
	}
	if !e.Serves() {
		return e, nil, &InvokeError{Code: CodeExtensionNotFound, Extension: id, Reason: "disabled"}
	}
	if e.AutoDisabled && !inv.probes.allow(id, p.breaker, time.Now()) {
		return e, p, &InvokeError{Code: CodeExtensionUnavailable, Extension: id,
			Reason: "auto-disabled by the registry (the fleet's circuit is open); probe budget used"}
	}
	return e, p, nil
}

// route selects the version and the target of one call.
func (inv *invoker) route(e *cache.Extension, p *policy, req *Request, attrs map[string]string) (route, *InvokeError) {
	choice, ok := e.Choose(attrs)
	r := route{ext: e, pol: p, choice: choice, instance: -1}
	if !ok {
		return r, &InvokeError{Code: CodeExtensionNotFound, Extension: e.ID, Reason: "disabled (in rollout: no enabled version's routing_rules or $percent match this request)"}
	}
	r.subject, r.target = r.choice.Subject, r.choice.Subject
	if r.choice.Version != e.Version {
		return r, nil // a routed version: instances serve the current version only
	}
	_, usable, enabled := instanceWeights(e.Instances)
	if enabled == 0 {
		return r, nil
	}
	if usable == 0 {
		return r, &InvokeError{Code: CodeExtensionUnavailable, Extension: e.ID, Version: r.choice.Version, Subject: r.subject,
			Reason: "no usable instance (every enabled instance is unhealthy)"}
	}
	r.stickKey = req.StickyKey
	if r.stickKey == "" && p.stickyAttr != "" {
		r.stickKey = attrs[p.stickyAttr]
	}
	if r.stickKey != "" {
		r.instance = pickSticky(e.Instances, r.stickKey)
	} else {
		r.instance = pickWeighted(e.Instances, inv.random())
	}
	in := &e.Instances[r.instance]
	r.subject, r.target = in.Subject, in.InstanceID
	return r, nil
}

// Invoke calls extension id as the Beamline router does (see the package
// documentation of invocation above): version and instance selection, circuit
// breaker, NATS request-reply with timeout and retries, reply validation,
// statistics. attrs is the request context used for version routing (tenant_id,
// environment, …) and may be nil. A failure is an *InvokeError; for
// validator_blocked the Result is returned too.
func (c *Client) Invoke(ctx context.Context, id string, req Request, attrs map[string]string) (*Result, error) {
	inv := c.invokerOf()
	e, p, ierr := inv.lookup(id)
	if ierr != nil {
		label := id
		if e == nil {
			label = ""
		}
		inv.rec.record(label, "", ierr.Code, -1, 0)
		return nil, ierr
	}
	r, ierr := inv.route(e, p, &req, attrs)
	if ierr != nil {
		inv.rec.record(id, "", ierr.Code, -1, 0)
		return nil, ierr
	}
	body, ierr := encodeRequest(&r, &req)
	if ierr != nil {
		inv.rec.record(id, "", ierr.Code, -1, 0)
		return nil, ierr
	}
	b := inv.breakers.get(id, r.target, p.breaker)
	res := &Result{Extension: id, Type: e.Type, Version: r.choice.Version, Target: r.target, Subject: r.subject}
	start := time.Now()
	_, err := b.cb.Execute(func() (struct{}, error) {
		return struct{}{}, c.call(ctx, &r, body, res)
	})
	latency := time.Since(start)
	if err == nil {
		res.Latency = latency
		inv.rec.record(id, r.target, OutcomeSuccess, latency, res.Attempts-1)
		return res, nil
	}
	var out *InvokeError
	switch {
	case errors.Is(err, gobreaker.ErrOpenState), errors.Is(err, gobreaker.ErrTooManyRequests):
		out = &InvokeError{Code: CodeExtensionUnavailable, Reason: "circuit " + stateName(b.cb.State()), Err: err}
		latency = -1
	case errors.As(err, &out):
	default:
		out = &InvokeError{Code: CodeExtensionError, Err: err}
	}
	out.Extension, out.Version, out.Target, out.Subject, out.Attempts = id, r.choice.Version, r.target, r.subject, res.Attempts
	inv.rec.record(id, r.target, out.Code, latency, max(res.Attempts-1, 0))
	if out.Code == CodeValidatorBlocked {
		res.Latency = latency
		return res, out
	}
	return nil, out
}

func encodeRequest(r *route, req *Request) ([]byte, *InvokeError) {
	fail := func(reason string, err error) *InvokeError {
		return &InvokeError{Code: CodeInvalidRequest, Extension: r.ext.ID, Version: r.choice.Version, Target: r.target,
			Subject: r.subject, Reason: reason, Err: err}
	}
	if n := len(req.Payload); n > r.pol.maxPayload {
		return nil, fail(fmt.Sprintf("payload is %d bytes, over the limit of %d", n, r.pol.maxPayload), nil)
	}
	if n := len(req.Metadata); n > r.pol.maxMetadata {
		return nil, fail(fmt.Sprintf("metadata is %d bytes, over the limit of %d", n, r.pol.maxMetadata), nil)
	}
	payload, metadata := req.Payload, req.Metadata
	if len(payload) == 0 {
		payload = json.RawMessage("null")
	}
	if len(metadata) == 0 {
		metadata = json.RawMessage("{}")
	} else if !isObject(metadata) {
		return nil, fail("metadata is not a JSON object", nil)
	}
	if !json.Valid(payload) || !json.Valid(metadata) {
		return nil, fail("payload or metadata is not valid JSON", nil)
	}
	// Written by hand (the same bytes as json.Marshal of a wireRequest, but for
	// the raw values, which are sent as given): a third of encoding/json's cost.
	body := make([]byte, 0, len(payload)+len(metadata)+len(req.TraceID)+len(req.TenantID)+64)
	body = append(body, `{"trace_id":`...)
	body = appendJSONString(body, req.TraceID)
	body = append(body, `,"tenant_id":`...)
	body = appendJSONString(body, req.TenantID)
	body = append(body, `,"payload":`...)
	body = append(body, payload...)
	body = append(body, `,"metadata":`...)
	body = append(body, metadata...)
	body = append(body, '}')
	return body, nil
}

// appendJSONString appends s as a JSON string, escaped as encoding/json does
// (invalid UTF-8 becomes U+FFFD; <, >, & are escaped too).
func appendJSONString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hex[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// call makes the NATS request(s) of one call and decodes the reply into res.
func (c *Client) call(ctx context.Context, r *route, body []byte, res *Result) error {
	timeout := time.Duration(r.choice.TimeoutMS) * time.Millisecond
	var reply *nats.Msg
	for attempt := 1; ; attempt++ {
		res.Attempts = attempt
		actx, cancel := context.WithTimeout(ctx, timeout)
		msg, err := c.nc.RequestWithContext(actx, r.subject, body)
		cancel()
		if err == nil {
			reply = msg
			break
		}
		if ctx.Err() != nil {
			return callerGone(ctx)
		}
		if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, nats.ErrTimeout) {
			if errors.Is(err, nats.ErrMaxPayload) {
				return &InvokeError{Code: CodeInvalidRequest, Reason: "request over the NATS server's max_payload", Err: err}
			}
			return &InvokeError{Code: CodeExtensionError, Err: err}
		}
		if attempt > r.choice.Retry {
			return &InvokeError{Code: CodeExtensionTimeout,
				Reason: fmt.Sprintf("no reply within %s (%d attempts)", timeout, attempt), Err: err}
		}
		t := time.NewTimer(retryBackoff(attempt))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return callerGone(ctx)
		}
	}
	return decodeReply(r.ext.Type, reply.Data, res)
}

// retryBackoff is the pause before retry n (1-based): 100·2^(n−1) ms.
func retryBackoff(n int) time.Duration { return 100 * time.Millisecond << (n - 1) }

// callerGone is the error of a call abandoned because ctx ended: excluded
// from the breaker's counts, reported as extension_timeout when ctx's
// deadline passed and extension_error when it was cancelled.
func callerGone(ctx context.Context) error {
	code := CodeExtensionError
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		code = CodeExtensionTimeout
	}
	return &InvokeError{Code: code, Err: fmt.Errorf("%w: %w", errCallerGone, ctx.Err())}
}

func isObject(b []byte) bool {
	b = bytes.TrimLeft(b, " \t\r\n")
	return len(b) > 0 && b[0] == '{'
}

type prePostReply struct {
	Payload  json.RawMessage `json:"payload"`
	Metadata json.RawMessage `json:"metadata"`
}

type validatorReply struct {
	Status  string          `json:"status"`
	Reason  string          `json:"reason"`
	Details json.RawMessage `json:"details"`
}

type providerReply struct {
	ProviderID string          `json:"provider_id"`
	Output     json.RawMessage `json:"output"`
	Usage      json.RawMessage `json:"usage"`
	Metadata   json.RawMessage `json:"metadata"`
}

func decodeReply(typ string, data []byte, res *Result) error {
	bad := func(reason string, err error) error {
		return &InvokeError{Code: CodeInvalidResponseFormat, Reason: reason, Err: err}
	}
	if !isObject(data) {
		return bad("reply is not a JSON object", nil)
	}
	res.Reply = json.RawMessage(data)
	var err error
	switch typ {
	case cache.TypeValidator:
		var v validatorReply
		if err = json.Unmarshal(data, &v); err != nil {
			break
		}
		res.Status, res.Reason, res.Details = v.Status, v.Reason, v.Details
		switch v.Status {
		case "ok":
			return nil
		case "reject":
			return &InvokeError{Code: CodeValidatorBlocked, Reason: v.Reason, Details: v.Details}
		}
		return bad(fmt.Sprintf("validator status %q, want \"ok\" or \"reject\"", v.Status), nil)
	case cache.TypeProvider:
		var v providerReply
		if err = json.Unmarshal(data, &v); err == nil {
			res.ProviderID, res.Output, res.Usage, res.Metadata = v.ProviderID, v.Output, v.Usage, v.Metadata
		}
	default: // pre, post
		var v prePostReply
		if err = json.Unmarshal(data, &v); err == nil {
			res.Payload, res.Metadata = v.Payload, v.Metadata
			if len(v.Metadata) > 0 && string(v.Metadata) != "null" && !isObject(v.Metadata) {
				return bad("reply metadata is not a JSON object", nil)
			}
		}
	}
	if err != nil {
		return bad("reply does not have the "+typ+" shape", err)
	}
	return nil
}

// prune forgets the breakers and cached policies of targets and extensions the
// snapshot no longer has, so that a removed instance's breaker state is not
// reported for ever. Called from CallStats and at each scrape.
func (inv *invoker) prune() {
	s := inv.c.snap.Load()
	if s == nil {
		return
	}
	inv.policies.Range(func(k, v any) bool {
		if e, ok := s.Get(k.(string)); !ok || e != v.(*policyEntry).ext {
			inv.policies.Delete(k)
		}
		return true
	})
	inv.breakers.prune(func(ext, target string) bool {
		e, ok := s.Get(ext)
		if !ok {
			return false
		}
		if target == e.Subject {
			return true
		}
		for i := range e.Instances {
			if e.Instances[i].InstanceID == target {
				return true
			}
		}
		for i := range e.Versions {
			if e.Versions[i].Subject == target {
				return true
			}
		}
		return false
	})
}

// CallStats returns the calls of every target since the previous CallStats
// (or since the client was created) and starts counting anew: counts by
// outcome, retries, the breaker state now, and a latency sketch per target.
// It is meant for one consumer (the router's periodic report); Prometheus
// metrics (Collector) are cumulative and unaffected. Breakers of targets the
// snapshot no longer has are forgotten here and at each scrape.
func (c *Client) CallStats() CallStats {
	inv := c.invokerOf()
	inv.prune()
	return inv.rec.take(func(ext, target string) string {
		if b := inv.breakers.peek(ext, target); b != nil {
			return stateName(b.cb.State())
		}
		return ""
	})
}
