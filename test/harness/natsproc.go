package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
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

	"github.com/nats-io/nats.go"
)

// EnvServers names the environment variable listing the nats-server binaries the tests run
// against, as scripts/nats-servers.sh prints it: "2.9.10=/usr/sbin/nats-server,2.10.29=/…".
// `make test` sets it.
const EnvServers = "REGISTRY_NATS_SERVERS"

// requiredLines are the release lines the matrix must cover: every line the registry
// supports (the newest release comes on top of them).
var requiredLines = []string{"2.9", "2.10", "2.11", "2.12"}

// ServerBinary is one real nats-server binary of the test matrix.
type ServerBinary struct {
	Version string // as reported by `nats-server --version`, without the v: "2.9.10"
	Path    string
}

// Name names the binary in subtests: "nats-2.9.10".
func (b ServerBinary) Name() string { return "nats-" + b.Version }

// ServerMatrix reads the binaries from $REGISTRY_NATS_SERVERS, oldest first. It fails,
// naming the command that installs them, when the variable is missing, names a file that
// is not there, or leaves a supported release line out.
func ServerMatrix() ([]ServerBinary, error) {
	raw := strings.TrimSpace(os.Getenv(EnvServers))
	if raw == "" {
		return nil, fmt.Errorf("%s is not set: these tests run against every supported nats-server release; run `make deps` (it installs them) and then `make test`, or set %s=\"$(scripts/nats-servers.sh)\"", EnvServers, EnvServers)
	}
	var out []ServerBinary
	for _, item := range strings.Split(raw, ",") {
		v, path, ok := strings.Cut(strings.TrimSpace(item), "=")
		if !ok || v == "" || path == "" {
			return nil, fmt.Errorf("%s: %q is not <version>=<path>", EnvServers, item)
		}
		v = strings.TrimPrefix(v, "v")
		if _, err := parseServerVersion(v); err != nil {
			return nil, fmt.Errorf("%s: %w", EnvServers, err)
		}
		if st, err := os.Stat(path); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
			return nil, fmt.Errorf("%s: nats-server %s: %s is not an executable file: run `make deps`", EnvServers, v, path)
		}
		out = append(out, ServerBinary{Version: v, Path: path})
	}
	slices.SortFunc(out, func(a, b ServerBinary) int { return compareServerVersions(a.Version, b.Version) })
	for _, line := range requiredLines {
		if !slices.ContainsFunc(out, func(b ServerBinary) bool { return strings.HasPrefix(b.Version, line+".") }) {
			return nil, fmt.Errorf("%s lists no nats-server %s.x (%s): run `make deps`", EnvServers, line, raw)
		}
	}
	return out, nil
}

// Servers is ServerMatrix for a test: it fails the test (never skips it) without the matrix.
func Servers(tb testing.TB) []ServerBinary {
	tb.Helper()
	m, err := ServerMatrix()
	if err != nil {
		tb.Fatal(err)
	}
	return m
}

// NewestServer is the newest binary of the matrix.
func NewestServer(tb testing.TB) ServerBinary {
	tb.Helper()
	m := Servers(tb)
	return m[len(m)-1]
}

func parseServerVersion(v string) ([3]int, error) {
	var out [3]int
	core, _, _ := strings.Cut(v, "-")
	parts := strings.Split(core, ".")
	if len(parts) != 3 {
		return out, fmt.Errorf("version %q is not major.minor.patch", v)
	}
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 {
			return out, fmt.Errorf("version %q is not major.minor.patch", v)
		}
		out[i] = n
	}
	return out, nil
}

func compareServerVersions(a, b string) int {
	va, _ := parseServerVersion(a)
	vb, _ := parseServerVersion(b)
	return slices.Compare(va[:], vb[:])
}

// NATSProcOptions tunes a server process.
type NATSProcOptions struct {
	// NoJetStream starts the server without JetStream.
	NoJetStream bool
	// MaxPayload overrides the server's max_payload (0: the server's default, 1 MiB).
	MaxPayload int
	// Name is the server_name (default: "harness-<client port>").
	Name string

	cluster *clusterSpec // set by StartNATSCluster
}

type clusterSpec struct {
	name   string
	port   int   // this node's route port
	routes []int // the other nodes' route ports
}

// NATSProc is a real nats-server binary running as a child process on a loopback port,
// with its configuration, log and JetStream store in a directory of its own. It can be
// shut down (or killed) and started again on the same port with the same store. It dies
// with the test binary (Pdeathsig) and is cleaned up on SIGINT/SIGTERM.
type NATSProc struct {
	Bin  ServerBinary
	Dir  string
	Port int

	opts NATSProcOptions

	mu         sync.Mutex
	cmd        *exec.Cmd
	done       chan struct{}
	closed     bool
	unregister func()
}

