package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os/user"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/beamline/registry-syncer/cache"
	"github.com/beamline/registry-syncer/changelog"
	"github.com/beamline/registry-syncer/extops"
)

// extUsage is the synopsis of `syncer ext`.
const extUsage = `list [--json] | show ID [--json] | create ID --type T --subject S [--disabled] | set ID FIELD=VALUE... | enable|disable|kill|unkill|delete ID | rollout ID [--version V] [--tenant t1,t2] [--match k=v1,v2]... [--percent P --key ATTR] [--no-percent] [--reset] | version add|rm|enable|disable ID V | instance add|rm|enable|disable ID INSTANCE; writes take --dry-run and --by NAME`

// extSubcommands are the subcommands of `syncer ext`.
var extSubcommands = map[string]func(ctx context.Context, e *env, args []string) error{
	"list": extList, "show": extShow, "create": extCreate, "set": extSet,
	"enable":   extSimple("enable", func() extops.Op { return extops.SetEnabled(true) }),
	"disable":  extSimple("disable", func() extops.Op { return extops.SetEnabled(false) }),
	"kill":     extSimple("kill", func() extops.Op { return extops.SetKill(true) }),
	"unkill":   extSimple("unkill", func() extops.Op { return extops.SetKill(false) }),
	"delete":   extSimple("delete", extops.Delete),
	"rollout":  extRollout,
	"version":  extVersion,
	"instance": extInstance,
}

// cmdExt is `syncer ext SUBCOMMAND …`: the operator's audited writes and reads of one
// extension aggregate.
func cmdExt(ctx context.Context, e *env, args []string) error {
	if len(args) == 0 {
		return usagef("ext: want a subcommand: %s", extUsage)
	}
	switch args[0] {
	case "-h", "-help", "--help":
		return flag.ErrHelp
	}
	f, ok := extSubcommands[args[0]]
	if !ok {
		return usagef("ext: unknown subcommand %q: %s", args[0], extUsage)
	}
	return f(ctx, e, args[1:])
}

// writeFlags are the flags every write takes.
type writeFlags struct {
	dryRun *bool
	by     *string
}

func addWriteFlags(fs *flag.FlagSet) writeFlags {
	return writeFlags{
		dryRun: fs.Bool("dry-run", false, "print the difference the write would make, write nothing"),
		by:     fs.String("by", "", "the author recorded as changed_by (default: the OS user)"),
	}
}

func (w writeFlags) author() string {
	if *w.by != "" {
		return *w.by
	}
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return ""
}

// parsePositional parses fs from args, taking n positional arguments before or after
// the flags.
func parsePositional(fs *flag.FlagSet, args []string, n int, what string) ([]string, error) {
	var pos []string
	for len(args) > 0 && len(pos) < n && !strings.HasPrefix(args[0], "-") {
		pos, args = append(pos, args[0]), args[1:]
	}
	rest, err := parseInto(fs, args, 0, n-len(pos))
	if err != nil {
		return nil, err
	}
	pos = append(pos, rest...)
	if len(pos) < n {
		return nil, usagef("syncer ext %s: want %s", fs.Name(), what)
	}
	return pos, nil
}

// extWrite runs one operation and prints what it did.
func extWrite(ctx context.Context, e *env, verb, id string, w writeFlags, op extops.Op) error {
	conn, done, err := openDB(ctx, e)
	if err != nil {
		return err
	}
	defer done()
	res, err := extops.Do(ctx, conn, id, w.author(), *w.dryRun, op)
	if err != nil {
		return fmt.Errorf("ext %s: %w", verb, err)
	}
	printResult(e.stdout, verb, res, *w.dryRun)
	return nil
}

func printResult(w io.Writer, verb string, res *extops.Result, dryRun bool) {
	if len(res.Lines) == 0 {
		fmt.Fprintf(w, "ext %s %s: already so, nothing to do\n", verb, res.ID)
	} else {
		how := "changes"
		if dryRun {
			how = "would change (dry run, nothing written)"
		}
		fmt.Fprintf(w, "ext %s %s %s:\n", verb, res.ID, how)
		for _, l := range res.Lines {
			fmt.Fprintf(w, "  %s\n", l)
		}
	}
	if res.After != nil {
		fmt.Fprintf(w, "state: %s\n", extops.State(res.After))
	}
	for _, n := range res.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
	if res.Revision > 0 {
		fmt.Fprintf(w, "committed as revision %d by %s\n", res.Revision, res.Author)
	}
}

