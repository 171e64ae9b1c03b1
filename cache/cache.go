// Package cache owns the immutable, versioned registry snapshot: its types, validation, canonical encoding and checksum, and applying one revision's changes to produce the next snapshot.
package cache

import (
	"encoding/json"
	"errors"

	"github.com/beamline/registry-syncer/rules"
)

// Extension types.
const (
	TypePre       = "pre"
	TypeValidator = "validator"
	TypePost      = "post"
	TypeProvider  = "provider"
)

// Instance health statuses.
const (
	HealthHealthy   = "healthy"
	HealthDegraded  = "degraded"
	HealthUnhealthy = "unhealthy"
	HealthUnknown   = "unknown"
)

// Change operations.
const (
	OpPut    = "put"
	OpDelete = "delete"
)

// Change kinds.
const (
	KindExtension = "extension"
	KindVersion   = "version"
	KindInstance  = "instance"
	KindAggregate = "aggregate"
)

// Validation limits, in bytes where they are lengths: the registry's rules (package rules),
// which the database enforces too.
const (
	MaxIDLen         = rules.MaxIDBytes
	MaxSubjectLen    = rules.MaxSubjectBytes
	MaxVersionLen    = rules.MaxVersionBytes
	MinTimeoutMS     = rules.MinTimeoutMS
	MaxTimeoutMS     = rules.MaxTimeoutMS
	MinRetry         = rules.MinRetry
	MaxRetry         = rules.MaxRetry
	MinWeight        = rules.MinWeight
	MaxWeight        = rules.MaxWeight
	MaxInstanceIDLen = rules.MaxInstanceIDBytes
)

var (
	// ErrInvalid is wrapped by every validation error (see ValidationError) and
	// by Apply errors caused by a malformed change.
	ErrInvalid = errors.New("cache: invalid")
	// ErrChecksum is wrapped by Decode when the recomputed checksum differs from
	// the document's.
	ErrChecksum = errors.New("cache: checksum mismatch")
	// ErrNotFound is wrapped by Apply when a version or instance is put for an
	// extension that does not exist.
	ErrNotFound = errors.New("cache: unknown extension")
)

// Extension is one registry extension aggregate: its own fields plus its
// versions and instances. Extensions reached through a Snapshot are shared and
// must be treated as read-only.
type Extension struct {
	ID        string          `json:"id"`
	Type      string          `json:"type"` // pre | validator | post | provider
	Subject   string          `json:"subject"`
	TimeoutMS int             `json:"timeout_ms"`
	Retry     int             `json:"retry"`
	Enabled   bool            `json:"enabled"`
	Version   string          `json:"version"`
	Config    json.RawMessage `json:"config"`    // JSON object; "{}" when empty/null on input
	Metadata  json.RawMessage `json:"metadata"`  // JSON object; "{}" when empty/null on input
	Versions  []Version       `json:"versions"`  // sorted by Version (bytewise), [] when none
	Instances []Instance      `json:"instances"` // sorted by InstanceID (bytewise), [] when none
	// AutoDisabled is set by the leading syncer when the fleet's circuit breakers are
	// open for the extension (automatic management, off by default); it is separate from
	// the operator's Enabled. An auto-disabled extension receives only a few probe calls
	// per open timeout at each router, so that recovery is seen (PROTOCOL.md §3.1).
	AutoDisabled bool `json:"auto_disabled,omitempty"`
}

// Version is one routed version of an extension.
type Version struct {
	Version      string          `json:"version"`
	Subject      string          `json:"subject"`
	TimeoutMS    int             `json:"timeout_ms"`
	Retry        int             `json:"retry"`
	Enabled      bool            `json:"enabled"`
	Config       json.RawMessage `json:"config"`
	Metadata     json.RawMessage `json:"metadata"`
	RoutingRules json.RawMessage `json:"routing_rules"` // JSON object whose values are strings or arrays of strings

	// rules is RoutingRules parsed; filled by normalization (New, Apply,
	// Decode) so that Choose never allocates.
	rules  ruleSet
	parsed bool
}

// Instance is one running instance of an extension.
type Instance struct {
	InstanceID   string `json:"instance_id"`
	Subject      string `json:"subject"`
	Weight       int    `json:"weight"`        // 0..100
	Enabled      bool   `json:"enabled"`       //
	HealthStatus string `json:"health_status"` // healthy | degraded | unhealthy | unknown
}

// Change is one row-level change of a revision, as carried in a delta.
type Change struct {
	Op    string          `json:"op"`              // "put" | "delete"
	Kind  string          `json:"kind"`            // "extension" | "version" | "instance" | "aggregate"
	ID    string          `json:"id"`              // extension id
	Key   string          `json:"key,omitempty"`   // version string (kind version) or instance_id (kind instance)
	Value json.RawMessage `json:"value,omitempty"` // put only: an Extension's own fields (kind extension; any versions/instances in it are ignored), a Version, an Instance, or a full Extension aggregate (kind aggregate)
}

// VersionChoice is the outcome of Extension.Choose: the definition to invoke
// for one request.
type VersionChoice struct {
	Version   string
	Subject   string
	TimeoutMS int
	Retry     int
	Config    json.RawMessage
	// Match says why this definition was chosen: MatchRules (the version's
	// attribute rules match the request), MatchPercent (the request's bucket is
	// in the version's $percent share) or MatchDefault (the extension's own
	// definition).
	Match string
	// Bucket is the request's bucket (0..9999, rules.PercentBucket) for the
	// chosen version when Match is MatchPercent, else -1.
	Bucket int
}

// VersionChoice.Match values.
const (
	MatchRules   = "routing_rules"
	MatchPercent = "percent"
	MatchDefault = "default"
)

// typeIndex maps an extension type to its slot in Snapshot.byType, -1 if unknown.
func typeIndex(t string) int {
	switch t {
	case TypePre:
		return 0
	case TypeValidator:
		return 1
	case TypePost:
		return 2
	case TypeProvider:
		return 3
	}
	return -1
}

const numTypes = 4

// emptyObject is the normalized form of an empty/null JSON object field. Its
// capacity is capped so that an append by a caller never writes into it.
var emptyObject = json.RawMessage("{}")[:2:2]
