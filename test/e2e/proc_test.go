package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// logLine is one line a process (or a client logger) wrote, with when it was read.
type logLine struct {
	at   time.Time
	text string
}

// lineBuf collects lines and lets tests wait for one that matches.
type lineBuf struct {
	mu    sync.Mutex
	lines []logLine
	wake  chan struct{} // closed and replaced on every new line and at EOF
	eof   bool
	part  []byte // Write: an unterminated line
}

func newLineBuf() *lineBuf { return &lineBuf{wake: make(chan struct{})} }

func (b *lineBuf) add(text string) {
	b.mu.Lock()
	b.lines = append(b.lines, logLine{at: time.Now(), text: text})
	close(b.wake)
	b.wake = make(chan struct{})
	b.mu.Unlock()
}

func (b *lineBuf) close() {
	b.mu.Lock()
	b.eof = true
	close(b.wake)
	b.wake = make(chan struct{})
	b.mu.Unlock()
}

// Write makes a lineBuf an io.Writer (for slog handlers).
func (b *lineBuf) Write(p []byte) (int, error) {
	b.mu.Lock()
	b.part = append(b.part, p...)
	var done []string
	for {
		i := strings.IndexByte(string(b.part), '\n')
		if i < 0 {
			break
		}
		done = append(done, string(b.part[:i]))
		b.part = b.part[i+1:]
	}
	b.mu.Unlock()
	for _, l := range done {
		b.add(l)
	}
	return len(p), nil
}

// from returns the lines from index i on, a channel closed at the next change, and EOF.
func (b *lineBuf) from(i int) ([]logLine, <-chan struct{}, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if i > len(b.lines) {
		i = len(b.lines)
	}
	return append([]logLine(nil), b.lines[i:]...), b.wake, b.eof
}

func (b *lineBuf) len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.lines)
}

// count is the number of lines that match.
func (b *lineBuf) count(match func(string) bool) int {
	lines, _, _ := b.from(0)
	n := 0
	for _, l := range lines {
		if match(l.text) {
			n++
		}
	}
	return n
}

// waitFor waits until a line at index ≥ from matches and returns it with its index.
func (b *lineBuf) waitFor(t *testing.T, from int, within time.Duration, what string, match func(string) bool) (int, logLine) {
	t.Helper()
	timer := time.NewTimer(within)
	defer timer.Stop()
	for {
		lines, wake, eof := b.from(from)
		for i, l := range lines {
			if match(l.text) {
				return from + i, l
			}
		}
		from += len(lines)
		if eof {
			t.Fatalf("waiting for %s: the output ended", what)
		}
		select {
		case <-wake:
		case <-timer.C:
			t.Fatalf("waiting for %s: nothing within %s", what, within)
		}
	}
}

// tail is the last n lines, for failure reports.
func (b *lineBuf) tail(n int) string {
	lines, _, _ := b.from(0)
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	var sb strings.Builder
	for _, l := range lines {
		sb.WriteString(l.text)
		sb.WriteByte('\n')
	}
	return sb.String()
}

// jsonLog decodes a JSON log line (EXTENSION_REGISTRY_LOG_FORMAT=json); nil if it is not one.
func jsonLog(line string) map[string]any {
	var m map[string]any
	if json.Unmarshal([]byte(line), &m) != nil {
		return nil
	}
	return m
}

// logMsg matches a JSON log line by its message.
func logMsg(msg string) func(string) bool {
	return func(line string) bool {
		m := jsonLog(line)
		return m != nil && m["msg"] == msg
	}
}

// proc is one process running the built syncer binary.
type proc struct {
	name   string
	cmd    *exec.Cmd
	stdout *lineBuf
	stderr *lineBuf
	done   chan struct{} // closed once the process was reaped
	err    error         // Wait's result, set before done is closed
	killed atomic.Bool
}

// processEnv is the test binary's environment without any EXTENSION_REGISTRY_ variable,
// plus vars.
func processEnv(vars map[string]string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "EXTENSION_REGISTRY_") {
			env = append(env, kv)
		}
	}
	for k, v := range vars {
		env = append(env, k+"="+v)
	}
	return env
}

