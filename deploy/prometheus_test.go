package deploy

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	dto "github.com/prometheus/client_model/go"
	"go.yaml.in/yaml/v3"

	"github.com/beamline/registry-syncer/fleet"
	"github.com/beamline/registry-syncer/syncer"
)

// family is a metric family the syncer exports: its type, label names and, for labels
// with a fixed set of values, those values.
type family struct {
	Type   dto.MetricType
	Labels map[string][]string // label name → the values seen
}

// enumLabels have a closed set of values (every one is set once the fleet view has
// run): a matcher on them must name real values.
var enumLabels = map[string]bool{"state": true, "revisions": true}

// targetLabels are added by Prometheus or the scrape configuration, not by the syncer.
var targetLabels = map[string]bool{"job": true, "instance": true, "namespace": true, "pod": true, "container": true, "service": true, "endpoint": true, "node": true}

// externalMetrics are the metrics the rules may use that the syncer does not export,
// each with who does. Nothing else outside the syncer's own metrics is allowed.
var externalMetrics = map[string]string{
	"kube_pod_status_ready": "kube-state-metrics (RegistrySyncerNotReady, Kubernetes only)",
}

var (
	productOnce sync.Once
	product     map[string]family
	productErr  error
)

// productMetrics registers what `syncer run` registers (cmd/syncer/daemon.go) on a fresh
// registry and gathers it: the Go and process collectors, the syncer's and the fleet's
// metrics (syncer.NewMetrics), and by name the three package main registers
// (registry_syncer_build_info, _nats_up, _nats_reconnects_total), after checking its
// source still defines them.
func productMetrics(t *testing.T) map[string]family {
	t.Helper()
	productOnce.Do(func() {
		for file, names := range map[string][]string{
			"cmd/syncer/natsconn.go": {"nats_up", "nats_reconnects_total"},
			"cmd/syncer/version.go":  {"build_info"},
		} {
			src := readFile(t, file)
			for _, n := range names {
				if !regexp.MustCompile(`Namespace:\s*"registry_syncer",\s*Name:\s*"` + n + `"`).MatchString(src) {
					productErr = fmt.Errorf("%s no longer defines registry_syncer_%s: update productMetrics", file, n)
					return
				}
			}
		}
		reg := prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		m := syncer.NewMetrics(reg)
		fleet.New(m.Fleet).Routers(time.Now()) // sets every state and lag bucket
		bi := prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "registry_syncer", Name: "build_info", Help: "h"}, []string{"version", "revision", "goversion"})
		bi.WithLabelValues("v", "r", "g").Set(1)
		reg.MustRegister(bi,
			prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "registry_syncer", Name: "nats_up", Help: "h"}),
			prometheus.NewCounter(prometheus.CounterOpts{Namespace: "registry_syncer", Name: "nats_reconnects_total", Help: "h"}))
		mfs, err := reg.Gather()
		if err != nil {
			productErr = err
			return
		}
		product = map[string]family{}
		for _, mf := range mfs {
			f := family{Type: mf.GetType(), Labels: map[string][]string{}}
			for _, mt := range mf.GetMetric() {
				for _, lp := range mt.GetLabel() {
					if !slices.Contains(f.Labels[lp.GetName()], lp.GetValue()) {
						f.Labels[lp.GetName()] = append(f.Labels[lp.GetName()], lp.GetValue())
					}
				}
			}
			product[mf.GetName()] = f
		}
	})
	if productErr != nil {
		t.Fatal(productErr)
	}
	return product
}

// seriesFamily maps a series name to its family: histograms and summaries are queried
// as _bucket, _sum and _count.
func seriesFamily(fams map[string]family, name string) (family, bool) {
	if f, ok := fams[name]; ok && f.Type != dto.MetricType_HISTOGRAM {
		return f, true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		base, ok := strings.CutSuffix(name, suffix)
		if !ok {
			continue
		}
		if f, ok := fams[base]; ok && (f.Type == dto.MetricType_HISTOGRAM || f.Type == dto.MetricType_SUMMARY && suffix != "_bucket") {
			if suffix == "_bucket" {
				f.Labels = cloneWith(f.Labels, "le")
			}
			return f, true
		}
	}
	return family{}, false
}

