package client

// TestRolloutVectors checks the rollout test vectors of PROTOCOL.md §3.1 against the
// client: the percentage buckets, version selection through Resolve (which Invoke uses:
// kill switch, disabled extensions, rules and percentages) and the refused routing rules.
// If it fails, either the code or PROTOCOL.md changed: make them agree again — and tell
// the router teams, whose routers compute the same.

import (
	"encoding/json"
	"errors"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/beamline/registry-syncer/cache"
	"github.com/beamline/registry-syncer/rules"
)

// protocolSection returns the text of PROTOCOL.md §3.1.
func protocolSection(t *testing.T) string {
	t.Helper()
	doc, err := os.ReadFile("../PROTOCOL.md")
	if err != nil {
		t.Fatal(err)
	}
	s := string(doc)
	i := strings.Index(s, "### 3.1 Extension aggregate")
	j := strings.Index(s, "### 3.2 Snapshot document")
	if i < 0 || j < i {
		t.Fatal("PROTOCOL.md: §3.1 not found")
	}
	return s[i:j]
}

// tableAfter returns the cells of the rows of the first Markdown table after marker,
// header and separator rows left out.
func tableAfter(t *testing.T, text, marker string) [][]string {
	t.Helper()
	i := strings.Index(text, marker)
	if i < 0 {
		t.Fatalf("PROTOCOL.md §3.1: %q not found", marker)
	}
	var rows [][]string
	started := false
	for _, line := range strings.Split(text[i:], "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "|") {
			if started {
				break
			}
			continue
		}
		started = true
		var cells []string
		for _, c := range strings.Split(strings.Trim(line, "|"), "|") {
			cells = append(cells, strings.TrimSpace(c))
		}
		rows = append(rows, cells)
	}
	if len(rows) < 3 {
		t.Fatalf("PROTOCOL.md §3.1: no table after %q", marker)
	}
	return rows[2:]
}

// unquote strips the backticks of a table cell.
func unquote(s string) string { return strings.TrimSuffix(strings.TrimPrefix(s, "`"), "`") }

// vectorExtensions decodes the abridged aggregates of the vectors, filling the fields
// PROTOCOL.md says are omitted.
func vectorExtensions(t *testing.T, text string) []cache.Extension {
	t.Helper()
	const open = "```json rollout-vectors\n"
	i := strings.Index(text, open)
	if i < 0 {
		t.Fatal("PROTOCOL.md §3.1: the rollout-vectors block is missing")
	}
	body := text[i+len(open):]
	body = body[:strings.Index(body, "```")]
	var raw []map[string]any
	if err := json.Unmarshal([]byte(body), &raw); err != nil {
		t.Fatalf("rollout-vectors: %v", err)
	}
	defaults := func(m map[string]any, fields map[string]any) {
		for k, v := range fields {
			if _, ok := m[k]; !ok {
				m[k] = v
			}
		}
	}
	var out []cache.Extension
	for _, m := range raw {
		defaults(m, map[string]any{"type": "pre", "timeout_ms": 100, "retry": 0, "config": map[string]any{}, "metadata": map[string]any{}, "instances": []any{}})
		for _, v := range m["versions"].([]any) {
			defaults(v.(map[string]any), map[string]any{"timeout_ms": 100, "retry": 0, "config": map[string]any{}, "metadata": map[string]any{}})
		}
		b, _ := json.Marshal(m)
		var e cache.Extension
		if err := json.Unmarshal(b, &e); err != nil {
			t.Fatal(err)
		}
		out = append(out, e)
	}
	return out
}

var resultRE = regexp.MustCompile("^`([^`]+)` (rules|percent|default)(?: ([0-9]+))?")