func extSimple(verb string, op func() extops.Op) func(ctx context.Context, e *env, args []string) error {
	return func(ctx context.Context, e *env, args []string) error {
		fs := newFlags(verb)
		w := addWriteFlags(fs)
		pos, err := parsePositional(fs, args, 1, "an extension id: syncer ext "+verb+" ID")
		if err != nil {
			return err
		}
		return extWrite(ctx, e, verb, pos[0], w, op())
	}
}

func extCreate(ctx context.Context, e *env, args []string) error {
	fs := newFlags("create")
	w := addWriteFlags(fs)
	typ := fs.String("type", "", "pre, validator, post or provider (required)")
	subject := fs.String("subject", "", "the NATS subject, ending .v<N> (required)")
	version := fs.String("version", "", "the version (default: the subject's last token, v<N>)")
	timeout := fs.Int("timeout-ms", 5000, "call timeout, 10..5000")
	retry := fs.Int("retry", 0, "retries on timeout, 0..3")
	disabled := fs.Bool("disabled", false, "create it off (enable it for chosen tenants with ext rollout)")
	cfg := fs.String("config", "{}", "config, a JSON object")
	md := fs.String("metadata", "{}", "metadata, a JSON object")
	pos, err := parsePositional(fs, args, 1, "an extension id: syncer ext create ID --type T --subject S")
	if err != nil {
		return err
	}
	if *typ == "" || *subject == "" {
		return usagef("syncer ext create: --type and --subject are required")
	}
	ver := *version
	if ver == "" {
		ver = (*subject)[strings.LastIndexByte(*subject, '.')+1:]
	}
	c, err := extops.Object("--config", *cfg)
	if err != nil {
		return usagef("%v", err)
	}
	m, err := extops.Object("--metadata", *md)
	if err != nil {
		return usagef("%v", err)
	}
	return extWrite(ctx, e, "create", pos[0], w, extops.Create(extops.Spec{Type: *typ, Subject: *subject, Version: ver,
		TimeoutMS: *timeout, Retry: *retry, Enabled: !*disabled, Config: c, Metadata: m}))
}

func extSet(ctx context.Context, e *env, args []string) error {
	fs := newFlags("set")
	w := addWriteFlags(fs)
	var id string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		id, args = args[0], args[1:]
	}
	var fields []string
	for len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		fields, args = append(fields, args[0]), args[1:]
	}
	rest, err := parseInto(fs, args, 0, 100)
	if err != nil {
		return err
	}
	fields = append(fields, rest...)
	if id == "" || len(fields) == 0 {
		return usagef("syncer ext set: want ID FIELD=VALUE... (type, subject, version, timeout_ms, retry, enabled, config, metadata)")
	}
	return extWrite(ctx, e, "set", id, w, extops.SetFields(fields))
}

// listFlag collects a repeated flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, " ") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

func splitList(s string) []string {
	var out []string
	for _, x := range strings.Split(s, ",") {
		if x = strings.TrimSpace(x); x != "" {
			out = append(out, x)
		}
	}
	return out
}