func cloneWith(m map[string][]string, label string) map[string][]string {
	out := map[string][]string{label: nil}
	for k, v := range m {
		out[k] = v
	}
	return out
}

// checkExpr returns the problems of expr: metrics the syncer does not export, labels
// they do not have, values an enumerated label never takes.
func checkExpr(fams map[string]family, expr string) (names []string, problems []string) {
	sels, err := selectors(expr)
	if err != nil {
		return nil, []string{err.Error()}
	}
	if len(sels) == 0 {
		return nil, []string{"no metric in the expression"}
	}
	for _, s := range sels {
		names = append(names, s.Name)
		f, ok := seriesFamily(fams, s.Name)
		if !ok {
			if _, ext := externalMetrics[s.Name]; !ext {
				problems = append(problems, fmt.Sprintf("%s is not a metric the syncer exports", s.Name))
			}
			continue
		}
		for _, m := range s.Matchers {
			values, has := f.Labels[m.Label]
			switch {
			case targetLabels[m.Label]:
			case !has:
				problems = append(problems, fmt.Sprintf("%s has no label %s", s.Name, m.Label))
			case enumLabels[m.Label] && (m.Op == "=" || m.Op == "=~"):
				alts := []string{m.Value}
				if m.Op == "=~" {
					alts = strings.Split(m.Value, "|")
				}
				for _, v := range alts {
					if !slices.Contains(values, v) {
						problems = append(problems, fmt.Sprintf("%s{%s}: %q is not one of its values %v", s.Name, m.Label, v, values))
					}
				}
			}
		}
	}
	return names, problems
}

// TestMetricCheckRefusesUnknownNames shows the check is not vacuous.
func TestMetricCheckRefusesUnknownNames(t *testing.T) {
	fams := productMetrics(t)
	for expr, want := range map[string]string{
		`rate(registry_syncer_publish_errorz_total[5m]) > 0`:               "registry_syncer_publish_errorz_total is not a metric",
		`registry_routers{state="stael"} > 0`:                              `"stael" is not one of its values`,
		`registry_routers_lag{revisions=~"1|>1000"} > 0`:                   `">1000" is not one of its values`,
		`registry_syncer_leader{role="leader"}`:                            "has no label role",
		`histogram_quantile(0.9, rate(registry_syncer_leader_bucket[5m]))`: "registry_syncer_leader_bucket is not a metric",
	} {
		_, problems := checkExpr(fams, expr)
		if !strings.Contains(strings.Join(problems, "; "), want) {
			t.Errorf("%s: problems %q, want one saying %q", expr, problems, want)
		}
	}
	for _, expr := range []string{
		`histogram_quantile(0.99, sum by (le) (rate(registry_syncer_commit_to_publish_seconds_bucket[5m])))`,
		`registry_routers{state=~"stale|rejecting|gone"}`, `registry_syncer_nats_up == 0`, `registry_syncer_build_info{version!=""}`,
		`rate(process_cpu_seconds_total[5m])`,
	} {
		if _, problems := checkExpr(fams, expr); len(problems) > 0 {
			t.Errorf("%s: %v", expr, problems)
		}
	}
}

