package devstack

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// OpenPostgres starts a cluster that lives in dir and survives Shutdown: the first call
// runs initdb, later calls reuse the data. `syncer dev` uses it.
//
// A cluster whose owner was killed (SIGKILL: no cleanup ran) is started again: its
// postmaster died with the owner (Pdeathsig), but it may linger as a zombie that init has
// not reaped yet, which a new postmaster takes for a live one ("lock file postmaster.pid
// already exists"), and backends may not have noticed yet that it is gone, holding the
// shared memory. OpenPostgres kills what is left of the dead cluster and removes the
// stale pid file; recovery from the WAL does the rest. A postmaster of this cluster still
// owned by a live process (another `syncer dev` on the same directory) is an error.
func OpenPostgres(dir string, port int, opts PGOptions) (*Postgres, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(abs, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", abs, err)
	}
	p, err := NewPostgres(abs, opts)
	if err != nil {
		return nil, err
	}
	p.Port = port
	if _, err := os.Stat(filepath.Join(p.DataDir(), "PG_VERSION")); os.IsNotExist(err) {
		if err := p.Init(); err != nil {
			return nil, err
		}
	}
	if _, err := ClearStale(p.DataDir()); err != nil {
		return nil, err
	}
	if err := p.Start(); err != nil {
		return nil, err
	}
	return p, nil
}

// Stale is what ClearStale found of a cluster that was not shut down.
type Stale struct {
	PidFile bool  // a postmaster.pid (and socket locks) whose postmaster is gone or a zombie was removed
	Killed  []int // processes of the dead cluster that were still running
}

// ClearStale makes a data directory startable after its postmaster died without a
// shutdown: it kills the processes still running in it (orphaned backends, an orphaned
// postmaster), waits until they are gone, and removes postmaster.pid and the socket lock
// files. It refuses when a
// postmaster runs there whose parent is alive (the cluster is in use).
func ClearStale(dataDir string) (Stale, error) {
	var st Stale
	pidFile := filepath.Join(dataDir, "postmaster.pid")
	data, err := os.ReadFile(pidFile)
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return st, err
	}
	pm, _ := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(data), "\n", 2)[0]))
	if pm > 0 {
		if state, ppid, ok := procStat(pm); ok && state != 'Z' && sameDir(pm, dataDir) && ppid > 1 {
			if _, pstate, alive := procStat(ppid); alive && pstate != 'Z' {
				return st, fmt.Errorf("PostgreSQL (pid %d, started by pid %d) already runs in %s: stop that process first", pm, ppid, dataDir)
			}
		}
	}
	// Whatever still runs in the data directory belongs to the dead cluster.
	for _, pid := range ProcessesIn(dataDir) {
		if syscall.Kill(pid, syscall.SIGKILL) == nil {
			st.Killed = append(st.Killed, pid)
		}
	}
	// Polling /proc: there is nothing to wait on for a process that is not our child.
	deadline := time.After(10 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for len(ProcessesIn(dataDir)) > 0 {
		select {
		case <-tick.C:
		case <-deadline:
			return st, fmt.Errorf("processes of the previous PostgreSQL in %s did not exit within 10s: %v", dataDir, ProcessesIn(dataDir))
		}
	}
	// The socket lock files carry the dead postmaster's pid too (the sockets live in the
	// data directory); nothing runs there any more, so every one of them is stale.
	locks, _ := filepath.Glob(filepath.Join(dataDir, ".s.PGSQL.*.lock"))
	for _, f := range append(locks, pidFile) {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			return st, fmt.Errorf("remove the stale %s: %w", f, err)
		}
	}
	st.PidFile = true
	return st, nil
}

// procStat reads a process's state letter and parent pid from /proc (ok false: no such
// process).
func procStat(pid int) (state byte, ppid int, ok bool) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, false
	}
	// pid (comm) state ppid ...; comm may hold spaces and parentheses.
	i := strings.LastIndexByte(string(data), ')')
	if i < 0 {
		return 0, 0, false
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 2 {
		return 0, 0, false
	}
	ppid, _ = strconv.Atoi(f[1])
	return f[0][0], ppid, true
}

// sameDir reports whether pid's working directory is dir (a postmaster and its children
// work in their data directory).
func sameDir(pid int, dir string) bool {
	cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
	if err != nil {
		return false
	}
	a, errA := os.Stat(cwd)
	b, errB := os.Stat(dir)
	return errA == nil && errB == nil && os.SameFile(a, b)
}

// ProcessesIn lists the live (not zombie) processes working in dir, this one excepted.
func ProcessesIn(dir string) []int {
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if state, _, ok := procStat(pid); ok && state != 'Z' && sameDir(pid, dir) {
			out = append(out, pid)
		}
	}
	return out
}