func extRollout(ctx context.Context, e *env, args []string) error {
	fs := newFlags("rollout")
	w := addWriteFlags(fs)
	version := fs.String("version", "", "the version to roll out (default: the extension's own version; a missing version row is created)")
	subject := fs.String("subject", "", "the subject of a new version row (default: the extension's subject with its .v<N> replaced)")
	tenant := fs.String("tenant", "", "the tenant_id allow-list, comma-separated (replaces it; \"\" with --match tenant_id= removes it)")
	var match listFlag
	fs.Var(&match, "match", "ATTR=v1,v2: the allow-list of any request attribute (replaces it; ATTR= removes it); repeatable")
	percent := fs.String("percent", "", "the share of request keys, \"0\"..\"100\" (at most 2 decimals)")
	key := fs.String("key", "", "the request attribute whose values are hashed for --percent (tenant_id, user_id, …)")
	noPercent := fs.Bool("no-percent", false, "remove the percentage")
	reset := fs.Bool("reset", false, "drop the version's rules first")
	pos, err := parsePositional(fs, args, 1, "an extension id: syncer ext rollout ID [--tenant t1,t2] [--percent P --key ATTR]")
	if err != nil {
		return err
	}
	r := extops.Rollout{Version: *version, Subject: *subject, Match: map[string][]string{}, PercentKey: *key,
		ClearPercent: *noPercent, Reset: *reset}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if set["tenant"] {
		r.Match["tenant_id"] = splitList(*tenant)
	}
	for _, m := range match {
		k, v, ok := strings.Cut(m, "=")
		if !ok || k == "" {
			return usagef("--match %q: want ATTR=v1,v2", m)
		}
		r.Match[k] = splitList(v)
	}
	if set["percent"] {
		if *noPercent {
			return usagef("--percent and --no-percent: choose one")
		}
		r.Percent = percent
	}
	if len(r.Match) == 0 && r.Percent == nil && !*noPercent && !*reset && *key == "" {
		return usagef("syncer ext rollout: nothing to change: give --tenant, --match, --percent, --no-percent or --reset")
	}
	return extWrite(ctx, e, "rollout", pos[0], w, extops.DoRollout(r))
}

func extVersion(ctx context.Context, e *env, args []string) error {
	if len(args) == 0 {
		return usagef("syncer ext version: want add|rm|enable|disable ID VERSION")
	}
	verb, args := args[0], args[1:]
	fs := newFlags("version " + verb)
	w := addWriteFlags(fs)
	var spec extops.VersionSpec
	var rulesJSON, cfg, md *string
	var disabled *bool
	if verb == "add" {
		fs.StringVar(&spec.Subject, "subject", "", "the version's subject, ending .v<N> (required)")
		fs.IntVar(&spec.TimeoutMS, "timeout-ms", 0, "call timeout (default: the extension's)")
		fs.IntVar(&spec.Retry, "retry", -1, "retries (default: the extension's)")
		rulesJSON = fs.String("rules", "{}", "routing_rules, a JSON object ({} selects nobody by itself)")
		cfg = fs.String("config", "{}", "config, a JSON object")
		md = fs.String("metadata", "{}", "metadata, a JSON object")
		disabled = fs.Bool("disabled", false, "add it disabled")
	}
	pos, err := parsePositional(fs, args, 2, "ID VERSION: syncer ext version "+verb+" ID VERSION")
	if err != nil {
		return err
	}
	id, ver := pos[0], pos[1]
	var op extops.Op
	switch verb {
	case "add":
		spec.Version, spec.Enabled = ver, !*disabled
		for _, d := range []struct {
			name string
			src  *string
			dst  *json.RawMessage
		}{{"--rules", rulesJSON, &spec.RoutingRules}, {"--config", cfg, &spec.Config}, {"--metadata", md, &spec.Metadata}} {
			if *d.dst, err = extops.Object(d.name, *d.src); err != nil {
				return usagef("%v", err)
			}
		}
		op = extops.AddVersion(spec)
	case "rm":
		op = extops.RemoveVersion(ver)
	case "enable", "disable":
		op = extops.SetVersionEnabled(ver, verb == "enable")
	default:
		return usagef("syncer ext version: unknown %q: want add|rm|enable|disable", verb)
	}
	return extWrite(ctx, e, "version "+verb, id, w, op)
}

