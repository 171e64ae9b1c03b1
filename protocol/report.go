package protocol

import (
	"encoding/json"
	"slices"
	"strings"
	"time"
)

// Router states in a report.
const (
	RouterStarting  = "starting"  // no snapshot installed yet
	RouterReady     = "ready"     // serving, hearing the syncer
	RouterStale     = "stale"     // serving, but heard no valid delta or heartbeat for a while
	RouterRejecting = "rejecting" // serving its last good snapshot, refusing what arrives
)

// Report is what a router publishes on Names.Report(router_id) when it applies a revision
// (coalesced) and every interval_ms (PROTOCOL.md §3.7).
type Report struct {
	RouterID string `json:"router_id"`
	Revision int64  `json:"revision"`
	// Checksum is the served content's v1 checksum; a router that verifies checksum v2
	// may leave it empty (computing v1 costs O(registry) per revision).
	Checksum   string    `json:"checksum"`
	ChecksumV2 string    `json:"checksum_v2,omitempty"` // the served content's v2 checksum
	Source     string    `json:"source,omitempty"`
	State      string    `json:"state"`
	StateSince time.Time `json:"state_since"`
	Time       time.Time `json:"time"`
	IntervalMS int64     `json:"interval_ms"`
	// LastRejection is the last payload the router refused (nil: none since it started).
	LastRejection *Rejection `json:"last_rejection,omitempty"`
	// Calls holds per-extension call statistics since the previous report (keyed by
	// extension id); its entries are documented in PROTOCOL.md §3.7.
	Calls map[string]json.RawMessage `json:"calls,omitempty"`
	// Features lists what the router implements beyond protocol version 1 as first
	// published (FeatureAutoDisabled).
	Features []string `json:"features,omitempty"`
}

// Has reports whether the router lists feature f.
func (r *Report) Has(f string) bool { return slices.Contains(r.Features, f) }

// Rejection is one refused payload.
type Rejection struct {
	At     time.Time `json:"at"`
	Reason string    `json:"reason"`
}

// DecodeReport parses and validates a report.
func DecodeReport(data []byte) (*Report, error) {
	var r Report
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, invalid("decode report: %v", err)
	}
	switch {
	case r.RouterID == "" || len(r.RouterID) > 256:
		return nil, invalid("report: router_id must be 1..256 bytes (got %d)", len(r.RouterID))
	case r.Revision < 0:
		return nil, invalid("report %s: revision %d", r.RouterID, r.Revision)
	case r.IntervalMS <= 0:
		return nil, invalid("report %s: interval_ms must be positive (got %d)", r.RouterID, r.IntervalMS)
	case len(r.Calls) > MaxReportExtensions:
		return nil, invalid("report %s: calls for %d extensions (at most %d)", r.RouterID, len(r.Calls), MaxReportExtensions)
	case len(r.Features) > 64:
		return nil, invalid("report %s: %d features (at most 64)", r.RouterID, len(r.Features))
	}
	switch r.State {
	case RouterStarting, RouterReady, RouterStale, RouterRejecting:
	default:
		return nil, invalid("report %s: unknown state %q", r.RouterID, r.State)
	}
	return &r, nil
}

// ReportToken turns a router id into one subject token: '.', '*', '>' and whitespace or
// control characters become '_' (the payload carries the id itself).
func ReportToken(routerID string) string {
	return strings.Map(func(r rune) rune {
		if r == '.' || r == '*' || r == '>' || r <= ' ' || r == 0x7f {
			return '_'
		}
		return r
	}, routerID)
}

// Report is the subject a router publishes its reports on.
func (n Names) Report(routerID string) string { return n.Prefix + ".report." + ReportToken(routerID) }

// Reports matches every router's reports.
func (n Names) Reports() string { return n.Prefix + ".report.*" }

// Status is the request subject the leading syncer answers with a FleetStatus.
func (n Names) Status() string { return n.Prefix + ".status" }

// FleetStatus is the leading syncer's answer on Names.Status (and GET /admin/routers).
type FleetStatus struct {
	Syncer            string    `json:"syncer"`
	Time              time.Time `json:"time"`
	DatabaseRevision  int64     `json:"database_revision"`
	PublishedRevision int64     `json:"published_revision"`
	PublishedChecksum string    `json:"published_checksum"`
	// PublishedChecksumV2 is the published revision's v2 checksum.
	PublishedChecksumV2 string `json:"published_checksum_v2,omitempty"`
	// Withheld lists the extensions the leader does not publish because the database holds
	// a version of them the router side refuses (routers keep their last valid content).
	Withheld []WithheldExtension `json:"withheld,omitempty"`
	Routers  []RouterStatus      `json:"routers"`
}

// WithheldExtension is one extension the leader withholds, and why.
type WithheldExtension struct {
	ID            string `json:"id"`
	Reason        string `json:"reason"`
	SinceRevision int64  `json:"since_revision"`
}

// RouterStatus is the leader's view of one router.
type RouterStatus struct {
	RouterID      string     `json:"router_id"`
	Revision      int64      `json:"revision"`
	Checksum      string     `json:"checksum"`
	ChecksumV2    string     `json:"checksum_v2,omitempty"`
	State         string     `json:"state"` // a report state, or "gone" (unheard for 3 intervals)
	StateSince    time.Time  `json:"state_since"`
	LastReport    time.Time  `json:"last_report"`
	StalenessS    float64    `json:"staleness_seconds"` // since the last report
	Lag           int64      `json:"lag_revisions"`     // published revision minus applied revision
	LastRejection *Rejection `json:"last_rejection,omitempty"`
}

// RouterGone is the fleet state of a router unheard for three of its intervals.
const RouterGone = "gone"