// StartNATSProc starts bin on a free port, with a store in a new directory.
func StartNATSProc(bin ServerBinary, opts NATSProcOptions) (*NATSProc, error) {
	n, err := newNATSProc(bin, opts)
	if err != nil {
		return nil, err
	}
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		if n.Port, err = freePort(); err != nil {
			n.Close()
			return nil, err
		}
		if lastErr = n.Start(); lastErr == nil {
			return n, nil
		}
		if !errors.Is(lastErr, errPortInUse) {
			break
		}
		// Another process took the free port between our probe and the server's listen.
	}
	n.Close()
	return nil, lastErr
}

func newNATSProc(bin ServerBinary, opts NATSProcOptions) (*NATSProc, error) {
	dir, err := processDir("natsproc")
	if err != nil {
		return nil, err
	}
	n := &NATSProc{Bin: bin, Dir: dir, opts: opts}
	n.unregister = stopOnSignal(n.Close)
	return n, nil
}

// NewNATSProc starts a server for one test: its log is shown if the test fails, and it is
// stopped and its directory removed when the test ends.
func NewNATSProc(tb testing.TB, bin ServerBinary, opts NATSProcOptions) *NATSProc {
	tb.Helper()
	n, err := StartNATSProc(bin, opts)
	if err != nil {
		tb.Fatalf("start nats-server %s: %v", bin.Version, err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("--- nats-server %s on port %d, log (last lines):\n%s", bin.Version, n.Port, n.LogTail(40))
		}
		n.Close()
	})
	return n
}

var errPortInUse = errors.New("port in use")

func (n *NATSProc) logPath() string  { return filepath.Join(n.Dir, "server.log") }
func (n *NATSProc) confPath() string { return filepath.Join(n.Dir, "server.conf") }

// StoreDir is the JetStream store directory.
func (n *NATSProc) StoreDir() string { return filepath.Join(n.Dir, "store") }

func (n *NATSProc) config() string {
	var b strings.Builder
	fmt.Fprintf(&b, "server_name: %q\nlisten: \"127.0.0.1:%d\"\n", n.Name(), n.Port)
	if n.opts.MaxPayload > 0 {
		fmt.Fprintf(&b, "max_payload: %d\n", n.opts.MaxPayload)
	}
	if !n.opts.NoJetStream {
		fmt.Fprintf(&b, "jetstream {\n  store_dir: %q\n}\n", n.StoreDir())
	}
	if c := n.opts.cluster; c != nil {
		routes := make([]string, len(c.routes))
		for i, p := range c.routes {
			routes[i] = fmt.Sprintf("%q", fmt.Sprintf("nats-route://127.0.0.1:%d", p))
		}
		fmt.Fprintf(&b, "cluster {\n  name: %q\n  listen: \"127.0.0.1:%d\"\n  routes: [%s]\n}\n", c.name, c.port, strings.Join(routes, ", "))
	}
	return b.String()
}

// Start (re)starts the server on its port with its store and waits until it accepts
// clients (and, outside a cluster, until JetStream answers).
func (n *NATSProc) Start() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return errors.New("nats-server: closed")
	}
	if n.cmd != nil {
		return errors.New("nats-server already running")
	}
	if err := os.WriteFile(n.confPath(), []byte(n.config()), 0o644); err != nil {
		return err
	}
	logf, err := os.OpenFile(n.logPath(), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close() // the child has its own descriptor
	mark, _ := logf.Seek(0, 2)
	cmd := exec.Command(n.Bin.Path, "-c", n.confPath())
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", n.Bin.Path, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	n.cmd, n.done = cmd, done

	if err := n.waitReady(done, mark); err != nil {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		n.cmd, n.done = nil, nil
		return err
	}
	return nil
}

// waitReady polls until a client can connect (and JetStream answers, outside a
// cluster); it fails at once if the process exits.
func (n *NATSProc) waitReady(done <-chan struct{}, logFrom int64) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := n.probe()
		if err == nil {
			return nil
		}
		select {
		case <-done:
			tail := n.logSince(logFrom)
			if strings.Contains(tail, "address already in use") {
				return fmt.Errorf("nats-server %s: %w: %s", n.Bin.Version, errPortInUse, tail)
			}
			return fmt.Errorf("nats-server %s exited during start-up:\n%s", n.Bin.Version, tail)
		case <-time.After(20 * time.Millisecond): // poll interval
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nats-server %s not ready within 30s: %v; log:\n%s", n.Bin.Version, err, n.logSince(logFrom))
		}
	}
}

