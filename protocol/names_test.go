package protocol_test

import (
	"math/rand/v2"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/beamline/registry-syncer/protocol"
)

// decodeBase inverts protocol.StreamBase; it exists only to show that the encoding is one
// to one (a function with an inverse never maps two prefixes to one name).
func decodeBase(t *testing.T, base string) string {
	t.Helper()
	var b strings.Builder
	for i := 0; i < len(base); i++ {
		c := base[i]
		switch {
		case c == '-':
			i++
			if i == len(base) {
				t.Fatalf("%q: dangling escape", base)
			}
			b.WriteByte(base[i])
		case c >= 'A' && c <= 'Z':
			b.WriteByte(c - 'A' + 'a')
		case c == '_':
			b.WriteByte('.')
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

func TestStreamNamesKeepTheDefault(t *testing.T) {
	t.Parallel()
	n, err := protocol.NewNames(protocol.DefaultPrefix)
	if err != nil {
		t.Fatal(err)
	}
	if n.DeltaStream != "BEAMLINE_REGISTRY_DELTAS" || n.SnapshotStream != "BEAMLINE_REGISTRY_SNAPSHOTS" {
		t.Fatalf("default prefix: streams %s and %s, want the names of earlier versions", n.DeltaStream, n.SnapshotStream)
	}
	for prefix, want := range map[string]string{
		"acme.reg2":         "ACME_REG2",
		"beamline-registry": "BEAMLINE--REGISTRY",
		"beamline_registry": "BEAMLINE-_REGISTRY",
		"Beamline.registry": "-BEAMLINE_REGISTRY",
		"a.B-c_d":           "A_-B--C-_D",
	} {
		if got := protocol.StreamBase(prefix); got != want {
			t.Errorf("StreamBase(%q) = %q, want %q", prefix, got, want)
		}
	}
}

// TestStreamNamesOneToOne: prefixes that the old scheme merged (., - and _ all became _;
// case was folded) get distinct streams, and every stream name decodes to its prefix.
func TestStreamNamesOneToOne(t *testing.T) {
	t.Parallel()
	seen := map[string]string{}
	add := func(prefix string) {
		t.Helper()
		n, err := protocol.NewNames(prefix)
		if err != nil {
			t.Fatalf("%q: %v", prefix, err)
		}
		for _, s := range []string{n.DeltaStream, n.SnapshotStream} {
			if other, dup := seen[s]; dup && other != prefix {
				t.Fatalf("prefixes %q and %q share the stream %s", other, prefix, s)
			}
			seen[s] = prefix
			if strings.ContainsAny(s, " \t\r\n\f.*>/\\") || s != strings.ToUpper(s) || len(s) > protocol.MaxStreamName {
				t.Fatalf("%q: stream name %q is not a valid upper-case JetStream name", prefix, s)
			}
		}
		if got := decodeBase(t, protocol.StreamBase(prefix)); got != prefix {
			t.Fatalf("StreamBase(%q) decodes to %q", prefix, got)
		}
	}
	for _, p := range []string{"beamline.registry", "beamline-registry", "beamline_registry", "Beamline.Registry",
		"BEAMLINE.REGISTRY", "beamline.registry_deltas", "beamline.registry.deltas", "a-.b", "a.-b", "a_-b", "a-_b", "a--b", "a.__b"} {
		add(p)
	}
	const alphabet = "abcXYZ09_-."
	rng := rand.New(rand.NewPCG(1, 2))
	for range 20000 {
		var b strings.Builder
		for range 1 + rng.IntN(8) {
			b.WriteByte(alphabet[rng.IntN(len(alphabet))])
		}
		p := b.String()
		if protocol.ValidatePrefix(p) != nil {
			continue
		}
		add(p)
	}
}

func TestPrefixLimits(t *testing.T) {
	t.Parallel()
	if protocol.MaxPrefixLen != 122 {
		t.Fatalf("MaxPrefixLen %d, want (255-10)/2 = 122", protocol.MaxPrefixLen)
	}
	// The worst case at the limit: every character escaped.
	worst := strings.Repeat("A", protocol.MaxPrefixLen)
	n, err := protocol.NewNames(worst)
	if err != nil {
		t.Fatalf("a prefix of %d characters: %v", protocol.MaxPrefixLen, err)
	}
	if len(n.SnapshotStream) > protocol.MaxStreamName {
		t.Fatalf("stream name of %d bytes exceeds %d", len(n.SnapshotStream), protocol.MaxStreamName)
	}
	for _, c := range []struct{ prefix, want string }{
		{strings.Repeat("a", protocol.MaxPrefixLen+1), "at most 122 characters"},
		{strings.Repeat("a", 300), "at most 122 characters"},
		{"beamline..registry", "no empty tokens"},
		{"beamline.*", "no wildcards"},
		{"beamline.>", "no wildcards"},
		{"beam line", "letters, digits"},
		{"régistre", "letters, digits"},
		{"beamline/registry", "letters, digits"},
		{"", "letters, digits"},
	} {
		_, err := protocol.NewNames(c.prefix)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("NewNames(%.20q…): %v, want an error saying %q", c.prefix, err, c.want)
		}
	}
}

// TestProtocolDocStreamNames keeps the examples of PROTOCOL.md §1 true.
func TestProtocolDocStreamNames(t *testing.T) {
	t.Parallel()
	doc, err := os.ReadFile("../PROTOCOL.md")
	if err != nil {
		t.Fatal(err)
	}
	examples := regexp.MustCompile("`([A-Za-z0-9._-]+)` gives\\s+`([A-Z0-9_-]+)`").FindAllStringSubmatch(string(doc), -1)
	if len(examples) < 3 {
		t.Fatalf("PROTOCOL.md §1: found %d stream-name examples", len(examples))
	}
	for _, e := range examples {
		if got := protocol.StreamBase(e[1]); got != e[2] {
			t.Errorf("PROTOCOL.md says %s gives %s; StreamBase gives %s", e[1], e[2], got)
		}
	}
	if !strings.Contains(string(doc), "at most 122 characters") {
		t.Error("PROTOCOL.md does not state the prefix limit")
	}
}
