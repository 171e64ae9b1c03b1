package client

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/beamline/registry-syncer/protocol"
)

// Router reports (PROTOCOL.md §3.7): every client tells the syncer what it applied and
// what it saw, on Names.Report(RouterID), when it installs a revision (coalesced: at most
// one report in flight) and every ReportInterval. The leading syncer keeps the fleet view
// from them (`syncer status`, `syncer wait`, GET /admin/routers).

// clients counts the clients this process made, so that each gets its own default id.
var clients atomic.Int64

// defaultRouterID is host:pid for the process's first client, host:pid-N for the N-th.
func defaultRouterID() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "router"
	}
	id := fmt.Sprintf("%s:%d", host, os.Getpid())
	if n := clients.Add(1); n > 1 {
		id += fmt.Sprintf("-%d", n)
	}
	return id
}

// reporter is the state of one client's reporting, owned by its goroutine except the
// fields behind mu.
type reporter struct {
	kick chan struct{}

	mu            sync.Mutex
	lastRejection *protocol.Rejection
	state         string
	since         time.Time
}

func newReporter() *reporter {
	return &reporter{kick: make(chan struct{}, 1), state: protocol.RouterStarting, since: time.Now().UTC()}
}

// soon asks for a report now (coalesced).
func (r *reporter) soon() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

func (r *reporter) rejected(at time.Time, err error) {
	reason := err.Error()
	if len(reason) > 1024 {
		reason = reason[:1024]
	}
	r.mu.Lock()
	r.lastRejection = &protocol.Rejection{At: at.UTC(), Reason: reason}
	r.mu.Unlock()
	r.soon()
}

// State is the client's state as its reports say it: starting (no snapshot yet), ready,
// stale (no valid delta or heartbeat heard for StaleAfter) or rejecting (the last thing
// that arrived was refused).
func (c *Client) State() string {
	st, _ := c.stateNow(time.Now())
	return st
}

func (c *Client) stateNow(now time.Time) (string, time.Time) {
	r := c.report
	st := protocol.RouterReady
	switch {
	case c.snap.Load() == nil:
		st = protocol.RouterStarting
	default:
		last := c.lastHeard.Load()
		if last == 0 {
			last = c.startedAt.Load() // bootstrapped, nothing live heard yet
		}
		heard := time.Unix(0, last)
		r.mu.Lock()
		rej := r.lastRejection
		r.mu.Unlock()
		switch {
		case rej != nil && rej.At.After(heard):
			st = protocol.RouterRejecting
		case now.Sub(heard) > max(c.cfg.StaleAfter, 5*time.Duration(c.heartbeatMS.Load())*time.Millisecond):
			st = protocol.RouterStale
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if st != r.state {
		r.state, r.since = st, now.UTC()
	}
	return r.state, r.since
}

// reportFeatures are the protocol features this client implements (Report.Features).
var reportFeatures = []string{protocol.FeatureAutoDisabled, protocol.FeatureChecksumV2}

// buildReport is the report to send now.
func (c *Client) buildReport(now time.Time) *protocol.Report {
	st, since := c.stateNow(now)
	rep := &protocol.Report{RouterID: c.cfg.RouterID, State: st, StateSince: since, Time: now.UTC(),
		IntervalMS: c.cfg.ReportInterval.Milliseconds(), Features: reportFeatures}
	if s := c.snap.Load(); s != nil {
		// The v1 checksum only when known: computing it costs O(registry) per revision.
		rep.Revision, rep.Checksum, rep.ChecksumV2, rep.Source = s.Revision(), s.KnownChecksum(), s.ChecksumV2(), s.Source()
	}
	c.report.mu.Lock()
	if r := c.report.lastRejection; r != nil {
		cp := *r
		rep.LastRejection = &cp
	}
	c.report.mu.Unlock()
	if c.cfg.CallStats != nil {
		rep.Calls = c.cfg.CallStats()
	} else if c.calls.Load() != nil { // Invoke was used: its statistics (callstats.go)
		rep.Calls = c.ReportCalls()
	}
	return rep
}

// reportLoop publishes reports until ctx ends.
func (c *Client) reportLoop(ctx context.Context) {
	t := time.NewTicker(c.cfg.ReportInterval)
	defer t.Stop()
	subject := c.names.Report(c.cfg.RouterID)
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.report.kick:
		case <-t.C:
		}
		data, err := json.Marshal(c.buildReport(time.Now()))
		if err == nil {
			err = c.nc.Publish(subject, data)
		}
		if err != nil {
			c.log.WarnContext(ctx, "client: report not sent", slog.Any("error", err))
		}
	}
}
