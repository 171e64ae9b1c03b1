package protocol_test

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"os"
	"regexp"
	"slices"
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
	// Checksum v2 of the same example: the sum modulo 2^256 of the element hashes.
	want2 := regexp.MustCompile(`checksum_v2 = ([0-9a-f]{64})`).FindStringSubmatch(text)
	if want2 == nil {
		t.Fatal("PROTOCOL.md: checksum_v2 of the worked example not found")
	}
	if got := sumMod256(t, concat); got != want2[1] || snap.ChecksumV2() != want2[1] {
		t.Fatalf("PROTOCOL.md checksum_v2 %s; math/big %s, cache %s", want2[1], got, snap.ChecksumV2())
	}
}

// sumMod256 adds the 32-byte big-endian numbers in hashes modulo 2^256.
func sumMod256(t *testing.T, hashes []byte) string {
	t.Helper()
	total := new(big.Int)
	for i := 0; i < len(hashes); i += 32 {
		total.Add(total, new(big.Int).SetBytes(hashes[i:i+32]))
	}
	return fmt.Sprintf("%064x", total.Mod(total, new(big.Int).Lsh(big.NewInt(1), 256)))
}

// TestChecksumVectors keeps PROTOCOL.md §4.2's test vectors true: encodings, element
// hashes and both checksums, recomputed independently (SHA-256 and math/big) and by the
// cache.
func TestChecksumVectors(t *testing.T) {
	t.Parallel()
	doc, err := os.ReadFile("../PROTOCOL.md")
	if err != nil {
		t.Fatal(err)
	}
	block := regexp.MustCompile("(?s)```json checksum-vectors\n(.*?)\n```").FindSubmatch(doc)
	if block == nil {
		t.Fatal("PROTOCOL.md: checksum-vectors block not found")
	}
	var vectors []struct {
		Name       string            `json:"name"`
		Extensions []json.RawMessage `json:"extensions"`
		V1, V2     []string
		HashesV1   []string `json:"hashes_v1"`
		HashesV2   []string `json:"hashes_v2"`
		Checksum   string   `json:"checksum"`
		ChecksumV2 string   `json:"checksum_v2"`
	}
	if err := json.Unmarshal(block[1], &vectors); err != nil {
		t.Fatal(err)
	}
	sets := map[string][]cache.Extension{}
	if len(vectors) < 5 {
		t.Fatalf("%d vectors", len(vectors))
	}
	for _, v := range vectors {
		var exts []cache.Extension
		for _, raw := range v.Extensions {
			var name string
			if json.Unmarshal(raw, &name) == nil {
				exts = append(exts, sets[name]...)
				continue
			}
			var e cache.Extension
			if err := json.Unmarshal(raw, &e); err != nil {
				t.Fatalf("%s: %v", v.Name, err)
			}
			exts = append(exts, e)
		}
		sets[v.Name] = exts
		enc := func(i int, f func(*cache.Extension) ([]byte, error)) []byte {
			b, err := f(&exts[i])
			if err != nil {
				t.Fatalf("%s: %v", v.Name, err)
			}
			return b
		}
		for i, want := range v.V1 {
			if got := enc(i, cache.Canonical); string(got) != want {
				t.Errorf("%s: v1 encoding of %s\n got %s\nwant %s", v.Name, exts[i].ID, got, want)
			}
		}
		for i, want := range v.V2 {
			if got := enc(i, cache.CanonicalV2); string(got) != want {
				t.Errorf("%s: v2 encoding of %s\n got %s\nwant %s", v.Name, exts[i].ID, got, want)
			}
		}
		for i, want := range v.HashesV1 {
			if h := sha256.Sum256(enc(i, cache.Canonical)); hex.EncodeToString(h[:]) != want {
				t.Errorf("%s: v1 hash of %s is %x, PROTOCOL.md %s", v.Name, exts[i].ID, h, want)
			}
		}
		for i, want := range v.HashesV2 {
			if h := sha256.Sum256(enc(i, cache.CanonicalV2)); hex.EncodeToString(h[:]) != want {
				t.Errorf("%s: v2 hash of %s is %x, PROTOCOL.md %s", v.Name, exts[i].ID, h, want)
			}
		}
		// Both checksums from the encodings, in id order, independently of the cache.
		order := make([]int, len(exts))
		for i := range order {
			order[i] = i
		}
		slices.SortFunc(order, func(a, b int) int { return strings.Compare(exts[a].ID, exts[b].ID) })
		var cat1, cat2 []byte
		for _, i := range order {
			h1 := sha256.Sum256(enc(i, cache.Canonical))
			h2 := sha256.Sum256(enc(i, cache.CanonicalV2))
			cat1, cat2 = append(cat1, h1[:]...), append(cat2, h2[:]...)
		}
		sum1 := sha256.Sum256(cat1)
		if got := hex.EncodeToString(sum1[:]); got != v.Checksum {
			t.Errorf("%s: checksum %s, PROTOCOL.md %s", v.Name, got, v.Checksum)
		}
		if got := sumMod256(t, cat2); got != v.ChecksumV2 {
			t.Errorf("%s: checksum_v2 %s, PROTOCOL.md %s", v.Name, got, v.ChecksumV2)
		}
		snap, err := cache.New(1, "database", exts)
		if err != nil {
			t.Fatalf("%s: %v", v.Name, err)
		}
		if snap.Checksum() != v.Checksum || snap.ChecksumV2() != v.ChecksumV2 {
			t.Errorf("%s: cache gives %s / %s, PROTOCOL.md %s / %s", v.Name, snap.Checksum(), snap.ChecksumV2(), v.Checksum, v.ChecksumV2)
		}
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