func (n *NATSProc) probe() error {
	nc, err := nats.Connect(n.URL(), nats.Timeout(time.Second), nats.NoReconnect())
	if err != nil {
		return err
	}
	defer nc.Close()
	if n.opts.NoJetStream || n.opts.cluster != nil {
		return nil
	}
	return jetStreamAnswers(nc)
}

// jetStreamAnswers asks $JS.API.INFO and fails unless JetStream answers without an error.
func jetStreamAnswers(nc *nats.Conn) error {
	return jsRequest(context.Background(), nc, "$JS.API.INFO", nil)
}

// Name is the server's server_name (the name JetStream reports for stream leaders and
// replicas).
func (n *NATSProc) Name() string {
	if n.opts.Name != "" {
		return n.opts.Name
	}
	return fmt.Sprintf("harness-%d", n.Port)
}

// URL is the server's client URL.
func (n *NATSProc) URL() string { return fmt.Sprintf("nats://127.0.0.1:%d", n.Port) }

// Running reports whether the process runs.
func (n *NATSProc) Running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.cmd != nil
}

// Shutdown stops the server gracefully (SIGTERM; SIGKILL after 30s), keeping its store
// for the next Start.
func (n *NATSProc) Shutdown() { n.stop(syscall.SIGTERM) }

// Kill ends the server with SIGKILL (no flush, no goodbye to clients or peers), keeping
// its store for the next Start.
func (n *NATSProc) Kill() { n.stop(syscall.SIGKILL) }

func (n *NATSProc) stop(sig syscall.Signal) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return
	}
	_ = n.cmd.Process.Signal(sig)
	select {
	case <-n.done:
	case <-time.After(30 * time.Second):
		_ = syscall.Kill(-n.cmd.Process.Pid, syscall.SIGKILL)
		<-n.done
	}
	n.cmd, n.done = nil, nil
}

// Restart shuts the server down and starts it again on the same port and store.
func (n *NATSProc) Restart() error {
	n.Shutdown()
	return n.Start()
}

// Close kills the server and removes its directory. Safe to call twice.
func (n *NATSProc) Close() {
	n.Kill()
	n.mu.Lock()
	already := n.closed
	n.closed = true
	n.mu.Unlock()
	if already {
		return
	}
	if n.unregister != nil {
		n.unregister()
	}
	_ = os.RemoveAll(n.Dir)
}

// Connect opens a client connection that keeps reconnecting for as long as the test runs.
func (n *NATSProc) Connect(tb testing.TB, opts ...nats.Option) *nats.Conn {
	tb.Helper()
	return connect(tb, n.URL(), opts...)
}

func connect(tb testing.TB, url string, opts ...nats.Option) *nats.Conn {
	tb.Helper()
	opts = append([]nats.Option{nats.MaxReconnects(-1), nats.ReconnectWait(20 * time.Millisecond)}, opts...)
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		tb.Fatalf("connect nats %s: %v", url, err)
	}
	tb.Cleanup(nc.Close)
	return nc
}

// LogTail is the last n lines of the server's log.
func (n *NATSProc) LogTail(lines int) string {
	data, err := os.ReadFile(n.logPath())
	if err != nil {
		return err.Error()
	}
	all := bytes.Split(bytes.TrimRight(data, "\n"), []byte("\n"))
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return string(bytes.Join(all, []byte("\n")))
}

func (n *NATSProc) logSince(offset int64) string {
	data, err := os.ReadFile(n.logPath())
	if err != nil {
		return err.Error()
	}
	if offset > int64(len(data)) {
		offset = 0
	}
	return strings.TrimSpace(string(data[offset:]))
}

// NATSCluster is a cluster of nats-server processes of one binary, with JetStream
// clustered: every node can be shut down, killed and started again on its ports.
type NATSCluster struct {
	Nodes []*NATSProc
}

