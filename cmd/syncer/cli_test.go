package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// result is what one run of the command line produced.
type result struct {
	code           int
	stdout, stderr string
}

// runCLI runs the command line with env as the whole environment.
func runCLI(t *testing.T, ctx context.Context, env envMap, args ...string) result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(ctx, args, env.lookup, &stdout, &stderr)
	r := result{code, stdout.String(), stderr.String()}
	t.Logf("syncer %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	return r
}

func TestCLIUsage(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name       string
		args       []string
		code       int
		stdout     string // expected in stdout
		stderr     string // expected in stderr
		noConnects bool
	}{
		{name: "NoCommand", args: nil, code: exitUsage, stderr: "Usage: syncer <command>"},
		{name: "UnknownCommand", args: []string{"publish"}, code: exitUsage, stderr: `unknown command "publish"`},
		{name: "UnknownGlobalFlag", args: []string{"--verbose"}, code: exitUsage, stderr: "Usage: syncer <command>"},
		{name: "Help", args: []string{"help"}, code: exitOK, stdout: "EXTENSION_REGISTRY_DB_HOST (default localhost)"},
		{name: "DashH", args: []string{"-h"}, code: exitOK, stdout: "Usage: syncer <command>"},
		{name: "HelpUnknownCommand", args: []string{"help", "me"}, code: exitUsage, stderr: `unknown command "me"`},
		{name: "RunUnknownFlag", args: []string{"run", "--fast"}, code: exitUsage, stderr: "flag provided but not defined: -fast"},
		{name: "RunArgument", args: []string{"run", "now"}, code: exitUsage, stderr: `unexpected argument "now"`},
		{name: "RunHelp", args: []string{"run", "-h"}, code: exitOK, stdout: "Usage: syncer run"},
		{name: "MigrateUnknownArgument", args: []string{"migrate", "down"}, code: exitUsage, stderr: `unknown argument "down"`},
		{name: "MigrateUnknownFlag", args: []string{"migrate", "-x"}, code: exitUsage, stderr: "Usage: syncer migrate [status]"},
		{name: "FixturesNoSubcommand", args: []string{"fixtures"}, code: exitUsage, stderr: "missing subcommand"},
		{name: "FixturesUnknownSubcommand", args: []string{"fixtures", "sync"}, code: exitUsage, stderr: `unknown subcommand "sync"`},
		{name: "FixturesExportNoDir", args: []string{"fixtures", "export"}, code: exitUsage, stderr: "missing argument"},
		{name: "FixturesImportTwoDirs", args: []string{"fixtures", "import", "a", "b"}, code: exitUsage, stderr: `unexpected argument "b"`},
		{name: "FixturesHelp", args: []string{"fixtures", "-h"}, code: exitOK, stdout: "Usage: syncer fixtures"},
		{name: "Version", args: []string{"version"}, code: exitOK, stdout: "built with go1."},
		{name: "VersionJSON", args: []string{"version", "--json"}, code: exitOK, stdout: `"go_version":"go1.`},
		{name: "StatusArgument", args: []string{"status", "now"}, code: exitUsage, stderr: `unexpected argument "now"`},
		{name: "WaitNeither", args: []string{"wait"}, code: exitUsage, stderr: "give exactly one of --revision R"},
		{name: "WaitRoutersAndAll", args: []string{"wait", "--current", "--routers", "2", "--all"}, code: exitUsage, stderr: "at most one of --routers"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := runCLI(t, context.Background(), envMap{}, tt.args...)
			if r.code != tt.code {
				t.Errorf("exit %d, want %d", r.code, tt.code)
			}
			if !strings.Contains(r.stdout, tt.stdout) {
				t.Errorf("stdout lacks %q", tt.stdout)
			}
			if !strings.Contains(r.stderr, tt.stderr) {
				t.Errorf("stderr lacks %q", tt.stderr)
			}
		})
	}
}

// TestCLIBadConfig: every command refuses a bad configuration before connecting to
// anything (the database and NATS addresses here lead nowhere, so a connection attempt
// would fail differently).
func TestCLIBadConfig(t *testing.T) {
	t.Parallel()
	env := envMap{
		"EXTENSION_REGISTRY_DB_PORT":               "5432x",
		"EXTENSION_REGISTRY_SYNC_INTERVAL_SECONDS": "-5",
		"EXTENSION_REGISTRY_DB_PASSWORD":           "never-shown-pw",
	}
	for _, args := range [][]string{{"run"}, {"migrate"}, {"migrate", "status"}, {"fixtures", "import"}, {"fixtures", "export", t.TempDir()}, {"fixtures", "verify"}} {
		t.Run(strings.Join(args, "_"), func(t *testing.T) {
			t.Parallel()
			r := runCLI(t, context.Background(), env, args...)
			if r.code != exitError {
				t.Errorf("exit %d, want 1", r.code)
			}
			want := "syncer: invalid configuration (2 problems):\n" +
				"  EXTENSION_REGISTRY_DB_PORT: must be a port number in 1..65535 (got \"5432x\")\n" +
				"  EXTENSION_REGISTRY_SYNC_INTERVAL_SECONDS: must be a positive integer (got \"-5\")\n"
			if r.stderr != want {
				t.Errorf("stderr\n%s\nwant\n%s", r.stderr, want)
			}
		})
	}
}
