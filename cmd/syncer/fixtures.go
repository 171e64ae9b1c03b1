package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/beamline/registry-syncer/fixtures"
)

// importActor is recorded as the writer of what `fixtures import` changes.
const importActor = "syncer fixtures import"

// defaultListLimit is how many ids or differences a fixtures command lists by default
// before it says "and N more".
const defaultListLimit = 20

func cmdFixtures(ctx context.Context, e *env, args []string) error {
	if len(args) == 0 {
		return usagef("missing subcommand: import, export or verify")
	}
	sub, args := args[0], args[1:]
	fs := newFlags("fixtures " + sub)
	limit := fs.Int("limit", defaultListLimit, "list at most this many ids or differences, then say how many more (0: all)")
	var clean *bool
	minArgs := 0
	switch sub {
	case "-h", "-help", "--help":
		return flag.ErrHelp
	case "import", "verify":
	case "export":
		clean = fs.Bool("clean", false, "export into a directory that holds fixture files: remove those this export does not write (files that are not *.json stay; a *.json that is not a fixture file stops the export)")
		minArgs = 1
	default:
		return usagef("unknown subcommand %q: want import, export or verify", sub)
	}
	rest, err := parseInterspersed(fs, args, minArgs, 1)
	if err != nil {
		return err
	}
	if *limit < 0 {
		return usagef("--limit must be 0 or more (got %d)", *limit)
	}
	cfg, err := e.config()
	if err != nil {
		return err
	}
	opts := fixtures.Options{Progress: newProgress(e.stderr)}
	out := &lister{w: e.stdout, limit: *limit}
	switch sub {
	case "export":
		conn, err := connect(ctx, cfg)
		if err != nil {
			return err
		}
		defer conn.Close(context.WithoutCancel(ctx))
		opts.Clean = *clean
		return fixturesExport(ctx, out, conn, opts, rest[0])
	default:
		dir := cfg.FixturesDir
		if len(rest) == 1 {
			dir = rest[0]
		}
		recs, err := loadFixtures(ctx, opts, dir)
		if err != nil {
			return err
		}
		conn, err := connect(ctx, cfg)
		if err != nil {
			return err
		}
		defer conn.Close(context.WithoutCancel(ctx))
		if sub == "import" {
			if len(recs) == 0 {
				fmt.Fprintf(e.stderr, "syncer: fixtures import: no fixture files (*.json) in %s: nothing to import\n", dir)
			}
			return fixturesImport(ctx, out, conn, opts, recs)
		}
		return fixturesVerify(ctx, out, conn, opts, recs)
	}
}