type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Record      string            `yaml:"record"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

const alertsFile = "deploy/prometheus/alerts.yml"

// TestAlertRulesPromtool: promtool accepts the rules, and its unit tests of them pass.
func TestAlertRulesPromtool(t *testing.T) {
	promtool := findPromtool(t)
	out, err := exec.Command(promtool, "check", "rules", filepath.Join(root(t), alertsFile)).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check rules %s: %v\n%s", alertsFile, err, out)
	}
	t.Logf("promtool check rules: %s", strings.TrimSpace(string(out)))
	out, err = exec.Command(promtool, "test", "rules", filepath.Join(root(t), "deploy", "prometheus", "alerts_test.yml")).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool test rules deploy/prometheus/alerts_test.yml: %v\n%s", err, out)
	}
	t.Logf("promtool test rules: %s", strings.TrimSpace(string(out)))
}

func findPromtool(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("bash", filepath.Join(root(t), "scripts", "promtool.sh")).Output()
	if err != nil {
		msg := ""
		if ee, ok := err.(*exec.ExitError); ok {
			msg = string(ee.Stderr)
		}
		t.Fatalf("promtool is needed and scripts/promtool.sh could not provide it (install it: apt-get install -y prometheus, or run make deps): %v\n%s", err, msg)
	}
	return strings.TrimSpace(string(out))
}

func TestAlertRules(t *testing.T) {
	fams := productMetrics(t)
	var rf ruleFile
	if err := yaml.Unmarshal([]byte(readFile(t, alertsFile)), &rf); err != nil {
		t.Fatal(err)
	}
	sections := runbookSections(t)
	used := map[string]bool{}
	alerts := map[string]bool{}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			alerts[r.Alert] = true
			names, problems := checkExpr(fams, r.Expr)
			for _, p := range problems {
				t.Errorf("alert %s: %s", r.Alert, p)
			}
			for _, n := range names {
				used[n] = true
			}
			if !slices.Contains([]string{"critical", "warning", "info"}, r.Labels["severity"]) {
				t.Errorf("alert %s: severity %q, want critical, warning or info", r.Alert, r.Labels["severity"])
			}
			if r.Annotations["summary"] == "" {
				t.Errorf("alert %s: no summary annotation", r.Alert)
			}
			rb := r.Annotations["runbook"]
			anchor, ok := strings.CutPrefix(rb, "OPERATIONS.md#")
			switch {
			case !ok:
				t.Errorf("alert %s: runbook %q, want OPERATIONS.md#<section>", r.Alert, rb)
			case anchor != strings.ToLower(r.Alert):
				t.Errorf("alert %s: runbook anchor %q, want its own section #%s", r.Alert, anchor, strings.ToLower(r.Alert))
			case sections[anchor] == "":
				t.Errorf("alert %s: OPERATIONS.md has no section ### %s", r.Alert, r.Alert)
			default:
				for _, part := range []string{"**Means.**", "**Check.**", "**Do.**"} {
					if !strings.Contains(sections[anchor], part) {
						t.Errorf("OPERATIONS.md ### %s: no %s paragraph", r.Alert, part)
					}
				}
			}
		}
	}
	for anchor := range sections {
		found := false
		for a := range alerts {
			found = found || strings.ToLower(a) == anchor
		}
		if !found {
			t.Errorf("OPERATIONS.md section #%s is no alert's runbook", anchor)
		}
	}
	// The series promtool's unit tests feed the rules are real series too.
	var tf struct {
		Tests []struct {
			InputSeries []struct {
				Series string `yaml:"series"`
			} `yaml:"input_series"`
		} `yaml:"tests"`
	}
	if err := yaml.Unmarshal([]byte(readFile(t, "deploy/prometheus/alerts_test.yml")), &tf); err != nil {
		t.Fatal(err)
	}
	for _, tc := range tf.Tests {
		for _, in := range tc.InputSeries {
			if _, problems := checkExpr(fams, in.Series); len(problems) > 0 {
				t.Errorf("alerts_test.yml series %s: %v", in.Series, problems)
			}
		}
	}
	// What issue 11 asks the alerts to watch.
	for _, m := range []string{
		"registry_syncer_commit_to_publish_seconds_bucket", "registry_syncer_leader", "registry_routers_lag",
		"registry_routers", "registry_commit_to_last_router_seconds_bucket", "registry_syncer_publish_errors_total",
		"registry_syncer_reconcile_repairs_total", "registry_syncer_withheld_extensions",
		"registry_syncer_timeline_changes_total", "registry_syncer_nats_up", "registry_syncer_database_up",
		"kube_pod_status_ready",
	} {
		if !used[m] {
			t.Errorf("no alert uses %s", m)
		}
	}
}

// runbookSections returns OPERATIONS.md's ### sections under "## Alerts" by anchor.
func runbookSections(t *testing.T) map[string]string {
	t.Helper()
	src := readFile(t, "OPERATIONS.md")
	_, alerts, ok := strings.Cut(src, "\n## Alerts\n")
	if !ok {
		t.Fatal("OPERATIONS.md has no ## Alerts section")
	}
	out := map[string]string{}
	for _, sec := range strings.Split(alerts, "\n### ")[1:] {
		title, body, _ := strings.Cut(sec, "\n")
		out[githubAnchor(title)] = body
	}
	return out
}

// githubAnchor is the anchor GitHub gives a heading.
func githubAnchor(title string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(strings.TrimSpace(title)) {
		switch {
		case r == ' ':
			b.WriteRune('-')
		case r == '-' || r == '_' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9':
			b.WriteRune(r)
		}
	}
	return b.String()
}

func TestGrafanaDashboard(t *testing.T) {
	fams := productMetrics(t)
	var dash struct {
		Title      string            `json:"title"`
		UID        string            `json:"uid"`
		Panels     []json.RawMessage `json:"panels"`
		Templating struct {
			List []struct {
				Name       string `json:"name"`
				Definition string `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal([]byte(readFile(t, "deploy/grafana/registry-syncer.json")), &dash); err != nil {
		t.Fatal(err)
	}
	if dash.Title == "" || dash.UID == "" {
		t.Error("the dashboard needs a title and a uid")
	}
	type panel struct {
		Title   string          `json:"title"`
		Type    string          `json:"type"`
		Panels  json.RawMessage `json:"panels"`
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
	}
	used := map[string]bool{}
	exprs := 0
	var walk func(raw []json.RawMessage)
	walk = func(raw []json.RawMessage) {
		for _, r := range raw {
			var p panel
			if err := json.Unmarshal(r, &p); err != nil {
				t.Fatal(err)
			}
			if p.Type != "row" && len(p.Targets) == 0 {
				t.Errorf("panel %q has no target", p.Title)
			}
			for _, tg := range p.Targets {
				exprs++
				names, problems := checkExpr(fams, tg.Expr)
				for _, pr := range problems {
					t.Errorf("panel %q: %s", p.Title, pr)
				}
				for _, n := range names {
					used[n] = true
				}
			}
			if len(p.Panels) > 0 {
				var sub []json.RawMessage
				if err := json.Unmarshal(p.Panels, &sub); err != nil {
					t.Fatal(err)
				}
				walk(sub)
			}
		}
	}
	walk(dash.Panels)
	for _, v := range dash.Templating.List {
		if m := regexp.MustCompile(`label_values\(([a-zA-Z_:][a-zA-Z0-9_:]*)`).FindStringSubmatch(v.Definition); m != nil {
			if _, ok := seriesFamily(fams, m[1]); !ok {
				t.Errorf("variable %s: %s is not a metric the syncer exports", v.Name, m[1])
			}
		}
	}
	t.Logf("%d expressions checked", exprs)
	var missing []string
	for _, m := range []string{
		"registry_syncer_commit_to_publish_seconds_bucket", "registry_syncer_revisions_published_total",
		"registry_routers", "registry_routers_lag", "registry_commit_to_last_router_seconds_bucket",
		"registry_syncer_publish_errors_total", "registry_syncer_drift_extensions_total",
		"registry_syncer_withheld_extensions", "registry_syncer_nats_up", "registry_syncer_database_up",
		"registry_syncer_leader",
	} {
		if !used[m] {
			missing = append(missing, m)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("the dashboard shows none of %v", missing)
	}
}
