package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/beamline/registry-syncer/devstack"
	"github.com/beamline/registry-syncer/syncer"
)

var built struct {
	once sync.Once
	bin  string
	err  error
}

// syncerBinary builds bin/syncer once per test run (into a directory removed by the
// harness sweep of the OS temp directory when the run is killed).
func syncerBinary(t *testing.T) string {
	t.Helper()
	built.once.Do(func() {
		dir, err := os.MkdirTemp("", "syncer-bin-")
		if err != nil {
			built.err = err
			return
		}
		built.bin = filepath.Join(dir, "syncer")
		if out, err := exec.Command("go", "build", "-o", built.bin, ".").CombinedOutput(); err != nil {
			built.err = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if built.err != nil {
		t.Fatal(built.err)
	}
	return built.bin
}

// devProc is one `syncer dev` child process.
type devProc struct {
	cmd    *exec.Cmd
	stdout lockedBuffer
	exited chan error
}

func startDev(t *testing.T, bin, dir string, pgPort, natsPort, httpPort int) *devProc {
	t.Helper()
	d := &devProc{exited: make(chan error, 1)}
	d.cmd = exec.Command(bin, "dev", "--dir", dir, "--pg-port", strconv.Itoa(pgPort), "--nats-port", strconv.Itoa(natsPort),
		"--http", fmt.Sprintf("127.0.0.1:%d", httpPort))
	d.cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"), "PG_BIN=" + os.Getenv("PG_BIN")}
	d.cmd.Stdout = &d.stdout
	stderr, err := d.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logged := make(chan struct{})
	go func() {
		defer close(logged)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			t.Log("dev: " + sc.Text())
		}
	}()
	go func() {
		<-logged
		d.exited <- d.cmd.Wait()
	}()
	t.Cleanup(func() {
		_ = d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.exited:
		case <-time.After(30 * time.Second):
			_ = d.cmd.Process.Kill()
		}
		t.Logf("dev stdout:\n%s", d.stdout.String())
	})
	return d
}

// exports parses the export block dev printed: export K='V' lines.
func (d *devProc) exports() map[string]string {
	out := map[string]string{}
	for _, l := range d.stdout.lines() {
		rest, ok := strings.CutPrefix(l, "export ")
		if !ok {
			continue
		}
		k, v, _ := strings.Cut(rest, "=")
		out[k] = strings.ReplaceAll(strings.TrimSuffix(strings.TrimPrefix(v, "'"), "'"), `'\''`, "'")
	}
	return out
}

// waitReady waits for the export block and for /readyz to say ready.
func (d *devProc) waitReady(t *testing.T, httpPort int) {
	t.Helper()
	eventually(t, 90*time.Second, "syncer dev's export block", func() bool {
		select {
		case err := <-d.exited:
			t.Fatalf("syncer dev exited: %v\nstdout:\n%s", err, d.stdout.String())
		default:
		}
		return len(d.exports()) > 0 && strings.Contains(d.stdout.String(), "Ctrl-C stops everything")
	})
	base := fmt.Sprintf("http://127.0.0.1:%d", httpPort)
	eventually(t, 60*time.Second, "dev's HTTP server up", func() bool {
		resp, err := http.Get(base + "/healthz")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil
	})
	// Ready as the leader: after a SIGKILL the lease of the killed one runs out first
	// (LEADER_TTL), and a standby is ready too.
	waitStatus(t, base, "the ready leader", func(code int, st syncer.Status) bool {
		return code == http.StatusOK && st.Ready && st.Leader
	})
}

// runWith runs the built binary with exactly vars as its environment (plus PATH).
func runWith(t *testing.T, bin string, vars map[string]string, args ...string) result {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	for k, v := range vars {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	r := result{code, stdout.String(), stderr.String()}
	t.Logf("syncer %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	return r
}

func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var out []int
	for len(out) < n {
		p, err := devstack.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}

// TestDevExportsAndSIGKILL runs the real binary's `syncer dev`: the export block it
// prints makes the other commands talk to the dev stack (status, watch, fixtures verify,
// history, with nothing else in their environment); after a SIGKILL of dev (its
// postmaster dies with it, possibly left a zombie, a stale postmaster.pid behind) it
// starts again on the same directory, and nothing of the killed cluster keeps running.
func TestDevExportsAndSIGKILL(t *testing.T) {
	t.Parallel()
	bin := syncerBinary(t)
	tmp := t.TempDir()
	// The server runs as the postgres user when the test runs as root: it must reach DIR.
	for _, d := range []string{filepath.Dir(tmp), tmp} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	dir := filepath.Join(tmp, "dev")
	ports := freePorts(t, 3)
	pgPort, natsPort, httpPort := ports[0], ports[1], ports[2]

	d := startDev(t, bin, dir, pgPort, natsPort, httpPort)
	d.waitReady(t, httpPort)
	vars := d.exports()
	for _, k := range []string{"EXTENSION_REGISTRY_DATABASE_URL", "EXTENSION_REGISTRY_NATS_URL", "EXTENSION_REGISTRY_HTTP_ADDR",
		"EXTENSION_REGISTRY_ADMIN_TOKEN", "EXTENSION_REGISTRY_SUBJECT_PREFIX"} {
		if vars[k] == "" {
			t.Errorf("the export block lacks %s", k)
		}
	}
	if !strings.Contains(vars["EXTENSION_REGISTRY_DATABASE_URL"], ":"+strconv.Itoa(pgPort)+"/") || !strings.HasSuffix(vars["EXTENSION_REGISTRY_NATS_URL"], ":"+strconv.Itoa(natsPort)) {
		t.Fatalf("the exports do not point at the dev stack's ports: %v", vars)
	}
	checkCommands := func() {
		t.Helper()
		if r := runWith(t, bin, vars, "status", "--json"); r.code != 0 {
			t.Errorf("status: exit %d", r.code)
		} else {
			var st struct {
				PublishedRevision int64 `json:"published_revision"`
			}
			if err := json.Unmarshal([]byte(r.stdout), &st); err != nil || st.PublishedRevision < 1 {
				t.Errorf("status --json: %v, published revision %d", err, st.PublishedRevision)
			}
		}
		if r := runWith(t, bin, vars, "watch", "--dump", "--once"); r.code != 0 || !strings.Contains(r.stdout, "pii_guard") {
			t.Errorf("watch --dump --once: exit %d, want the snapshot with the default fixtures", r.code)
		}
		if r := runWith(t, bin, vars, "fixtures", "verify"); r.code != 0 {
			t.Errorf("fixtures verify: exit %d, want the default fixtures to match", r.code)
		}
		if r := runWith(t, bin, vars, "history", "--limit", "3"); r.code != 0 || !strings.Contains(r.stdout, "syncer dev") {
			t.Errorf("history: exit %d, want the import by syncer dev", r.code)
		}
	}
	checkCommands()

	// SIGKILL: no cleanup runs.
	dataDir := filepath.Join(dir, "postgres", "data")
	old := devstack.ProcessesIn(dataDir)
	if len(old) == 0 {
		t.Fatal("no PostgreSQL process works in the dev data directory")
	}
	if err := d.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.exited:
	case <-time.After(30 * time.Second):
		t.Fatal("dev did not die of SIGKILL")
	}
	if _, err := os.Stat(filepath.Join(dataDir, "postmaster.pid")); err != nil {
		t.Fatalf("postmaster.pid after SIGKILL: %v (the test needs the stale file)", err)
	}
	// The postmaster dies with dev (Pdeathsig), within seconds.
	pm := old[0]
	for _, pid := range old {
		if pid < pm {
			pm = pid
		}
	}
	eventually(t, 10*time.Second, "the postmaster gone after dev's SIGKILL", func() bool {
		return !slices.Contains(devstack.ProcessesIn(dataDir), pm)
	})

	d2 := startDev(t, bin, dir, pgPort, natsPort, httpPort)
	d2.waitReady(t, httpPort)
	if !strings.Contains(d2.stdout.String(), "the previous PostgreSQL was not shut down") {
		t.Errorf("the restart did not say it recovered from an unclean stop")
	}
	for _, pid := range devstack.ProcessesIn(dataDir) {
		if slices.Contains(old, pid) {
			t.Errorf("process %d of the killed cluster still runs", pid)
		}
	}
	if got := d2.exports(); !maps.Equal(got, vars) {
		t.Errorf("exports after the restart %v, want %v", got, vars)
	}
	checkCommands()

	// A clean stop after the recovery: exit 0, no pid file left.
	if err := d2.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-d2.exited:
		if err != nil {
			t.Errorf("dev after SIGTERM: %v, want exit 0", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("dev did not stop within 60s of SIGTERM")
	}
	if _, err := os.Stat(filepath.Join(dataDir, "postmaster.pid")); !os.IsNotExist(err) {
		t.Errorf("postmaster.pid after a clean stop: %v", err)
	}
}