// StartNATSCluster starts size nodes of bin (routes on free loopback ports) and waits
// until JetStream can place a stream on every node.
func StartNATSCluster(bin ServerBinary, size int, opts NATSProcOptions) (*NATSCluster, error) {
	if size < 2 {
		return nil, fmt.Errorf("a cluster needs at least 2 nodes (got %d)", size)
	}
	c := &NATSCluster{}
	clientPorts, routePorts := make([]int, size), make([]int, size)
	for i := range size {
		var err error
		if clientPorts[i], err = freePort(); err != nil {
			return nil, err
		}
		if routePorts[i], err = freePort(); err != nil {
			return nil, err
		}
	}
	name := fmt.Sprintf("harness-%d", routePorts[0])
	for i := range size {
		o := opts
		o.Name = fmt.Sprintf("%s-n%d", name, i+1)
		o.cluster = &clusterSpec{name: name, port: routePorts[i]}
		for j := range size {
			if j != i {
				o.cluster.routes = append(o.cluster.routes, routePorts[j])
			}
		}
		n, err := newNATSProc(bin, o)
		if err != nil {
			c.Close()
			return nil, err
		}
		n.Port = clientPorts[i]
		c.Nodes = append(c.Nodes, n)
	}
	// Start every node before waiting on any: a node is ready for clients at once, but
	// JetStream needs a quorum.
	errs := make([]error, size)
	var wg sync.WaitGroup
	for i, n := range c.Nodes {
		wg.Go(func() { errs[i] = n.Start() })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		c.Close()
		return nil, err
	}
	if opts.NoJetStream {
		return c, nil
	}
	if err := c.WaitJetStream(60 * time.Second); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// NewNATSCluster starts a cluster for one test: the nodes' logs are shown if the test
// fails, and everything is removed when it ends.
func NewNATSCluster(tb testing.TB, bin ServerBinary, size int, opts NATSProcOptions) *NATSCluster {
	tb.Helper()
	c, err := StartNATSCluster(bin, size, opts)
	if err != nil {
		tb.Fatalf("start a %d-node nats-server %s cluster: %v", size, bin.Version, err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			for i, n := range c.Nodes {
				tb.Logf("--- cluster node %d (nats-server %s, port %d), log (last lines):\n%s", i+1, bin.Version, n.Port, n.LogTail(25))
			}
		}
		c.Close()
	})
	return c
}

// URL lists every node's client URL, comma-separated (as EXTENSION_REGISTRY_NATS_URL takes them).
func (c *NATSCluster) URL() string {
	urls := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		urls[i] = n.URL()
	}
	return strings.Join(urls, ",")
}

// Connect opens a client connection to the cluster that keeps reconnecting for as long
// as the test runs.
func (c *NATSCluster) Connect(tb testing.TB, opts ...nats.Option) *nats.Conn {
	tb.Helper()
	return connect(tb, c.URL(), opts...)
}

// WaitJetStream waits until a stream replicated on every running node can be created
// (a meta leader is elected and every peer is known), then deletes it.
func (c *NATSCluster) WaitJetStream(within time.Duration) error {
	var urls []string
	for _, n := range c.Nodes {
		if n.Running() {
			urls = append(urls, n.URL())
		}
	}
	nc, err := nats.Connect(strings.Join(urls, ","), nats.Timeout(time.Second), nats.MaxReconnects(-1))
	if err != nil {
		return err
	}
	defer nc.Close()
	probe := fmt.Sprintf("HARNESS_PROBE_%d", c.Nodes[0].Port)
	cfg, _ := json.Marshal(map[string]any{"name": probe, "subjects": []string{"harness.probe." + probe},
		"num_replicas": len(urls), "storage": "memory"})
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	var last error
	for {
		last = jsRequest(ctx, nc, "$JS.API.STREAM.CREATE."+probe, cfg)
		if last == nil {
			return jsRequest(ctx, nc, "$JS.API.STREAM.DELETE."+probe, nil)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("JetStream cluster not ready within %s: %v", within, last)
		case <-time.After(100 * time.Millisecond): // poll interval
		}
	}
}

func jsRequest(ctx context.Context, nc *nats.Conn, subject string, body []byte) error {
	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	m, err := nc.RequestWithContext(rctx, subject, body)
	if err != nil {
		return fmt.Errorf("%s: %w", subject, err)
	}
	var reply struct {
		Error *struct {
			Code        int    `json:"code"`
			Description string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(m.Data, &reply); err != nil {
		return fmt.Errorf("%s: %w", subject, err)
	}
	if reply.Error != nil {
		return fmt.Errorf("%s: %d %s", subject, reply.Error.Code, reply.Error.Description)
	}
	return nil
}

// Close kills every node and removes their directories. Safe to call twice.
func (c *NATSCluster) Close() {
	var wg sync.WaitGroup
	for _, n := range c.Nodes {
		wg.Go(n.Close)
	}
	wg.Wait()
}

// Addr returns host:port of the node's client listener (for a proxy in front of it).
func (n *NATSProc) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(n.Port)) }

// Node returns the node whose server_name is name (nil if none).
func (c *NATSCluster) Node(name string) *NATSProc {
	for _, n := range c.Nodes {
		if n.Name() == name {
			return n
		}
	}
	return nil
}