// startProc starts the syncer binary with args. It dies with the test binary
// (Pdeathsig), runs in a process group of its own, and is stopped with SIGTERM when the
// test ends (it must then exit 0); its output is printed if the test failed.
func startProc(t *testing.T, name string, vars map[string]string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(syncerBin, args...)
	cmd.Env = processEnv(vars)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	outR, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	errR, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p := &proc{name: name, cmd: cmd, stdout: newLineBuf(), stderr: newLineBuf(), done: make(chan struct{})}
	var readers sync.WaitGroup
	for _, pipe := range []struct {
		r   io.Reader
		buf *lineBuf
	}{{outR, p.stdout}, {errR, p.stderr}} {
		readers.Go(func() {
			sc := bufio.NewScanner(pipe.r)
			sc.Buffer(make([]byte, 64<<10), 16<<20)
			for sc.Scan() {
				pipe.buf.add(sc.Text())
			}
			pipe.buf.close()
		})
	}
	go func() {
		readers.Wait() // Wait closes the pipes: read them to the end first
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop(t)
		if t.Failed() {
			t.Logf("--- %s (pid %d) stderr, last lines:\n%s", p.name, p.pid(), p.stderr.tail(60))
			if p.stdout.len() > 0 {
				t.Logf("--- %s stdout, last lines:\n%s", p.name, p.stdout.tail(20))
			}
		}
	})
	return p
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// exited reports whether the process has ended.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill sends SIGKILL to the process group and waits until the process is reaped.
func (p *proc) kill(t *testing.T) {
	t.Helper()
	p.killed.Store(true)
	if err := syscall.Kill(-p.pid(), syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("kill %s: %v", p.name, err)
	}
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s still running 10s after SIGKILL", p.name)
	}
}

// stop ends the process with SIGTERM (a graceful shutdown that must exit 0) unless it
// already ended; SIGKILL after 30s.
func (p *proc) stop(t *testing.T) {
	t.Helper()
	if p.exited() {
		if !p.killed.Load() && p.err != nil {
			t.Errorf("%s exited on its own: %v", p.name, p.err)
		}
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		if p.err != nil && !p.killed.Load() {
			t.Errorf("%s: SIGTERM: %v (want exit status 0)", p.name, p.err)
		}
	case <-time.After(30 * time.Second):
		t.Errorf("%s did not exit within 30s of SIGTERM; killing it", p.name)
		p.killed.Store(true)
		_ = syscall.Kill(-p.pid(), syscall.SIGKILL)
		<-p.done
	}
}

// syncerProc is a `syncer run` process.
type syncerProc struct {
	*proc
	addr string // HTTP address
}

// syncerStatus is the body of /readyz.
type syncerStatus struct {
	Role     string `json:"role"`
	Leader   bool   `json:"leader"`
	Revision int64  `json:"revision"`
	Ready    bool   `json:"ready"`
	Reason   string `json:"reason"`
	Checksum string `json:"checksum"`
}

// readyz returns /readyz's status code and body.
func (s *syncerProc) readyz(ctx context.Context) (int, syncerStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+s.addr+"/readyz", nil)
	if err != nil {
		return 0, syncerStatus{}, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, syncerStatus{}, err
	}
	defer resp.Body.Close()
	var st syncerStatus
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return resp.StatusCode, st, fmt.Errorf("decode /readyz: %w", err)
	}
	return resp.StatusCode, st, nil
}

// waitReady waits until /readyz answers 200.
// waitLeading waits until s is the ready leader.
func (s *syncerProc) waitLeading(t *testing.T, within time.Duration) {
	t.Helper()
	eventually(t, within, s.name+" leading", func() error {
		if s.exited() {
			t.Fatalf("%s exited: %v", s.name, s.err)
		}
		code, st, err := s.readyz(context.Background())
		if err != nil {
			return err
		}
		if code != http.StatusOK || !st.Leader {
			return fmt.Errorf("/readyz %d leader %v: %s", code, st.Leader, st.Reason)
		}
		return nil
	})
}

// waitReady waits until s leads and is ready (a ready standby is not enough here: the
// tests that wait for it need it publishing).
func (s *syncerProc) waitReady(t *testing.T, within time.Duration) {
	t.Helper()
	s.waitLeading(t, within)
}

// cliResult is the outcome of a syncer command run to completion.
type cliResult struct {
	code           int
	stdout, stderr string
}

// runCLI runs the syncer binary with args to completion (at most a minute).
func runCLI(t *testing.T, vars map[string]string, args ...string) cliResult {
	t.Helper()
	p := startProc(t, "syncer "+strings.Join(args, " "), vars, args...)
	select {
	case <-p.done:
	case <-time.After(time.Minute):
		p.kill(t)
		t.Fatalf("syncer %s did not finish within a minute", strings.Join(args, " "))
	}
	p.killed.Store(true) // an exit status is a result here, not a failure of stop
	r := cliResult{stdout: p.stdout.tail(1 << 20), stderr: p.stderr.tail(1 << 20)}
	var ee *exec.ExitError
	switch {
	case p.err == nil:
	case errors.As(p.err, &ee):
		r.code = ee.ExitCode()
	default:
		t.Fatalf("syncer %s: %v", strings.Join(args, " "), p.err)
	}
	return r
}

// eventually polls cond until it returns nil, failing the test after within.
func eventually(t *testing.T, within time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	tick := time.NewTicker(5 * time.Millisecond) // poll interval, not a wait for an effect
	defer tick.Stop()
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s: %v", within, what, err)
		}
		<-tick.C
	}
}
