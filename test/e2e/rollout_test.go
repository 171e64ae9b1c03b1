package e2e

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/beamline/registry-syncer/client"
	"github.com/beamline/registry-syncer/rules"
)

// rolloutKeys are the 10,000 tenant ids whose share is measured at each step, plus the
// named tenants of the allow-lists.
var rolloutKeys = func() []string {
	keys := []string{"staging", "t1", "t2", "t3"}
	for i := range 10000 {
		keys = append(keys, fmt.Sprintf("tenant-%d", i))
	}
	return keys
}()

// rolloutStep is one step of the router project's runbook: the change, as SQL and as a
// `syncer ext` command, and which version each tenant must get afterwards ("" for
// extension_not_found).
type rolloutStep struct {
	name  string
	sql   []string
	cli   []string
	want  func(tenant string) string
	share float64 // the expected share of the 10,000 tenant-N keys that get any version
}

func bucket(version, key string) int { return rules.PercentBucket("canary", version, key) }

func inList(key string, list ...string) bool {
	for _, l := range list {
		if key == l {
			return true
		}
	}
	return false
}

var rolloutSteps = []rolloutStep{
	{"create disabled",
		[]string{`INSERT INTO extensions (id, type, subject, timeout_ms, enabled) VALUES ('canary', 'pre', 'beamline.ext.pre.canary.v1', 100, false)`},
		[]string{"ext", "create", "canary", "--type", "pre", "--subject", "beamline.ext.pre.canary.v1", "--timeout-ms", "100", "--disabled"},
		func(string) string { return "" }, 0},
	{"staging tenant only",
		[]string{`INSERT INTO extension_versions (id, version, subject, timeout_ms, routing_rules) VALUES ('canary', 'v1', 'beamline.ext.pre.canary.v1', 100, '{"tenant_id": ["staging"]}')`},
		[]string{"ext", "rollout", "canary", "--tenant", "staging"},
		func(k string) string {
			if k == "staging" {
				return "v1"
			}
			return ""
		}, 0},
	{"more tenants",
		[]string{`UPDATE extension_versions SET routing_rules = '{"tenant_id": ["staging", "t1", "t2"]}' WHERE id = 'canary' AND version = 'v1'`},
		[]string{"ext", "rollout", "canary", "--tenant", "staging,t1,t2"},
		func(k string) string {
			if inList(k, "staging", "t1", "t2") {
				return "v1"
			}
			return ""
		}, 0},
	{"25 percent",
		[]string{`UPDATE extension_versions SET routing_rules = routing_rules || '{"$percent": "25", "$percent_key": "tenant_id"}' WHERE id = 'canary' AND version = 'v1'`},
		[]string{"ext", "rollout", "canary", "--percent", "25", "--key", "tenant_id"},
		func(k string) string {
			if inList(k, "staging", "t1", "t2") || bucket("v1", k) < 2500 {
				return "v1"
			}
			return ""
		}, 0.25},
	{"global",
		[]string{`UPDATE extensions SET enabled = true WHERE id = 'canary'`},
		[]string{"ext", "enable", "canary"},
		func(string) string { return "v1" }, 1},
	{"v2 canary: t1 and 10 percent",
		[]string{`INSERT INTO extension_versions (id, version, subject, timeout_ms, routing_rules) VALUES ('canary', 'v2', 'beamline.ext.pre.canary.v2', 100, '{"tenant_id": ["t1"], "$percent": "10", "$percent_key": "tenant_id"}')`},
		[]string{"ext", "rollout", "canary", "--version", "v2", "--tenant", "t1", "--percent", "10", "--key", "tenant_id"},
		func(k string) string {
			if k == "t1" || bucket("v2", k) < 1000 {
				return "v2"
			}
			return "v1"
		}, 1},
	{"disable version v2",
		[]string{`UPDATE extension_versions SET enabled = false WHERE id = 'canary' AND version = 'v2'`},
		[]string{"ext", "version", "disable", "canary", "v2"},
		func(string) string { return "v1" }, 1},
	{"kill switch",
		[]string{`UPDATE extensions SET metadata = metadata || '{"kill_switch": true}' WHERE id = 'canary'`},
		[]string{"ext", "kill", "canary"},
		func(string) string { return "" }, 0},
}

