package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os/user"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/beamline/registry-syncer/changelog"
)

// parseWithID parses flags around one extension id, given before the flags (`history ID
// --limit 3`: the flag package stops at the first non-flag) or after them.
func parseWithID(fs *flag.FlagSet, args []string, required bool) (string, error) {
	var id string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		id, args = args[0], args[1:]
	}
	max := 1
	if id != "" {
		max = 0
	}
	rest, err := parseInto(fs, args, 0, max)
	if err != nil {
		return "", err
	}
	if len(rest) == 1 {
		id = rest[0]
	}
	if id == "" && required {
		return "", usagef("want an extension id: syncer %s ID", fs.Name())
	}
	return id, nil
}

// openDB reads the configuration and opens one connection to the registry database;
// done closes it.
func openDB(ctx context.Context, e *env) (*pgx.Conn, func(), error) {
	cfg, err := e.config()
	if err != nil {
		return nil, nil, err
	}
	conn, err := connect(ctx, cfg)
	if err != nil {
		return nil, nil, err
	}
	return conn, func() { conn.Close(context.WithoutCancel(ctx)) }, nil
}

// parseSince reads --since: a duration back from now (24h) or an RFC 3339 time.
func parseSince(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(s); err == nil && d > 0 {
		return time.Now().Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	return time.Time{}, usagef("--since %q: want a duration such as 24h or an RFC 3339 time such as 2026-12-01T09:00:00Z", s)
}

// cmdHistory prints who changed what, when, under which revision.
func cmdHistory(ctx context.Context, e *env, args []string) error {
	fs := newFlags("history")
	since := fs.String("since", "", "only changes committed since then: a duration (24h) or an RFC 3339 time")
	limit := fs.Int("limit", 100, "the newest N row changes (0: all)")
	asJSON := fs.Bool("json", false, "one JSON object per row change")
	id, err := parseWithID(fs, args, false)
	if err != nil {
		return err
	}
	if *limit < 0 {
		return usagef("--limit must not be negative")
	}
	from, err := parseSince(*since)
	if err != nil {
		return err
	}
	conn, done, err := openDB(ctx, e)
	if err != nil {
		return err
	}
	defer done()
	entries, err := changelog.History(ctx, conn, changelog.HistoryFilter{ID: id, Since: from, Limit: *limit})
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(e.stdout)
		for _, en := range entries {
			if err := enc.Encode(en); err != nil {
				return err
			}
		}
		return nil
	}
	if len(entries) == 0 {
		fmt.Fprintln(e.stdout, "no changes")
		return nil
	}
	w := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "REVISION\tCOMMITTED\tBY\tEXTENSION\tCHANGE")
	for _, en := range entries {
		what := en.Action + " " + en.Entity
		if en.Key != "" {
			what += " " + en.Key
		}
		if len(en.Fields) > 0 {
			what += " (" + strings.Join(en.Fields, ", ") + ")"
		}
		fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\n", en.Revision, en.CommittedAt.UTC().Format(time.RFC3339), en.ChangedBy, en.ExtensionID, what)
	}
	return w.Flush()
}

// parseRevision reads a revision argument.
func parseRevision(name, s string) (int64, error) {
	r, err := strconv.ParseInt(s, 10, 64)
	if err != nil || r < 0 {
		return 0, usagef("%s %q: want a revision number (0 or more)", name, s)
	}
	return r, nil
}

// cmdDiff prints the content difference between two revisions, from the change log.
func cmdDiff(ctx context.Context, e *env, args []string) error {
	fs := newFlags("diff")
	asJSON := fs.Bool("json", false, "print the differing aggregates as JSON")
	revs, err := parseInto(fs, args, 0, 2)
	if err != nil {
		return err
	}
	if len(revs) != 2 {
		return usagef("want two revisions: syncer diff REV_A REV_B")
	}
	a, err := parseRevision("REV_A", revs[0])
	if err != nil {
		return err
	}
	b, err := parseRevision("REV_B", revs[1])
	if err != nil {
		return err
	}
	conn, done, err := openDB(ctx, e)
	if err != nil {
		return err
	}
	defer done()
	for _, r := range []int64{a, b} {
		if err := changelog.CheckRevision(ctx, conn, r); err != nil {
			return err
		}
	}
	diff, err := changelog.Diff(ctx, conn, a, b)
	if err != nil {
		return err
	}
	if *asJSON {
		data, err := json.MarshalIndent(diff, "", "  ")
		if err != nil {
			return err
		}
		fmt.Fprintln(e.stdout, string(data))
		return nil
	}
	if len(diff) == 0 {
		fmt.Fprintf(e.stdout, "revisions %d and %d have the same content\n", a, b)
		return nil
	}
	for _, d := range diff {
		fmt.Fprintf(e.stdout, "%s:\n", d.ID)
		for _, l := range d.Lines {
			fmt.Fprintf(e.stdout, "  %s\n", l)
		}
	}
	return nil
}

// cmdRollback restores one extension's aggregate as it was at a revision, as a new,
// audited revision.
func cmdRollback(ctx context.Context, e *env, args []string) error {
	fs := newFlags("rollback")
	to := fs.Int64("to-revision", -1, "the revision whose content to restore")
	dryRun := fs.Bool("dry-run", false, "print what would change, change nothing")
	by := fs.String("by", "", "the author recorded in the audit log (default: the OS user)")
	id, err := parseWithID(fs, args, true)
	if err != nil {
		return err
	}
	if *to < 0 {
		return usagef("--to-revision R is required (0 or more)")
	}
	author := *by
	if author == "" {
		if u, err := user.Current(); err == nil {
			author = u.Username
		}
	}
	conn, done, err := openDB(ctx, e)
	if err != nil {
		return err
	}
	defer done()
	if err := changelog.CheckRevision(ctx, conn, *to); err != nil {
		return err
	}
	target, err := changelog.AggregateAt(ctx, conn, id, *to)
	if err != nil {
		return err
	}
	if target != nil {
		if err := target.Validate(); err != nil {
			return fmt.Errorf("rollback %s: its content at revision %d is not valid today, not restoring it: %w", id, *to, err)
		}
	}
	cur, err := changelog.Current(ctx, conn, id)
	if err != nil {
		return err
	}
	lines := changelog.Describe(cur, target)
	if len(lines) == 0 {
		fmt.Fprintf(e.stdout, "%s is already as it was at revision %d: nothing to do\n", id, *to)
		return nil
	}
	verb := "would change"
	if !*dryRun {
		verb = "changes"
	}
	fmt.Fprintf(e.stdout, "rollback of %s to revision %d %s:\n", id, *to, verb)
	for _, l := range lines {
		fmt.Fprintf(e.stdout, "  %s\n", l)
	}
	if *dryRun {
		return nil
	}
	var xid string
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT set_config('registry.changed_by', $1, true)`, author); err != nil {
			return err
		}
		if err := changelog.Restore(ctx, tx, id, target); err != nil {
			return err
		}
		return tx.QueryRow(ctx, `SELECT pg_current_xact_id()::text`).Scan(&xid)
	})
	if err != nil {
		return fmt.Errorf("rollback %s: %w", id, err)
	}
	var rev int64
	if err := conn.QueryRow(ctx, `SELECT revision FROM registry_revisions WHERE xid = $1::xid8`, xid).Scan(&rev); err != nil {
		return fmt.Errorf("rollback %s: committed, but reading its revision failed: %w", id, err)
	}
	fmt.Fprintf(e.stdout, "committed as revision %d by %s\n", rev, author)
	return nil
}
