package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/beamline/registry-syncer/cache"
	"github.com/beamline/registry-syncer/client"
)

// install is one snapshot a router installed.
type install struct {
	rev     int64
	sum     string
	changed []string
	at      time.Time
}

// router is one client.Client on a NATS connection of its own, as a router runs it.
type router struct {
	name     string
	nc       *nats.Conn
	c        *client.Client
	reg      *prometheus.Registry
	log      *lineBuf
	rejected atomic.Int64

	mu       sync.Mutex
	installs []install
	errs     []string
}

// startRouter starts a client on a new connection to url (the test's NATS server, or a
// proxy in front of it).
func (b *testBundle) startRouter(t *testing.T, url string) *router {
	t.Helper()
	r := &router{name: fmt.Sprintf("router-%d", b.seq.Add(1)), log: newLineBuf(), reg: prometheus.NewRegistry()}
	nc, err := nats.Connect(url, nats.Name(r.name), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatalf("%s: connect: %v", r.name, err)
	}
	r.nc = nc
	t.Cleanup(nc.Close)
	r.c, err = client.New(nc, client.Config{
		Prefix: b.prefix,
		Logger: slog.New(slog.NewTextHandler(r.log, &slog.HandlerOptions{Level: slog.LevelInfo})),
		OnChange: func(_, next *cache.Snapshot, changed []string) {
			r.mu.Lock()
			r.installs = append(r.installs, install{rev: next.Revision(), sum: next.Checksum(), changed: changed, at: time.Now()})
			r.mu.Unlock()
		},
		OnError: func(err error) {
			r.rejected.Add(1)
			r.mu.Lock()
			r.errs = append(r.errs, err.Error())
			r.mu.Unlock()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	r.reg.MustRegister(r.c.Collector())
	if err := r.c.Start(context.Background()); err != nil {
		t.Fatalf("%s: start: %v", r.name, err)
	}
	t.Cleanup(func() {
		r.c.Stop()
		// Whatever happened, a router never goes back to an older revision, and installs
		// a revision once.
		r.mu.Lock()
		for i := 1; i < len(r.installs); i++ {
			if r.installs[i].rev <= r.installs[i-1].rev {
				t.Errorf("%s installed revision %d after %d", r.name, r.installs[i].rev, r.installs[i-1].rev)
			}
		}
		r.mu.Unlock()
		if t.Failed() {
			t.Logf("--- %s: revision %d, rejections %d; log, last lines:\n%s", r.name, r.c.Revision(), r.rejected.Load(), r.log.tail(30))
		}
	})
	return r
}

// errors returns what OnError reported.
func (r *router) errors() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.errs)
}

// serves reports whether the router serves want (same revision and checksum).
func (r *router) serves(want *cache.Snapshot) error {
	s := r.c.Snapshot()
	switch {
	case s == nil:
		return fmt.Errorf("%s: no snapshot yet", r.name)
	case s.Revision() != want.Revision() || s.Checksum() != want.Checksum():
		return fmt.Errorf("%s: revision %d checksum %.12s, want %d %.12s", r.name, s.Revision(), s.Checksum(), want.Revision(), want.Checksum())
	}
	// The client serves a snapshot before it calls OnChange; the install is recorded
	// only once OnChange ran, so wait for that too.
	if _, ok := r.installedAt(want); !ok {
		return fmt.Errorf("%s: serves revision %d, OnChange not called yet", r.name, want.Revision())
	}
	return nil
}

// installedAt is when the router installed want (zero if it did not).
func (r *router) installedAt(want *cache.Snapshot) (install, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, in := range r.installs {
		if in.rev == want.Revision() && in.sum == want.Checksum() {
			return in, true
		}
	}
	return install{}, false
}

// installsSince is every install after the n-th.
func (r *router) installsSince(n int) []install {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.installs[min(n, len(r.installs)):])
}

func (r *router) installCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.installs)
}

// metric reads one of the client's Prometheus metrics.
func (r *router) metric(t *testing.T, name string) float64 {
	t.Helper()
	families, err := r.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name || len(f.GetMetric()) == 0 {
			continue
		}
		m := f.GetMetric()[0]
		switch {
		case m.GetCounter() != nil:
			return m.GetCounter().GetValue()
		case m.GetGauge() != nil:
			return m.GetGauge().GetValue()
		}
	}
	t.Fatalf("%s: no metric %s", r.name, name)
	return 0
}

// watchEvent is one line of `syncer watch --json`.
type watchEvent struct {
	Revision  int64     `json:"revision"`
	Checksum  string    `json:"checksum"`
	Count     int       `json:"count"`
	Source    string    `json:"source"`
	Changed   []string  `json:"changed"`
	AppliedAt time.Time `json:"applied_at"`
	at        time.Time // when the test read the line
}

// watcher is a `syncer watch --json` process.
type watcher struct {
	*proc
	mu     sync.Mutex
	parsed int
	events []watchEvent
}

func (b *testBundle) startWatcher(t *testing.T) *watcher {
	t.Helper()
	vars := map[string]string{
		"EXTENSION_REGISTRY_NATS_URL":       b.url,
		"EXTENSION_REGISTRY_SUBJECT_PREFIX": b.prefix,
		"EXTENSION_REGISTRY_LOG_FORMAT":     "json",
	}
	return &watcher{proc: startProc(t, fmt.Sprintf("watch-%d", b.seq.Add(1)), vars, "watch", "--json", "--timeout", "60s")}
}