func extInstance(ctx context.Context, e *env, args []string) error {
	if len(args) == 0 {
		return usagef("syncer ext instance: want add|rm|enable|disable ID INSTANCE")
	}
	verb, args := args[0], args[1:]
	fs := newFlags("instance " + verb)
	w := addWriteFlags(fs)
	var in cache.Instance
	var disabled *bool
	if verb == "add" {
		fs.StringVar(&in.Subject, "subject", "", "the instance's subject (required)")
		fs.IntVar(&in.Weight, "weight", 100, "weight, 0..100")
		fs.StringVar(&in.HealthStatus, "health", "unknown", "healthy, degraded, unhealthy or unknown")
		disabled = fs.Bool("disabled", false, "add it disabled")
	}
	pos, err := parsePositional(fs, args, 2, "ID INSTANCE: syncer ext instance "+verb+" ID INSTANCE")
	if err != nil {
		return err
	}
	id, inst := pos[0], pos[1]
	var op extops.Op
	switch verb {
	case "add":
		in.InstanceID, in.Enabled = inst, !*disabled
		op = extops.AddInstance(in)
	case "rm":
		op = extops.RemoveInstance(inst)
	case "enable", "disable":
		op = extops.SetInstanceEnabled(inst, verb == "enable")
	default:
		return usagef("syncer ext instance: unknown %q: want add|rm|enable|disable", verb)
	}
	return extWrite(ctx, e, "instance "+verb, id, w, op)
}