// parseInterspersed parses flags before and after the positional arguments
// (`export DIR --clean` as well as `export --clean DIR`).
func parseInterspersed(fs *flag.FlagSet, args []string, minArgs, maxArgs int) ([]string, error) {
	var pos []string
	for {
		rest, err := parseInto(fs, args, 0, len(args))
		if err != nil {
			return nil, err
		}
		if len(rest) == 0 {
			break
		}
		if i := len(args) - len(rest); i > 0 && args[i-1] == "--" { // after "--" everything is an argument
			pos = append(pos, rest...)
			break
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
	switch {
	case len(pos) < minArgs:
		return nil, usagef("missing argument")
	case len(pos) > maxArgs:
		return nil, usagef("unexpected argument %q", pos[maxArgs])
	}
	return pos, nil
}

// loadFixtures loads dir, or the built-in defaults when dir is empty; it stops when ctx
// ends (SIGTERM, SIGINT).
func loadFixtures(ctx context.Context, opts fixtures.Options, dir string) ([]fixtures.Record, error) {
	if dir == "" {
		return fixtures.LoadContext(ctx, fixtures.Defaults())
	}
	return opts.LoadDir(ctx, dir)
}

// connect opens one connection to the registry database.
func connect(ctx context.Context, cfg *config) (*pgx.Conn, error) {
	pc, err := pgx.ParseConfig(cfg.DatabaseURL)
	if err != nil {
		// Not pgx's message: it may quote the string, password and all.
		return nil, fmt.Errorf("%s_DATABASE_URL: %s", envPrefix, cmp.Or(checkPostgresURL(cfg.DatabaseURL), "cannot be parsed"))
	}
	pc.RuntimeParams["application_name"] = "registry-syncer-cli"
	conn, err := pgx.ConnectConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("connect to the database: %w", err)
	}
	return conn, nil
}

// lister prints lists shortened to limit items ("a, b and 99998 more").
type lister struct {
	w     io.Writer
	limit int // 0: no limit
}

// items joins items, at most l.limit of them, saying how many more there are.
func (l *lister) items(items []string) string {
	if l.limit == 0 || len(items) <= l.limit {
		return strings.Join(items, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(items[:l.limit], ", "), len(items)-l.limit)
}

func fixturesExport(ctx context.Context, out *lister, conn *pgx.Conn, opts fixtures.Options, dir string) error {
	rep, err := opts.Export(ctx, conn, dir)
	var ne *fixtures.NotEmptyError
	if errors.As(err, &ne) {
		return fmt.Errorf("fixtures export: %s already holds %d fixture files (%s, ...): the files of extensions no longer in the "+
			"database would stay behind and import and verify would read them; export into an empty or new directory, or pass "+
			"--clean to remove the fixture files this export does not write (files that are not *.json are kept)", ne.Dir, ne.Files, ne.Example)
	}
	if err != nil {
		return err
	}
	if len(rep.Removed) > 0 {
		fmt.Fprintf(out.w, "removed %d fixture files this export did not write: %s\n", len(rep.Removed), out.items(rep.Removed))
	}
	if len(rep.Kept) > 0 {
		fmt.Fprintf(out.w, "kept %d other files: %s\n", len(rep.Kept), out.items(rep.Kept))
	}
	fmt.Fprintf(out.w, "exported %d extensions to %s\n", rep.Written, dir)
	return nil
}

func fixturesImport(ctx context.Context, out *lister, conn *pgx.Conn, opts fixtures.Options, recs []fixtures.Record) error {
	rep, err := opts.Import(ctx, conn, recs, importActor)
	if err != nil {
		return err
	}
	for _, l := range []struct {
		what string
		ids  []string
	}{{"created", rep.Created}, {"updated", rep.Updated}, {"unchanged", rep.Unchanged}} {
		if len(l.ids) > 0 {
			fmt.Fprintf(out.w, "%s: %s\n", l.what, out.items(l.ids))
		}
	}
	fmt.Fprintln(out.w, rep.String())
	return nil
}

func fixturesVerify(ctx context.Context, out *lister, conn *pgx.Conn, opts fixtures.Options, recs []fixtures.Record) error {
	diffs, err := opts.Verify(ctx, conn, recs)
	if err != nil {
		return err
	}
	if len(diffs) == 0 {
		fmt.Fprintf(out.w, "fixtures match the database (%d extensions)\n", len(recs))
		return nil
	}
	ids := map[string]bool{}
	kinds := map[fixtures.DifferenceKind]int{}
	for i, d := range diffs {
		ids[d.ID] = true
		kinds[d.Kind]++
		if out.limit == 0 || i < out.limit {
			fmt.Fprintln(out.w, d.String())
		}
	}
	if out.limit > 0 && len(diffs) > out.limit {
		fmt.Fprintf(out.w, "... and %d more differences (--limit 0 lists all)\n", len(diffs)-out.limit)
		fmt.Fprintf(out.w, "%d extensions differ: %d missing in the database, %d extra in the database, %d changed fields\n",
			len(ids), kinds[fixtures.Missing], kinds[fixtures.Extra], kinds[fixtures.Changed])
	}
	if len(diffs) == 1 {
		return fmt.Errorf("fixtures and database differ (1 difference)")
	}
	return fmt.Errorf("fixtures and database differ (%d differences)", len(diffs))
}

// newProgress reports progress on w when it is a terminal (a character device), and
// nothing otherwise (a pipe, a file, CI): one line per stage, rewritten in place at most
// every 200 ms and finished when the stage is done.
func newProgress(w io.Writer) fixtures.Progress {
	f, ok := w.(*os.File)
	if !ok {
		return nil
	}
	if fi, err := f.Stat(); err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		return nil
	}
	return progressPrinter(w, time.Now)
}

// progressPrinter prints progress lines on w: "\rload 45000/100000 (45%)", a newline
// when a stage is done.
func progressPrinter(w io.Writer, now func() time.Time) fixtures.Progress {
	var (
		last  time.Time
		start time.Time
		stage string
	)
	return func(s string, done, total int) {
		t := now()
		if s != stage {
			stage, start, last = s, t, time.Time{}
		}
		if done < total && t.Sub(last) < 200*time.Millisecond {
			return
		}
		last = t
		pct := 100
		if total > 0 {
			pct = done * 100 / total
		}
		fmt.Fprintf(w, "\r%s %d/%d (%d%%) %s", s, done, total, pct, t.Sub(start).Round(100*time.Millisecond))
		if done >= total {
			fmt.Fprintln(w)
			stage = ""
		}
	}
}
