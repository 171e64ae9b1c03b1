package main

import (
	"strings"
	"testing"
)

// TestConfigSubjectPrefixLimits: a prefix that cannot work is refused at start, naming
// the variable and the limit.
func TestConfigSubjectPrefixLimits(t *testing.T) {
	t.Parallel()
	const key = "EXTENSION_REGISTRY_SUBJECT_PREFIX"
	for _, c := range []struct {
		prefix string
		want   string // "" accepted
	}{
		{strings.Repeat("a", 122), ""},
		{strings.Repeat("B", 122), ""},
		{"beamline-registry", ""},
		{strings.Repeat("a", 123), key + ": must be at most 122 characters, so that its stream names fit JetStream's limit of 255 (got 123 characters)"},
		{strings.Repeat("a.", 150) + "a", key + ": must be at most 122 characters"},
		{"régistre", key + ": must be dot-separated tokens of ASCII letters"},
		{"a..b", key + ": must be dot-separated tokens"},
		{"a.>", key + ": must be dot-separated tokens"},
		{"a b", key + ": must be dot-separated tokens"},
	} {
		_, err := loadConfig(envMap{key: c.prefix}.lookup)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%.30q refused: %v", c.prefix, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%.30q: got %v, want %q", c.prefix, err, c.want)
		}
	}
}