// all returns every event printed so far; a line that is not a watch event fails the test.
func (w *watcher) all(t *testing.T) []watchEvent {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	lines, _, _ := w.stdout.from(w.parsed)
	for _, l := range lines {
		var ev watchEvent
		if err := json.Unmarshal([]byte(l.text), &ev); err != nil || ev.Checksum == "" || ev.Changed == nil {
			t.Fatalf("%s printed %q: not a revision line (%v)", w.name, l.text, err)
		}
		ev.at = l.at
		w.events = append(w.events, ev)
	}
	w.parsed += len(lines)
	return slices.Clone(w.events)
}

// rejections counts the payloads the watcher reported rejecting.
func (w *watcher) rejections() int {
	return w.stderr.count(logMsg("watch: rejected a payload"))
}

// fleet is the routers and the watcher of a test.
type fleet struct {
	routers []*router
	watch   *watcher
}

// startFleet starts n routers on the test's NATS server and, if withWatch, a watcher.
func (b *testBundle) startFleet(t *testing.T, n int, withWatch bool) *fleet {
	t.Helper()
	f := &fleet{}
	for range n {
		f.routers = append(f.routers, b.startRouter(t, b.url))
	}
	if withWatch {
		f.watch = b.startWatcher(t)
	}
	return f
}

// convergence is how long each member took to serve a revision.
type convergence struct {
	perMember map[string]time.Duration
	max       time.Duration
	slowest   string
}

func (c convergence) String() string {
	names := make([]string, 0, len(c.perMember))
	for n := range c.perMember {
		names = append(names, n)
	}
	sort.Strings(names)
	parts := make([]string, len(names))
	for i, n := range names {
		parts[i] = fmt.Sprintf("%s %s", n, c.perMember[n].Round(10*time.Microsecond))
	}
	return fmt.Sprintf("max %s (%s); %s", c.max.Round(10*time.Microsecond), c.slowest, strings.Join(parts, ", "))
}

// converge waits until every router and the watcher serve want (the same revision and
// checksum) and measures, per member, the time from since to the installation of want.
func (f *fleet) converge(t *testing.T, want *cache.Snapshot, since time.Time, within time.Duration) convergence {
	t.Helper()
	eventually(t, within, fmt.Sprintf("every router and the watcher at revision %d", want.Revision()), func() error {
		for _, r := range f.routers {
			if err := r.serves(want); err != nil {
				return err
			}
		}
		if f.watch != nil {
			if f.watch.exited() {
				t.Fatalf("%s exited: %v", f.watch.name, f.watch.err)
			}
			ev := f.watch.all(t)
			if len(ev) == 0 {
				return fmt.Errorf("%s: nothing printed yet", f.watch.name)
			}
			last := ev[len(ev)-1]
			if last.Revision != want.Revision() || last.Checksum != want.Checksum() || last.Count != want.Len() {
				return fmt.Errorf("%s: revision %d checksum %.12s count %d, want %d %.12s %d", f.watch.name,
					last.Revision, last.Checksum, last.Count, want.Revision(), want.Checksum(), want.Len())
			}
		}
		return nil
	})
	c := convergence{perMember: map[string]time.Duration{}}
	note := func(name string, at time.Time) {
		d := max(0, at.Sub(since))
		c.perMember[name] = d
		if d >= c.max {
			c.max, c.slowest = d, name
		}
	}
	for _, r := range f.routers {
		in, _ := r.installedAt(want)
		note(r.name, in.at)
	}
	if f.watch != nil {
		for _, ev := range f.watch.all(t) {
			if ev.Revision == want.Revision() && ev.Checksum == want.Checksum() {
				note(f.watch.name, ev.at)
				break
			}
		}
	}
	return c
}

// proxy forwards TCP connections to a NATS server and can cut them: a router behind it
// loses its connection and cannot reconnect until the proxy is restored.
type proxy struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	cut   bool
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func startProxy(t *testing.T, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Go(p.serve)
	t.Cleanup(func() {
		ln.Close()
		p.closeAll()
		p.wg.Wait()
	})
	return p
}

func (p *proxy) url() string { return "nats://" + p.ln.Addr().String() }

func (p *proxy) serve() {
	for {
		down, err := p.ln.Accept()
		if err != nil {
			return // closed
		}
		p.mu.Lock()
		if p.cut {
			p.mu.Unlock()
			down.Close()
			continue
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			p.mu.Unlock()
			down.Close()
			continue
		}
		p.conns[down], p.conns[up] = struct{}{}, struct{}{}
		p.mu.Unlock()
		pipe := func(dst, src net.Conn) {
			_, _ = io.Copy(dst, src)
			dst.Close()
			src.Close()
		}
		p.wg.Go(func() { pipe(up, down) })
		p.wg.Go(func() { pipe(down, up) })
	}
}

// setCut cuts every connection and refuses new ones (true), or accepts them again.
func (p *proxy) setCut(cut bool) {
	p.mu.Lock()
	p.cut = cut
	p.mu.Unlock()
	if cut {
		p.closeAll()
	}
}

func (p *proxy) closeAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
		delete(p.conns, c)
	}
}
