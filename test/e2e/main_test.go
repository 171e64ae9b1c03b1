package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/beamline/registry-syncer/test/harness"
)

// syncerBin is the syncer binary built once by TestMain.
var syncerBin string

// cluster identifies the package's PostgreSQL cluster, recorded by the first test that
// uses it, so that TestMain can check that none of its processes outlives the run.
var cluster struct {
	once sync.Once
	dir  string
	pid  int // the postmaster
}

func TestMain(m *testing.M) { os.Exit(testMain(m)) }

func testMain(m *testing.M) int {
	root, err := moduleRoot()
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		return 1
	}
	dir, err := os.MkdirTemp("", "registry-syncer-e2e-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		return 1
	}
	defer os.RemoveAll(dir)
	syncerBin = filepath.Join(dir, "syncer")
	build := exec.Command("go", "build", "-o", syncerBin, "./cmd/syncer")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: go build ./cmd/syncer: %v\n%s", err, out)
		return 1
	}

	code := harness.MainPostgres(m, harness.PGOptions{})

	// Checked before the binary is removed: /proc/<pid>/exe still names it.
	if leaks := leakedProcesses(); len(leaks) > 0 {
		fmt.Fprintln(os.Stderr, "e2e: FAIL: processes left running after the tests:")
		for _, l := range leaks {
			fmt.Fprintf(os.Stderr, "  pid %d: %s\n", l.pid, l.what)
			_ = syscall.Kill(l.pid, syscall.SIGKILL)
		}
		code = 1
	} else if os.Getenv("E2E_VERBOSE") != "" {
		fmt.Fprintf(os.Stderr, "e2e: no process left running (syncer binary %s, postmaster %d, cluster %s)\n", syncerBin, cluster.pid, cluster.dir)
	}
	return code
}

// moduleRoot walks up from the working directory (the package directory under go test)
// to the directory of go.mod.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if data, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil {
			if bytes.Contains(data, []byte("module github.com/beamline/registry-syncer")) {
				return dir, nil
			}
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.mod of github.com/beamline/registry-syncer not found above the working directory")
		}
		dir = parent
	}
}

// recordCluster remembers the package's PostgreSQL cluster (directory and postmaster).
func recordCluster(pg *harness.Postgres) {
	cluster.once.Do(func() {
		cluster.dir = pg.Dir
		data, err := os.ReadFile(filepath.Join(pg.Dir, "data", "postmaster.pid"))
		if err == nil {
			cluster.pid, _ = strconv.Atoi(strings.TrimSpace(strings.SplitN(string(data), "\n", 2)[0]))
		}
	})
}

type leak struct {
	pid  int
	what string
}

// leakedProcesses scans /proc for what the package started and must have ended: any
// process running the built syncer binary, the cluster's postmaster and its backends,
// and any child of the test binary still alive (or unreaped).
func leakedProcesses() []leak {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return []leak{{0, "cannot read /proc: " + err.Error()}}
	}
	var out []leak
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue // gone meanwhile
		}
		// pid (comm) state ppid ...: comm may hold spaces and parentheses.
		s := string(stat)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(fields) < 2 {
			continue
		}
		state := fields[0]
		ppid, _ := strconv.Atoi(fields[1])
		exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		exe = strings.TrimSuffix(exe, " (deleted)")
		raw, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		cmdline := strings.TrimSpace(strings.ReplaceAll(string(raw), "\x00", " "))
		switch {
		case syncerBin != "" && exe == syncerBin:
			out = append(out, leak{pid, "syncer: " + cmdline})
		case cluster.pid != 0 && (pid == cluster.pid || ppid == cluster.pid):
			out = append(out, leak{pid, "postgres: " + cmdline})
		case cluster.dir != "" && strings.Contains(cmdline, cluster.dir):
			out = append(out, leak{pid, "postgres: " + cmdline})
		case ppid == os.Getpid():
			out = append(out, leak{pid, fmt.Sprintf("child of the test binary (state %s): %s", state, cmdline)})
		}
	}
	return out
}
