package deploy

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

const unitFile = "deploy/systemd/registry-syncer.service"

// parseUnit returns the unit's settings by section and key, every value of a key in order.
func parseUnit(t *testing.T, src string) map[string]map[string][]string {
	t.Helper()
	out := map[string]map[string][]string{}
	section := ""
	sc := bufio.NewScanner(strings.NewReader(src))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = strings.Trim(line, "[]")
			out[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s:%d: not a setting: %q", unitFile, n, line)
			}
			out[section][k] = append(out[section][k], v)
		}
	}
	return out
}

func TestSystemdUnitSettings(t *testing.T) {
	u := parseUnit(t, readFile(t, unitFile))
	svc := u["Service"]
	last := func(k string) string {
		if v := svc[k]; len(v) > 0 {
			return v[len(v)-1]
		}
		return ""
	}
	want := map[string]string{
		"ExecStart":               "/usr/local/bin/syncer run",
		"EnvironmentFile":         "/etc/registry-syncer/env",
		"Restart":                 "always",
		"NoNewPrivileges":         "yes",
		"ProtectSystem":           "strict",
		"ProtectHome":             "yes",
		"PrivateTmp":              "yes",
		"PrivateDevices":          "yes",
		"CapabilityBoundingSet":   "",
		"RestrictSUIDSGID":        "yes",
		"MemoryDenyWriteExecute":  "yes",
		"SystemCallArchitectures": "native",
	}
	for k, v := range want {
		if _, ok := svc[k]; !ok || last(k) != v {
			t.Errorf("[Service] %s=%q, want %q", k, last(k), v)
		}
	}
	if last("DynamicUser") != "yes" && (last("User") == "" || last("User") == "root" || last("User") == "0") {
		t.Error("[Service]: set DynamicUser=yes or a dedicated User=")
	}
	if s := last("KillSignal"); s != "" && s != "SIGTERM" {
		t.Errorf("KillSignal=%s: the syncer releases its lease on SIGTERM", s)
	}
	stop, err := time.ParseDuration(last("TimeoutStopSec") + "s")
	if err != nil {
		t.Fatalf("TimeoutStopSec=%q: want seconds", last("TimeoutStopSec"))
	}
	if ttl := leaderTTL(t, nil); stop <= ttl || stop < 20*time.Second {
		t.Errorf("TimeoutStopSec %s: want above LEADER_TTL (%s) and at least the shutdown's 20 s (NATS drain 15 s, HTTP 5 s)", stop, ttl)
	}
	for _, e := range svc["Environment"] {
		k, _, _ := strings.Cut(strings.Trim(e, `"`), "=")
		checkVariable(t, unitFile+" Environment=", k)
		if secretVariable(t, k) {
			t.Errorf("%s: %s is a secret: put it in /etc/registry-syncer/env, not in the unit", unitFile, k)
		}
	}
	if v := u["Unit"]["StartLimitIntervalSec"]; len(v) == 0 || v[0] != "0" {
		t.Error("[Unit] StartLimitIntervalSec=0: Restart=always must not give up on a crash loop")
	}
}

// TestSystemdAnalyze runs systemd-analyze verify and security on the unit in a root
// directory laid out as on a host: the unit in /etc/systemd/system, the syncer in
// /usr/local/bin, systemd's own units beside them.
func TestSystemdAnalyze(t *testing.T) {
	sa := lookTool(t, "systemd-analyze", "apt-get install -y systemd")
	dir := t.TempDir()
	unitsSrc := "/usr/lib/systemd/system"
	if _, err := os.Stat(filepath.Join(unitsSrc, "sysinit.target")); err != nil {
		unitsSrc = "/lib/systemd/system"
	}
	mustRun(t, "cp", "-a", unitsSrc, filepath.Join(mkdir(t, dir, "usr/lib/systemd"), "system"))
	mustRun(t, "cp", staticBinary(t), filepath.Join(mkdir(t, dir, "usr/local/bin"), "syncer"))
	mustRun(t, "cp", filepath.Join(root(t), unitFile), mkdir(t, dir, "etc/systemd/system"))

	// verify exits 0 on settings it ignores (an unknown key, a value it cannot parse):
	// anything it prints is a failure.
	out, err := exec.Command(sa, "verify", "--root="+dir, "registry-syncer.service").CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}

	out, err = exec.Command(sa, "security", "--offline=true", "--root="+dir, "registry-syncer.service").CombinedOutput()
	m := regexp.MustCompile(`Overall exposure level for registry-syncer.service: ([0-9.]+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("systemd-analyze security: %v\n%s", err, out)
	}
	exposure, _ := strconv.ParseFloat(string(m[1]), 64)
	t.Logf("systemd-analyze security: exposure %.1f (0 best, 10 worst)", exposure)
	if exposure > 1.5 {
		t.Errorf("systemd-analyze security: exposure %.1f, want at most 1.5:\n%s", exposure, out)
	}
}

func mkdir(t *testing.T, dir, rel string) string {
	t.Helper()
	p := filepath.Join(dir, rel)
	if err := os.MkdirAll(p, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func mustRun(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// TestSystemdEnvExample: the example env file sets only the syncer's variables and the
// syncer accepts it with the unit's Environment= defaults (credential files replaced by
// temporary ones).
func TestSystemdEnvExample(t *testing.T) {
	env := map[string]string{}
	for _, e := range parseUnit(t, readFile(t, unitFile))["Service"]["Environment"] {
		k, v, _ := strings.Cut(strings.Trim(e, `"`), "=")
		env[k] = v
	}
	dir := t.TempDir()
	sc := bufio.NewScanner(strings.NewReader(readFile(t, "deploy/systemd/env.example")))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("env.example:%d: not VARIABLE=value: %q", n, line)
		}
		checkVariable(t, "deploy/systemd/env.example", k)
		if cred, ok := strings.CutPrefix(v, "/run/credentials/registry-syncer.service/"); ok {
			v = filepath.Join(dir, cred)
			if err := os.WriteFile(v, secretFileContent(t, cred, "placeholder\n"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		env[k] = v // EnvironmentFile= wins over Environment=
	}
	checkConfigAccepted(t, "deploy/systemd/env.example with the unit's Environment=", env)
}