// TestRolloutWorkflow walks the runbook — create disabled, one tenant, more tenants, 25 %,
// global, a v2 canary, disable v2, kill — through SQL and through `syncer ext`, with a
// real `syncer run` publishing to NATS and three routers (client.Client) following. After
// each step every router must serve the committed revision and give every one of 10,004
// tenants exactly the version the step says, and the share of keys must be the
// percentage within a tolerance.
//
// The two modes must end every step with the same content (checksum): the CLI writes
// exactly what the runbook's SQL writes. In the CLI mode `syncer resolve` shows why a
// tenant got the version (its percentage bucket) or that it did not.
func TestRolloutWorkflow(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	sums := map[string][]string{} // mode -> checksum after each step
	t.Cleanup(func() {
		if t.Failed() {
			return
		}
		for i := range rolloutSteps {
			if sums["sql"][i] != sums["cli"][i] {
				t.Errorf("%s: the SQL and the CLI left different content: checksum %.12s vs %.12s", rolloutSteps[i].name, sums["sql"][i], sums["cli"][i])
			}
		}
	})
	for _, mode := range []string{"sql", "cli"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			b := setup(t, "e2e.rollout."+mode)
			s := b.startSyncer(t)
			s.waitReady(t, 30*time.Second)
			f := b.startFleet(t, 3, false)
			for _, step := range rolloutSteps {
				at := time.Now()
				if mode == "sql" {
					stmts := append([]string{`SET LOCAL registry.changed_by = 'runbook'`}, step.sql...)
					_, at = b.commit(t, stmts...)
				} else {
					args := append(append([]string{}, step.cli...), "--by", "runbook")
					res := runCLI(t, b.vars(), args...)
					if res.code != 0 || !strings.Contains(res.stdout, "committed as revision") {
						t.Fatalf("%s: syncer %s: exit %d\n%s%s", step.name, strings.Join(args, " "), res.code, res.stdout, res.stderr)
					}
				}
				want := b.db(t)
				conv := f.converge(t, want, at, convergeWithin)
				mu.Lock()
				sums[mode] = append(sums[mode], want.Checksum())
				mu.Unlock()
				shares := checkRollout(t, step, f)
				if mode == "cli" && step.name == "25 percent" {
					checkResolveCLI(t, b)
				}
				t.Logf("%s %-28s revision %d: %s; converged %s", mode, step.name, want.Revision(), shares, conv.String())
			}
		})
	}
}

// checkRollout resolves every key at every router and compares with the step.
func checkRollout(t *testing.T, step rolloutStep, f *fleet) string {
	t.Helper()
	var counts []map[string]int
	for _, r := range f.routers {
		count := map[string]int{}
		wrong := 0
		for _, k := range rolloutKeys {
			got := ""
			plan, err := r.c.Resolve("canary", map[string]string{"tenant_id": k}, "")
			var ie *client.InvokeError
			switch {
			case err == nil:
				got = plan.Version
			case errors.As(err, &ie) && ie.Code == client.CodeExtensionNotFound:
			default:
				t.Fatalf("%s: %s: tenant %s: %v", step.name, r.name, k, err)
			}
			if want := step.want(k); got != want {
				if wrong++; wrong <= 5 {
					t.Errorf("%s: %s gives tenant %s %q, want %q", step.name, r.name, k, got, want)
				}
			}
			if strings.HasPrefix(k, "tenant-") {
				count[got]++
			}
		}
		if wrong > 5 {
			t.Errorf("%s: %s: %d tenants got the wrong version", step.name, r.name, wrong)
		}
		served := 10000 - count[""]
		if d := float64(served)/10000 - step.share; d > 0.02 || d < -0.02 {
			t.Errorf("%s: %s serves %d of 10000 keys, want %.0f%% ± 2%%", step.name, r.name, served, step.share*100)
		}
		counts = append(counts, count)
	}
	for i := 1; i < len(counts); i++ {
		if fmt.Sprint(counts[i]) != fmt.Sprint(counts[0]) {
			t.Errorf("%s: routers disagree: %v vs %v", step.name, counts[0], counts[i])
		}
	}
	return fmt.Sprintf("of 10000 keys: v1 %d, v2 %d, not found %d", counts[0]["v1"], counts[0]["v2"], counts[0][""])
}

// checkResolveCLI: `syncer resolve` names the bucket of a tenant in the 25 % share and
// refuses one outside it.
func checkResolveCLI(t *testing.T, b *testBundle) {
	t.Helper()
	in, out := "", ""
	for _, k := range rolloutKeys[4:] {
		switch {
		case in == "" && bucket("v1", k) < 2500:
			in = k
		case out == "" && bucket("v1", k) >= 2500:
			out = k
		}
	}
	res := runCLI(t, b.vars(), "resolve", "canary", "--attr", "tenant_id="+in)
	if want := fmt.Sprintf("selected by $percent, bucket %d of 10000", bucket("v1", in)); res.code != 0 || !strings.Contains(res.stdout, want) {
		t.Errorf("syncer resolve canary for %s: exit %d, want %q:\n%s%s", in, res.code, want, res.stdout, res.stderr)
	}
	res = runCLI(t, b.vars(), "resolve", "canary", "--attr", "tenant_id="+out)
	if res.code != 1 || !strings.Contains(res.stderr, "extension_not_found") {
		t.Errorf("syncer resolve canary for %s (bucket %d): exit %d, want extension_not_found:\n%s%s", out, bucket("v1", out), res.code, res.stdout, res.stderr)
	}
}
