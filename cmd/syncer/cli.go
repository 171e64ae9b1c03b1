package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/kelseyhightower/envconfig"
)

// Exit codes.
const (
	exitOK    = 0
	exitError = 1 // the command failed (or found differences)
	exitUsage = 2 // unknown command, flag or argument
)

// env is what a command runs with: the environment and the output streams.
type env struct {
	lookup func(string) (string, bool)
	// environ lists the whole environment ("KEY=value"), for the warning about unknown
	// EXTENSION_REGISTRY_* variables (nil: no check).
	environ func() []string
	stdout  io.Writer
	stderr  io.Writer
}

// config reads and validates the whole configuration, and warns (in the log format
// configured) about EXTENSION_REGISTRY_* variables that no knob reads.
func (e *env) config() (*config, error) {
	cfg, err := loadConfig(e.lookup)
	if err == nil && e.environ != nil {
		warnUnknownVariables(newLogger(e.stderr, cfg), e.environ())
	}
	return cfg, err
}

// command is one subcommand. Adding one (watch, dev) is one entry in commands.
type command struct {
	name    string
	args    string // the argument synopsis, for usage
	summary string
	// run gets the arguments after the command name.
	run func(ctx context.Context, e *env, args []string) error
}

var commands []command

func init() {
	// Assigned in init: help refers to commands.
	commands = []command{
		{"run", "", "run the syncer daemon (publishes the registry to NATS; HTTP on EXTENSION_REGISTRY_HTTP_ADDR)", cmdRun},
		{"migrate", "[status]", "apply pending schema migrations (idempotent); status lists every migration", cmdMigrate},
		{"fixtures", "import [DIR] [--limit N] | export DIR [--clean] | verify [DIR] [--limit N]", "import fixture files into the database in one transaction, export the database as fixture files (format beamline.registry/v2; --clean: into a directory that already holds fixture files), or verify that they match (exit 1 on differences); lists at most --limit ids or differences (default 20, 0: all)", cmdFixtures},
		{"watch", "[--json] [--dump] [--once] [--timeout D]", "subscribe exactly like a router and print each applied revision (--json: one object per revision; --dump --once: print the current snapshot and exit)", cmdWatch},
		{"status", "[--json] [--timeout D]", "the database and published revisions and every router's applied revision, state and staleness, from the leading syncer (a NATS request: works from any machine with NATS access)", cmdStatus},
		{"wait", "--revision R | --current [--routers N | --all] [--timeout D]", "exit 0 once N (or all live) routers applied revision R or later, 1 on timeout listing the laggards", cmdWait},
		{"keygen", "FILE", "write a new Ed25519 NKey signing seed to FILE (mode 0600; an existing file is never overwritten) and print its public key, for EXTENSION_REGISTRY_SIGNING_KEY and EXTENSION_REGISTRY_TRUSTED_KEYS", cmdKeygen},
		{"resolve", "ID [--attr k=v]... [--sticky KEY] [--json] [--timeout D]", "print what a router would call for extension ID and these request attributes (version, subject, timeout, retry, instances with weights, health and shares, breaker), without calling it", cmdResolve},
		{"invoke", "ID [--attr k=v]... [--payload JSON] [--metadata JSON] [--sticky KEY] [--count N --rate R] [--json] [--timeout D]", "call extension ID exactly as a router does (client.Invoke: selection, circuit breaker, timeout, retries) and print each result and a summary (outcomes, p50/p95/p99); exit 1 if a call failed", cmdInvoke},
		{"dev", "[--dir DIR] [--pg-port N] [--nats-port N] [--http ADDR]", "everything on this machine: a private PostgreSQL, an embedded NATS with JetStream, migrations, the default fixtures and the syncer; prints the export block that points every other command at it", cmdDev},
		{"ext", extUsage, "the operator's audited writes of one extension (each one transaction with changed_by from --by or the OS user, validated first, --dry-run prints the difference) and reads (list, show with rollout state and health)", cmdExt},
		{"history", "[ID] [--since 24h|TIME] [--limit N] [--json]", "who changed what, when, under which revision (the change log)", cmdHistory},
		{"diff", "REV_A REV_B [--json]", "the content difference between two revisions, from the change log", cmdDiff},
		{"rollback", "ID --to-revision R [--dry-run] [--by NAME]", "restore one extension's aggregate as it was at revision R, as a new audited revision", cmdRollback},
		{"version", "[--json]", "print the version, VCS commit and Go version of this binary", cmdVersion},
		{"help", "[CMD [SUB]]", "show this help and the environment variables; help CMD is CMD -h (its flags and their defaults)", cmdHelp},
	}
}

// usageError is a command line mistake: usage goes to stderr and the exit code is 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return &usageError{fmt.Sprintf(format, args...)} }

