package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/beamline/registry-syncer/protocol"
)

// askStatus requests the leading syncer's fleet view on P.status.
func askStatus(ctx context.Context, nc *nats.Conn, names protocol.Names, timeout time.Duration) (*protocol.FleetStatus, error) {
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	msg, err := nc.RequestWithContext(rctx, names.Status(), nil)
	if errors.Is(err, nats.ErrNoResponders) || errors.Is(err, context.DeadlineExceeded) {
		return nil, fmt.Errorf("no leading syncer answered on %s (%v)", names.Status(), err)
	}
	if err != nil {
		return nil, fmt.Errorf("status request on %s: %w", names.Status(), err)
	}
	var fs protocol.FleetStatus
	if err := json.Unmarshal(msg.Data, &fs); err != nil {
		return nil, fmt.Errorf("status answer on %s: %w", names.Status(), err)
	}
	return &fs, nil
}

// statusClient connects to NATS like `syncer watch` and returns the subject names.
func statusClient(ctx context.Context, e *env) (*nats.Conn, func(), protocol.Names, error) {
	cfg, err := e.config()
	if err != nil {
		return nil, nil, protocol.Names{}, err
	}
	names, err := protocol.NewNames(cfg.Publisher.Prefix)
	if err != nil {
		return nil, nil, protocol.Names{}, err
	}
	nc, closed, err := connectNATS(ctx, cfg, newLogger(e.stderr, cfg), false)
	if err != nil {
		return nil, nil, protocol.Names{}, err
	}
	return nc, func() { nc.Close(); <-closed }, names, nil
}

// cmdStatus prints the database and published revisions and every router's applied
// revision, state and staleness, as the leading syncer sees them.
func cmdStatus(ctx context.Context, e *env, args []string) error {
	fs := newFlags("status")
	asJSON := fs.Bool("json", false, "print the leader's answer as JSON")
	timeout := fs.Duration("timeout", 5*time.Second, "how long to wait for the leading syncer's answer")
	if _, err := parseInto(fs, args, 0, 0); err != nil {
		return err
	}
	if *timeout <= 0 {
		return usagef("-timeout must be positive")
	}
	nc, done, names, err := statusClient(ctx, e)
	if err != nil {
		return err
	}
	defer done()
	st, err := askStatus(ctx, nc, names, *timeout)
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	if *asJSON {
		data, err := json.MarshalIndent(st, "", "  ")
		if err != nil {
			return err
		}
		fmt.Fprintln(e.stdout, string(data))
		return nil
	}
	fmt.Fprintf(e.stdout, "database revision %d, published revision %d (checksum %.12s), leader %s\n",
		st.DatabaseRevision, st.PublishedRevision, st.PublishedChecksum, st.Syncer)
	for _, w := range st.Withheld {
		fmt.Fprintf(e.stdout, "withheld since revision %d: %s (%s); fix the row, or POST /admin/sync after fixing it past the triggers\n",
			w.SinceRevision, w.ID, w.Reason)
	}
	if len(st.Routers) == 0 {
		fmt.Fprintln(e.stdout, "no router has reported")
		return nil
	}
	w := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "ROUTER\tSTATE\tSINCE\tREVISION\tLAG\tLAST REPORT\tLAST REJECTION")
	for _, r := range st.Routers {
		rej := "-"
		if r.LastRejection != nil {
			rej = fmt.Sprintf("%s ago: %.60s", since(st.Time, r.LastRejection.At), r.LastRejection.Reason)
		}
		fmt.Fprintf(w, "%s\t%s\t%s ago\t%d\t%d\t%.1fs ago\t%s\n", r.RouterID, r.State, since(st.Time, r.StateSince),
			r.Revision, r.Lag, r.StalenessS, rej)
	}
	return w.Flush()
}

func since(now, t time.Time) string {
	if t.IsZero() {
		return "?"
	}
	return now.Sub(t).Round(100 * time.Millisecond).String()
}

// cmdWait waits until routers applied a revision: exit 0 once N (or all live) routers
// report at least it, 1 on timeout listing the laggards.
func cmdWait(ctx context.Context, e *env, args []string) error {
	fs := newFlags("wait")
	revision := fs.Int64("revision", 0, "the revision to wait for")
	current := fs.Bool("current", false, "wait for the database's current revision")
	routers := fs.Int("routers", 0, "how many routers must have applied it")
	all := fs.Bool("all", false, "every live router must have applied it (the default)")
	timeout := fs.Duration("timeout", 30*time.Second, "how long to wait")
	if _, err := parseInto(fs, args, 0, 0); err != nil {
		return err
	}
	switch {
	case (*revision > 0) == *current:
		return usagef("give exactly one of --revision R (R > 0) and --current")
	case *routers < 0 || (*routers > 0 && *all):
		return usagef("give at most one of --routers N (N > 0) and --all")
	case *timeout <= 0:
		return usagef("--timeout must be positive")
	}
	nc, done, names, err := statusClient(ctx, e)
	if err != nil {
		return err
	}
	defer done()
	deadline := time.Now().Add(*timeout)
	want := *revision
	var last *protocol.FleetStatus
	var lastErr error
	for {
		left := time.Until(deadline)
		if left <= 0 {
			break
		}
		st, err := askStatus(ctx, nc, names, min(left, 2*time.Second))
		if err != nil {
			lastErr = err
		} else {
			last, lastErr = st, nil
			if *current && want == 0 {
				want = st.DatabaseRevision
			}
			if ok, _ := converged(st, want, *routers); ok && want > 0 {
				fmt.Fprintf(e.stdout, "revision %d applied by %s\n", want, describeWanted(*routers))
				return nil
			}
		}
		t := time.NewTimer(200 * time.Millisecond) // poll interval
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
	if last == nil {
		return fmt.Errorf("wait: %w", lastErr)
	}
	_, laggards := converged(last, want, *routers)
	return fmt.Errorf("wait: revision %d not applied by %s within %s; behind: %s",
		want, describeWanted(*routers), *timeout, strings.Join(laggards, ", "))
}

func describeWanted(n int) string {
	if n > 0 {
		return fmt.Sprintf("%d router(s)", n)
	}
	return "every live router"
}

// converged reports whether n routers (0: every live one, at least one) applied rev, and
// lists the live routers behind it.
func converged(st *protocol.FleetStatus, rev int64, n int) (bool, []string) {
	applied, live := 0, 0
	var behind []string
	for _, r := range st.Routers {
		if r.State == protocol.RouterGone {
			continue
		}
		live++
		if r.Revision >= rev {
			applied++
		} else {
			behind = append(behind, fmt.Sprintf("%s at %d (%s)", r.RouterID, r.Revision, r.State))
		}
	}
	if len(behind) == 0 && live == 0 {
		behind = []string{"no live router has reported"}
	}
	if n > 0 {
		return applied >= n, behind
	}
	return live > 0 && applied == live, behind
}
