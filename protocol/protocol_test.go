package protocol_test

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/beamline/registry-syncer/cache"
	"github.com/beamline/registry-syncer/protocol"
)

// TestProtocolDocExample keeps PROTOCOL.md's worked checksum example true.
func TestProtocolDocExample(t *testing.T) {
	t.Parallel()
	doc, err := os.ReadFile("../PROTOCOL.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(doc)
	block := regexp.MustCompile("(?s)Canonical encodings, in id order:\n\n```\n(.*?)\n```").FindStringSubmatch(text)
	if block == nil {
		t.Fatal("PROTOCOL.md: worked example block not found")
	}
	lines := strings.Split(block[1], "\n")
	var exts []cache.Extension
	var concat []byte
	for _, l := range lines {
		var e cache.Extension
		if err := json.Unmarshal([]byte(l), &e); err != nil {
			t.Fatalf("example line %q: %v", l, err)
		}
		c, err := cache.Canonical(&e)
		if err != nil {
			t.Fatal(err)
		}
		if string(c) != l {
			t.Errorf("canonical encoding differs from PROTOCOL.md:\n got %s\nwant %s", c, l)
		}
		h := sha256.Sum256(c)
		if !strings.Contains(text, hex.EncodeToString(h[:])) {
			t.Errorf("PROTOCOL.md does not list the hash %x of %s", h, e.ID)
		}
		concat = append(concat, h[:]...)
		exts = append(exts, e)
	}
	sum := sha256.Sum256(concat)
	want := regexp.MustCompile(`checksum = ([0-9a-f]{64})`).FindStringSubmatch(text)
	if want == nil || want[1] != hex.EncodeToString(sum[:]) {
		t.Fatalf("PROTOCOL.md checksum %v, computed %x", want, sum)
	}
	snap, err := cache.New(7, "database", exts)
	if err != nil {
		t.Fatal(err)
	}
	if snap.Checksum() != want[1] {
		t.Fatalf("cache checksum %s, PROTOCOL.md %s", snap.Checksum(), want[1])
	}
}

func TestNames(t *testing.T) {
	t.Parallel()
	n, err := protocol.NewNames("beamline.registry")
	if err != nil {
		t.Fatal(err)
	}
	if n.DeltaStream != "BEAMLINE_REGISTRY_DELTAS" || n.SnapshotStream != "BEAMLINE_REGISTRY_SNAPSHOTS" ||
		n.DeltaSubject(12) != "beamline.registry.delta.12" || n.ChunkSubject(3) != "beamline.registry.snapshot.data.3" {
		t.Fatalf("names: %+v", n)
	}
	for _, bad := range []string{"", "a..b", "a.*", "a.>", "a b", ".a"} {
		if _, err := protocol.NewNames(bad); err == nil {
			t.Errorf("prefix %q accepted", bad)
		}
	}
}

func TestDecodeDeltaRejects(t *testing.T) {
	t.Parallel()
	good := `{"revision":2,"prev_revision":1,"checksum":"` + strings.Repeat("a", 64) + `","count":0,"source":"database","committed_at":"2026-01-01T00:00:00Z","changes":[]}`
	if _, err := protocol.DecodeDelta([]byte(good)); err != nil {
		t.Fatalf("good delta refused: %v", err)
	}
	for name, bad := range map[string]string{
		"garbage":       "\x00\x01",
		"zero revision": strings.Replace(good, `"revision":2`, `"revision":0`, 1),
		"prev >= rev":   strings.Replace(good, `"prev_revision":1`, `"prev_revision":2`, 1),
		"bad checksum":  strings.Replace(good, strings.Repeat("a", 64), "xyz", 1),
		"no source":     strings.Replace(good, `"source":"database"`, `"source":""`, 1),
	} {
		if _, err := protocol.DecodeDelta([]byte(bad)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestSchemasAreJSON(t *testing.T) {
	t.Parallel()
	for _, f := range []string{"aggregate", "snapshot", "delta", "heartbeat"} {
		data, err := os.ReadFile("schema/" + f + ".schema.json")
		if err != nil {
			t.Fatal(err)
		}
		var v map[string]any
		if err := json.Unmarshal(data, &v); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
}

func TestCheckServerVersion(t *testing.T) {
	t.Parallel()
	for _, v := range []string{"2.9.0", "v2.9.0", "2.9.10", "2.10.29", "2.12.15", "2.15.3", "3.0.0", "2.10.0-RC.1", "2.9.1-beta"} {
		if err := protocol.CheckServerVersion(v); err != nil {
			t.Errorf("CheckServerVersion(%q): %v, want nil", v, err)
		}
	}
	for _, v := range []string{"2.8.4", "v2.8.4", "2.2.0", "1.4.1", "2.9.0-RC.1", "0.0.0"} {
		err := protocol.CheckServerVersion(v)
		if !errors.Is(err, protocol.ErrUnsupportedServer) {
			t.Errorf("CheckServerVersion(%q): %v, want ErrUnsupportedServer", v, err)
			continue
		}
		if msg := err.Error(); !strings.Contains(msg, strings.TrimPrefix(v, "v")) || !strings.Contains(msg, protocol.MinServerVersion) {
			t.Errorf("CheckServerVersion(%q): %q names not both versions", v, msg)
		}
	}
	for _, v := range []string{"", "2.9", "2.x.0", "banana", "2.9.-1"} {
		if err := protocol.CheckServerVersion(v); !errors.Is(err, protocol.ErrUnsupportedServer) {
			t.Errorf("CheckServerVersion(%q): %v, want ErrUnsupportedServer", v, err)
		}
	}
	if got, err := protocol.ParseServerVersion("v2.11.0-RC.2"); err != nil || got != (protocol.ServerVersion{Major: 2, Minor: 11, Patch: 0, Pre: "RC.2"}) {
		t.Errorf("ParseServerVersion(v2.11.0-RC.2) = %+v, %v", got, err)
	}
}
