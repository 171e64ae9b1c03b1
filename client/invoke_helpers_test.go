package client

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/beamline/registry-syncer/cache"
	"github.com/beamline/registry-syncer/test/harness"
)

// invokeBundle is a real NATS server, a source publishing the extensions, a
// started client following it, and a connection for responders.
type invokeBundle struct {
	srv *harness.NATS
	src *source
	c   *testClient
	nc  *nats.Conn // the responders' connection
}

func setupInvoke(t testing.TB, exts ...*cache.Extension) *invokeBundle {
	t.Helper()
	srv := harness.NewNATS(t, harness.NATSOptions{})
	src := newSource(t, srv, 0, "")
	var changes []cache.Change
	for _, e := range exts {
		changes = append(changes, aggregate(t, e))
	}
	if len(changes) > 0 {
		src.commit(changes...)
	}
	// The tests read CallStats themselves: the reports must not take them
	// (TestReportsCarryCallStats covers the reports).
	noReportCalls := func() map[string]json.RawMessage { return nil }
	c := startClient(t, srv.Connect(t), Config{CallStats: noReportCalls})
	waitSame(t, c, src)
	return &invokeBundle{srv: srv, src: src, c: c, nc: srv.Connect(t)}
}

// update publishes new versions of extensions and waits for the client to serve them.
func (b *invokeBundle) update(t testing.TB, exts ...*cache.Extension) {
	t.Helper()
	var changes []cache.Change
	for _, e := range exts {
		changes = append(changes, aggregate(t, e))
	}
	b.src.commit(changes...)
	waitSame(t, b.c, b.src)
}

// seed makes the client's weighted picks deterministic.
func (b *invokeBundle) seed(s uint64) {
	b.c.invokerOf().rnd = rand.New(rand.NewPCG(s, s^0x9e3779b97f4a7c15))
}

// ext is a valid enabled extension of a type; subjects follow the naming rules.
func ext(id, typ string, instances ...cache.Instance) *cache.Extension {
	tok := map[string]string{cache.TypePre: "ext.pre.", cache.TypeValidator: "ext.validate.", cache.TypePost: "ext.post.",
		cache.TypeProvider: "provider."}[typ]
	if instances == nil {
		instances = []cache.Instance{}
	}
	return &cache.Extension{ID: id, Type: typ, Subject: "beamline." + tok + id + ".v1", TimeoutMS: cache.MaxTimeoutMS, Enabled: true,
		Version: "v1", Config: json.RawMessage(`{}`), Metadata: json.RawMessage(`{}`), Versions: []cache.Version{},
		Instances: instances}
}

func inst(id string, weight int, health string) cache.Instance {
	return cache.Instance{InstanceID: id, Subject: "beamline.inst." + id, Weight: weight, Enabled: true, HealthStatus: health}
}

// arrival is one request a responder received.
type arrival struct {
	at  time.Time
	req wireRequest
	msg *nats.Msg
}

// responder is a real NATS subscriber on an extension subject. Its behaviour
// is set by the test: reply with a fixed body, stay silent (the caller times
// out), or hold the requests until the test answers them.
type responder struct {
	tb  testing.TB
	sub *nats.Subscription

	mu       sync.Mutex
	reply    []byte // nil: do not answer
	hold     bool   // keep the message for the test to answer
	arrivals []arrival
	got      chan struct{} // receives a value per arrival (buffered)
}

func (b *invokeBundle) respond(t testing.TB, subject string, reply string) *responder {
	t.Helper()
	r := &responder{tb: t, got: make(chan struct{}, 10000)}
	r.set(reply)
	sub, err := b.nc.Subscribe(subject, func(m *nats.Msg) {
		var req wireRequest
		if err := json.Unmarshal(m.Data, &req); err != nil {
			t.Errorf("responder %s: request is not the contract's JSON: %v: %s", subject, err, m.Data)
		}
		r.mu.Lock()
		r.arrivals = append(r.arrivals, arrival{at: time.Now(), req: req, msg: m})
		reply, hold := r.reply, r.hold
		r.mu.Unlock()
		r.got <- struct{}{}
		if reply != nil && !hold {
			if err := m.Respond(reply); err != nil {
				t.Errorf("respond: %v", err)
			}
		}
	})
	if err != nil {
		t.Fatalf("subscribe %s: %v", subject, err)
	}
	if err := b.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	r.sub = sub
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return r
}

// set changes the reply ("" means stay silent).
func (r *responder) set(reply string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reply = nil
	if reply != "" {
		r.reply = []byte(reply)
	}
}

func (r *responder) setHold(hold bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.hold = hold
}

func (r *responder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.arrivals)
}

func (r *responder) all() []arrival {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]arrival(nil), r.arrivals...)
}

// invoke calls Invoke with a bounded context.
func (b *invokeBundle) invoke(t *testing.T, id string, req Request, attrs map[string]string) (*Result, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return b.c.Invoke(ctx, id, req, attrs)
}

// code returns err's InvokeError code ("" for nil), failing on other errors.
func code(t *testing.T, err error) string {
	t.Helper()
	if err == nil {
		return ""
	}
	ie, ok := err.(*InvokeError)
	if !ok {
		t.Fatalf("error %v (%T) is not an *InvokeError", err, err)
	}
	return ie.Code
}
