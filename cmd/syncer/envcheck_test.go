package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
)

func TestLevenshtein(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		a, b string
		want int
	}{{"", "", 0}, {"", "abc", 3}, {"kitten", "sitting", 3}, {"NATS_URL", "NATS_URLS", 1}, {"DB_HOST", "DB_HSOT", 2}, {"same", "same", 0}} {
		if got := levenshtein(tt.a, tt.b); got != tt.want {
			t.Errorf("levenshtein(%q, %q) = %d, want %d", tt.a, tt.b, got, tt.want)
		}
	}
}

func TestUnknownVariables(t *testing.T) {
	t.Parallel()
	got := unknownVariables([]string{
		"PATH=/usr/bin",
		"EXTENSION_REGISTRY_DB_HOST=db",                 // known
		"EXTENSION_REGISTRY_SYNC_INTERVAL=30",           // missing _SECONDS
		"EXTENSION_REGISTRY_NATS_URLS=nats://n:4222",    // one letter too many
		"EXTENSION_REGISTRY_ADMIN_TOKNE=xxxxxxxxxxxxxx", // transposed
		"extension_registry_db_port=5433",               // wrong case: not read either
		"REGISTRY_NATS_SERVERS=x",                       // another prefix: not ours
		"EXTENSION_REGISTRY_NATS_URLS=again",            // listed once
	})
	want := []unknownVariable{
		{"EXTENSION_REGISTRY_ADMIN_TOKNE", "EXTENSION_REGISTRY_ADMIN_TOKEN"},
		{"EXTENSION_REGISTRY_NATS_URLS", "EXTENSION_REGISTRY_NATS_URL"},
		{"EXTENSION_REGISTRY_SYNC_INTERVAL", "EXTENSION_REGISTRY_SYNC_INTERVAL_SECONDS"},
		{"extension_registry_db_port", "EXTENSION_REGISTRY_DB_PORT"},
	}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("[%d] = %+v, want %+v", i, got[i], want[i])
		}
	}
}

// TestUnknownVariableWarning: a command that reads the configuration warns on stderr, in
// the log format configured, naming the variable and the closest known name; the
// configuration itself still loads.
func TestUnknownVariableWarning(t *testing.T) {
	t.Parallel()
	for _, format := range []string{"text", "json"} {
		t.Run(format, func(t *testing.T) {
			t.Parallel()
			m := envMap{"EXTENSION_REGISTRY_LOG_FORMAT": format, "EXTENSION_REGISTRY_SUBJECT_PREFX": "acme.registry"}
			var stdout, stderr bytes.Buffer
			e := &env{lookup: m.lookup, environ: m.environ, stdout: &stdout, stderr: &stderr}
			if _, err := e.config(); err != nil {
				t.Fatal(err)
			}
			out := stderr.String()
			t.Logf("stderr: %s", out)
			if !strings.Contains(out, "EXTENSION_REGISTRY_SUBJECT_PREFX") || !strings.Contains(out, "did you mean EXTENSION_REGISTRY_SUBJECT_PREFIX?") {
				t.Errorf("warning lacks the variable or the closest name")
			}
			if format == "json" {
				var line map[string]any
				if err := json.Unmarshal(bytes.TrimSpace(stderr.Bytes()), &line); err != nil {
					t.Fatalf("not one JSON line: %v", err)
				}
				if line["level"] != "WARN" || line["variable"] != "EXTENSION_REGISTRY_SUBJECT_PREFX" || line["closest"] != "EXTENSION_REGISTRY_SUBJECT_PREFIX" {
					t.Errorf("JSON warning %v", line)
				}
			}
		})
	}
	// Nothing unknown: nothing said.
	m := envMap{"EXTENSION_REGISTRY_SUBJECT_PREFIX": "acme.registry"}
	var stderr bytes.Buffer
	e := &env{lookup: m.lookup, environ: m.environ, stdout: &bytes.Buffer{}, stderr: &stderr}
	if _, err := e.config(); err != nil || stderr.Len() != 0 {
		t.Errorf("config: %v, stderr %q, want no warning", err, stderr.String())
	}
	// Through the command line: the warning comes before the command's own error.
	var out, errOut bytes.Buffer
	m = envMap{"EXTENSION_REGISTRY_DATABSE_URL": "postgres://x@127.0.0.1:1/db", "EXTENSION_REGISTRY_DB_PORT": "1"}
	code := runEnv(context.Background(), []string{"history"}, &env{lookup: m.lookup, environ: m.environ, stdout: &out, stderr: &errOut})
	if code != exitError || !strings.Contains(errOut.String(), "did you mean EXTENSION_REGISTRY_DATABASE_URL?") {
		t.Errorf("history: exit %d, stderr %q: want the warning, then the connection error", code, errOut.String())
	}
}