// run is the whole program: it returns the exit code.
func run(ctx context.Context, args []string, lookup func(string) (string, bool), stdout, stderr io.Writer) int {
	return runEnv(ctx, args, &env{lookup: lookup, stdout: stdout, stderr: stderr})
}

// runEnv is run with the whole environment at hand (main: os.Environ).
func runEnv(ctx context.Context, args []string, e *env) int {
	stdout, stderr := e.stdout, e.stderr
	if len(args) == 0 {
		fmt.Fprintln(stderr, "syncer: no command given")
		usage(stderr)
		return exitUsage
	}
	name := args[0]
	if name == "-h" || name == "-help" || name == "--help" {
		name = "help"
	}
	if name == "help" && len(args) > 1 && !strings.HasPrefix(args[1], "-") {
		// syncer help CMD [SUB]: the same as syncer CMD [SUB] -h.
		args = slices.Concat(args[1:], []string{"-h"})
		name = args[0]
	}
	var cmd *command
	for i := range commands {
		if commands[i].name == name {
			cmd = &commands[i]
		}
	}
	if cmd == nil {
		fmt.Fprintf(stderr, "syncer: unknown command %q\n", name)
		usage(stderr)
		return exitUsage
	}
	err := cmd.run(ctx, e, args[1:])
	var ue *usageError
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, flag.ErrHelp):
		commandUsage(stdout, cmd)
		var h *helpRequest
		if errors.As(err, &h) {
			printFlags(stdout, h.fs)
		}
		return exitOK
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "syncer %s: %s\n", cmd.name, ue.msg)
		commandUsage(stderr, cmd)
		return exitUsage
	default:
		fmt.Fprintf(stderr, "syncer: %v\n", err)
		if hint := nextStep(err); hint != "" {
			fmt.Fprintf(stderr, "syncer: %s\n", hint)
		}
		return exitError
	}
}

// parseFlags parses a command's flags (only -h so far) and checks the number of
// positional arguments.
func parseFlags(name string, args []string, minArgs, maxArgs int) ([]string, error) {
	return parseInto(newFlags(name), args, minArgs, maxArgs)
}

// newFlags is a flag set whose errors and usage run reports (it prints nothing itself).
func newFlags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // run prints the usage
	return fs
}

// helpRequest is -h on a command: errors.Is(err, flag.ErrHelp) holds, and run prints the
// flag set's flags with their defaults after the command's usage.
type helpRequest struct{ fs *flag.FlagSet }

func (h *helpRequest) Error() string        { return flag.ErrHelp.Error() }
func (h *helpRequest) Is(target error) bool { return target == flag.ErrHelp }

// printFlags lists fs's flags with their defaults (flag's own format).
func printFlags(w io.Writer, fs *flag.FlagSet) {
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	if n == 0 {
		fmt.Fprintf(w, "\n(syncer %s takes no flags; syncer help lists the environment variables)\n", fs.Name())
		return
	}
	fmt.Fprintf(w, "\nFlags of syncer %s:\n", fs.Name())
	fs.SetOutput(w)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
}

// parseInto parses args into fs and returns the arguments after the flags, between
// minArgs and maxArgs of them; -h gives a helpRequest (flag.ErrHelp), any other mistake a
// usage error.
func parseInto(fs *flag.FlagSet, args []string, minArgs, maxArgs int) ([]string, error) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, &helpRequest{fs}
		}
		return nil, usagef("%v", err)
	}
	rest := fs.Args()
	switch {
	case len(rest) < minArgs:
		return nil, usagef("missing argument")
	case len(rest) > maxArgs:
		return nil, usagef("unexpected argument %q", rest[maxArgs])
	}
	return rest, nil
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "Usage: syncer <command> [arguments]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Commands:")
	for _, c := range commands {
		fmt.Fprintf(w, "  %s\n      %s\n", strings.TrimSpace(c.name+" "+c.args), c.summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Configuration comes from EXTENSION_REGISTRY_* environment variables (syncer help lists them).")
}

func commandUsage(w io.Writer, c *command) {
	fmt.Fprintf(w, "Usage: syncer %s\n  %s\n", strings.TrimSpace(c.name+" "+c.args), c.summary)
}

// envUsage lists the environment variables, from spec's tags.
const envUsage = `{{range .}}  {{usage_key .}}{{if usage_default .}} (default {{usage_default .}}){{end}}
      {{usage_description .}}
{{end}}`

func cmdHelp(_ context.Context, e *env, args []string) error {
	if _, err := parseFlags("help", args, 0, 0); err != nil {
		return err
	}
	usage(e.stdout)
	fmt.Fprintln(e.stdout)
	fmt.Fprintln(e.stdout, "Environment:")
	return envconfig.Usagef(envPrefix, &spec{}, e.stdout, envUsage)
}
