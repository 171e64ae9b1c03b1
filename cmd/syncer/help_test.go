package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strings"
	"testing"
)

// subcommands of the commands that have them. A command with subcommands may answer a
// bare -h with its usage only; every leaf (a command without subcommands, or a
// subcommand) must hand its flag set back so that run prints its flags and defaults.
var subcommands = map[string][]string{
	"migrate":  {"status"},
	"fixtures": {"import", "export", "verify"},
	"ext":      {"list", "show", "create", "set", "enable", "disable", "kill", "unkill", "delete", "rollout"},
}

// parents answer a bare -h without a flag set of their own.
var parents = map[string]bool{"fixtures": true, "ext": true}

// TestHelpEveryCommand runs -h (and help CMD) on every command and subcommand: exit 0,
// the command's usage on stdout, and every flag with its default.
func TestHelpEveryCommand(t *testing.T) {
	t.Parallel()
	type leaf struct {
		cmd  *command
		args []string // after the command name, without -h
	}
	var leaves []leaf
	for i := range commands {
		c := &commands[i]
		leaves = append(leaves, leaf{c, nil})
		for _, sub := range subcommands[c.name] {
			leaves = append(leaves, leaf{c, []string{sub}})
		}
	}
	for _, l := range leaves {
		name := strings.Join(append([]string{l.cmd.name}, l.args...), " ")
		t.Run(strings.ReplaceAll(name, " ", "_"), func(t *testing.T) {
			t.Parallel()
			for _, argv := range [][]string{
				append(append([]string{l.cmd.name}, l.args...), "-h"),
				append([]string{"help", l.cmd.name}, l.args...),
			} {
				r := runCLI(t, context.Background(), envMap{}, argv...)
				if r.code != exitOK {
					t.Errorf("%v: exit %d, want 0", argv, r.code)
				}
				if want := "Usage: syncer " + l.cmd.name; !strings.Contains(r.stdout, want) {
					t.Errorf("%v: stdout lacks %q", argv, want)
				}
				if r.stderr != "" {
					t.Errorf("%v: stderr %q, want nothing", argv, r.stderr)
				}
			}
			// The flag set the command parsed: every flag must be listed, with its
			// default when it has one.
			err := l.cmd.run(context.Background(), &env{lookup: envMap{}.lookup}, append(append([]string{}, l.args...), "-h"))
			if !errors.Is(err, flag.ErrHelp) {
				t.Fatalf("-h returned %v, want flag.ErrHelp", err)
			}
			var h *helpRequest
			if !errors.As(err, &h) {
				if len(l.args) == 0 && parents[l.cmd.name] {
					return
				}
				t.Fatalf("-h returned a bare flag.ErrHelp: parse the flags with parseInto so that -h lists them")
			}
			r := runCLI(t, context.Background(), envMap{}, append(append([]string{l.cmd.name}, l.args...), "-h")...)
			h.fs.VisitAll(func(f *flag.Flag) {
				if !strings.Contains(r.stdout, "  -"+f.Name+" ") && !strings.Contains(r.stdout, "  -"+f.Name+"\n") {
					t.Errorf("flag -%s not listed", f.Name)
				}
				if f.DefValue == "" || f.DefValue == "false" || f.DefValue == "0" || f.DefValue == "[]" || f.DefValue == "map[]" {
					return
				}
				quoted := fmt.Sprintf("(default %q)", f.DefValue)
				plain := fmt.Sprintf("(default %s)", f.DefValue)
				if !strings.Contains(r.stdout, quoted) && !strings.Contains(r.stdout, plain) {
					t.Errorf("flag -%s: default %s not shown", f.Name, f.DefValue)
				}
			})
		})
	}
}

// TestHelpDevShowsFlags: syncer dev -h lists its flags (it hid them), with defaults.
func TestHelpDevShowsFlags(t *testing.T) {
	t.Parallel()
	r := runCLI(t, context.Background(), envMap{}, "dev", "-h")
	for _, want := range []string{"-dir string", `(default ".dev")`, "-pg-port int", "(default 15432)", "-nats-port int", "-http string"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("dev -h lacks %q", want)
		}
	}
}

func TestHelpUnknownCommand(t *testing.T) {
	t.Parallel()
	r := runCLI(t, context.Background(), envMap{}, "help", "publish")
	if r.code != exitUsage || !strings.Contains(r.stderr, `unknown command "publish"`) {
		t.Errorf("help publish: exit %d, want 2 naming the command", r.code)
	}
}