func TestRolloutVectors(t *testing.T) {
	t.Parallel()
	text := protocolSection(t)

	buckets := tableAfter(t, text, "Buckets (`ID`, `V`, `K` → bucket)")
	for _, row := range buckets {
		want, err := strconv.Atoi(row[3])
		if err != nil {
			t.Fatalf("bucket row %v: %v", row, err)
		}
		if got := rules.PercentBucket(unquote(row[0]), unquote(row[1]), unquote(row[2])); got != want {
			t.Errorf("PercentBucket(%s, %s, %s) = %d, PROTOCOL.md says %d", row[0], row[1], row[2], got, want)
		}
	}

	snap, err := cache.New(1, "database", vectorExtensions(t, text))
	if err != nil {
		t.Fatalf("the vectors' extensions are invalid: %v", err)
	}
	c := &Client{}
	c.snap.Store(snap)
	requests := tableAfter(t, text, "Requests (context →")
	if len(requests) < 10 {
		t.Fatalf("only %d request vectors", len(requests))
	}
	for _, row := range requests {
		id, result := unquote(row[0]), row[2]
		var attrs map[string]string
		if err := json.Unmarshal([]byte(unquote(row[1])), &attrs); err != nil {
			t.Fatalf("vector %v: context: %v", row, err)
		}
		plan, err := c.Resolve(id, attrs, "")
		if strings.HasPrefix(result, "not found") {
			var ie *InvokeError
			if !errors.As(err, &ie) || ie.Code != CodeExtensionNotFound {
				t.Errorf("%s %s: got plan %+v, err %v; PROTOCOL.md says %s", id, row[1], plan, err, result)
				continue
			}
			wantReason := "disabled"
			if strings.Contains(result, "kill switch") {
				wantReason = "kill_switch"
			}
			if !strings.HasPrefix(ie.Reason, wantReason) {
				t.Errorf("%s %s: reason %q, want %s (PROTOCOL.md: %s)", id, row[1], ie.Reason, wantReason, result)
			}
			if _, ok := c.Lookup(id); wantReason == "disabled" && ok != (id == "canary") {
				t.Errorf("Lookup(%s) = %v: only an extension that can serve some request is returned", id, ok)
			}
			continue
		}
		m := resultRE.FindStringSubmatch(result)
		if m == nil {
			t.Fatalf("vector %v: cannot read the result %q", row, result)
		}
		if err != nil {
			t.Errorf("%s %s: %v; PROTOCOL.md says %s", id, row[1], err, result)
			continue
		}
		match := map[string]string{"rules": cache.MatchRules, "percent": cache.MatchPercent, "default": cache.MatchDefault}[m[2]]
		wantBucket := -1
		if m[3] != "" {
			wantBucket, _ = strconv.Atoi(m[3])
		}
		if plan.Version != m[1] || plan.Match != match || plan.Bucket != wantBucket {
			t.Errorf("%s %s: got %s by %s (bucket %d); PROTOCOL.md says %s", id, row[1], plan.Version, plan.Match, plan.Bucket, result)
		}
	}

	// The refused routing rules: every one is refused with the rule rollout_keys.
	i := strings.Index(text, "Refused `routing_rules` (rule `rollout_keys`):")
	if i < 0 {
		t.Fatal("PROTOCOL.md §3.1: the refused routing rules are missing")
	}
	para := text[i:]
	para = para[:strings.Index(para, "\n\n")]
	refused := regexp.MustCompile("`(\\{[^`]*\\})`").FindAllStringSubmatch(para, -1)
	if len(refused) < 5 {
		t.Fatalf("only %d refused routing rules", len(refused))
	}
	for _, r := range refused {
		e := vectorExtensions(t, text)[1]
		e.Versions = e.Versions[:1]
		e.Versions[0].RoutingRules = json.RawMessage(r[1])
		err := e.Validate()
		var ve *cache.ValidationError
		if !errors.As(err, &ve) || ve.Name != rules.RuleRollout || !strings.Contains(ve.Field, "routing_rules") {
			t.Errorf("routing_rules %s: Validate says %v, want a refusal of routing_rules by rule %s", r[1], err, rules.RuleRollout)
		}
	}
}