// extList prints every extension with who gets it.
func extList(ctx context.Context, e *env, args []string) error {
	fs := newFlags("list")
	asJSON := fs.Bool("json", false, "one JSON array")
	if _, err := parseInto(fs, args, 0, 0); err != nil {
		return err
	}
	conn, done, err := openDB(ctx, e)
	if err != nil {
		return err
	}
	defer done()
	exts, err := loadAll(ctx, conn)
	if err != nil {
		return err
	}
	if *asJSON {
		type row struct {
			ID, Type, Version, State string
			Enabled, Killed          bool
			Versions, Instances      int
		}
		out := []row{}
		for _, x := range exts {
			out = append(out, row{x.ID, x.Type, x.Version, extops.State(x), x.Enabled, extops.Killed(x), len(x.Versions), len(x.Instances)})
		}
		return json.NewEncoder(e.stdout).Encode(out)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tTYPE\tVERSION\tVERSIONS\tINSTANCES\tWHO GETS IT")
	for _, x := range exts {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\n", x.ID, x.Type, x.Version, len(x.Versions), len(x.Instances), extops.State(x))
	}
	return tw.Flush()
}

// loadAll reads every extension with its versions and instance count in three queries.
func loadAll(ctx context.Context, conn *pgx.Conn) ([]*cache.Extension, error) {
	rows, err := conn.Query(ctx, `SELECT id, type, subject, enabled, version, metadata FROM extensions ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("list extensions: %w", err)
	}
	var exts []*cache.Extension
	byID := map[string]*cache.Extension{}
	for rows.Next() {
		x := &cache.Extension{}
		var md []byte
		if err := rows.Scan(&x.ID, &x.Type, &x.Subject, &x.Enabled, &x.Version, &md); err != nil {
			rows.Close()
			return nil, err
		}
		x.Metadata = md
		exts = append(exts, x)
		byID[x.ID] = x
	}
	rows.Close()
	rows, err = conn.Query(ctx, `SELECT id, version, enabled, routing_rules FROM extension_versions ORDER BY id, version`)
	if err != nil {
		return nil, fmt.Errorf("list versions: %w", err)
	}
	for rows.Next() {
		var id string
		var v cache.Version
		var rr []byte
		if err := rows.Scan(&id, &v.Version, &v.Enabled, &rr); err != nil {
			rows.Close()
			return nil, err
		}
		v.RoutingRules = rr
		if x := byID[id]; x != nil {
			x.Versions = append(x.Versions, v)
		}
	}
	rows.Close()
	rows, err = conn.Query(ctx, `SELECT extension_id, instance_id FROM extension_instances ORDER BY 1, 2`)
	if err != nil {
		return nil, fmt.Errorf("list instances: %w", err)
	}
	for rows.Next() {
		var id string
		var in cache.Instance
		if err := rows.Scan(&id, &in.InstanceID); err != nil {
			rows.Close()
			return nil, err
		}
		if x := byID[id]; x != nil {
			x.Instances = append(x.Instances, in)
		}
	}
	rows.Close()
	return exts, rows.Err()
}

// health is an extension_health row.
type healthRow struct {
	LastSuccess  *time.Time `json:"last_success"`
	LastFailure  *time.Time `json:"last_failure"`
	SuccessCount int64      `json:"success_count"`
	FailureCount int64      `json:"failure_count"`
	P95          *float64   `json:"p95_latency_ms"`
	Breaker      string     `json:"circuit_breaker_state"`
	OpenedAt     *time.Time `json:"opened_at"`
}

// readHealth reads the extension's extension_health row (nil: none, or no such table).
func readHealth(ctx context.Context, conn *pgx.Conn, id string) (*healthRow, error) {
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT to_regclass('extension_health') IS NOT NULL`).Scan(&exists); err != nil || !exists {
		return nil, err
	}
	var h healthRow
	err := conn.QueryRow(ctx, `SELECT last_success, last_failure, success_count, failure_count, p95_latency_ms, circuit_breaker_state, opened_at
		FROM extension_health WHERE extension_id = $1`, id).Scan(&h.LastSuccess, &h.LastFailure, &h.SuccessCount, &h.FailureCount, &h.P95, &h.Breaker, &h.OpenedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read extension_health of %q: %w", id, err)
	}
	return &h, nil
}

// extShow prints one aggregate: fields, versions with their rules, instances, rollout
// state and health.
func extShow(ctx context.Context, e *env, args []string) error {
	fs := newFlags("show")
	asJSON := fs.Bool("json", false, "one JSON object")
	pos, err := parsePositional(fs, args, 1, "an extension id: syncer ext show ID")
	if err != nil {
		return err
	}
	conn, done, err := openDB(ctx, e)
	if err != nil {
		return err
	}
	defer done()
	x, err := changelog.Current(ctx, conn, pos[0])
	if err != nil {
		return err
	}
	if x == nil {
		return fmt.Errorf("ext show %s: no such extension (syncer ext list shows them)", pos[0])
	}
	h, err := readHealth(ctx, conn, x.ID)
	if err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(e.stdout).Encode(struct {
			*cache.Extension
			State   string     `json:"state"`
			Rollout []string   `json:"rollout"`
			Killed  bool       `json:"killed"`
			Health  *healthRow `json:"health"`
		}{x, extops.State(x), extops.RolloutSummary(x), extops.Killed(x), h})
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "extension\t%s (%s)\n", x.ID, x.Type)
	fmt.Fprintf(tw, "who gets it\t%s\n", extops.State(x))
	fmt.Fprintf(tw, "enabled\t%v\n", x.Enabled)
	fmt.Fprintf(tw, "version\t%s, subject %s, timeout %d ms, retry %d\n", x.Version, x.Subject, x.TimeoutMS, x.Retry)
	fmt.Fprintf(tw, "config\t%s\n", x.Config)
	fmt.Fprintf(tw, "metadata\t%s\n", x.Metadata)
	for _, v := range x.Versions {
		who := extops.DescribeRules(v.RoutingRules)
		if who == "" {
			who = "nobody by itself ({} rules)"
		}
		state := "enabled"
		if !v.Enabled {
			state = "disabled: never selected"
		}
		fmt.Fprintf(tw, "version %s\t%s, %s; serves %s; routing_rules %s\n", v.Version, v.Subject, state, who, v.RoutingRules)
	}
	for _, in := range x.Instances {
		fmt.Fprintf(tw, "instance %s\t%s, weight %d, enabled %v, %s\n", in.InstanceID, in.Subject, in.Weight, in.Enabled, in.HealthStatus)
	}
	if h != nil {
		p95 := "-"
		if h.P95 != nil {
			p95 = fmt.Sprintf("%g ms", *h.P95)
		}
		fmt.Fprintf(tw, "health\tbreaker %s, %d successes, %d failures, p95 %s\n", h.Breaker, h.SuccessCount, h.FailureCount, p95)
	} else {
		fmt.Fprintf(tw, "health\tno extension_health row\n")
	}
	return tw.Flush()
}
