package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/beamline/registry-syncer/syncer"
	"github.com/beamline/registry-syncer/test/harness"
)

// Log messages the tests wait for.
const (
	msgStale       = `"msg":"nats: the connection is stale (pings unanswered), reconnecting"`
	msgRefused     = `"msg":"nats: the server refused the credentials, retrying"`
	msgReconnected = `"msg":"nats: reconnected"`
	msgConnected   = `"msg":"nats: connected"`
)

// count is how many log lines so far contain substr.
func (lw *logWatcher) count(substr string) int {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	n := 0
	for _, l := range lw.lines {
		if strings.Contains(l, substr) {
			n++
		}
	}
	return n
}

// metric reads one unlabelled sample from base's /metrics.
func metric(t *testing.T, base, name string) float64 {
	t.Helper()
	code, body := get(t, base+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d", code)
	}
	for _, l := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("/metrics %s: %v", l, err)
			}
			return f
		}
	}
	t.Fatalf("/metrics has no %s", name)
	return 0
}

// eventually polls cond every 10 ms until it holds, failing after timeout; it returns
// how long it took.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(timeout)
	for !cond() {
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("not %s within %s", what, timeout)
		}
	}
	return time.Since(start)
}

// daemonEnv is the environment of a daemon on schema publishing under prefix through
// the NATS at natsURL.
func daemonEnv(schema *harness.Schema, natsURL, prefix string, extra envMap) envMap {
	env := envMap{
		"EXTENSION_REGISTRY_DATABASE_URL":       schema.URL,
		"EXTENSION_REGISTRY_NATS_URL":           natsURL,
		"EXTENSION_REGISTRY_HTTP_ADDR":          "127.0.0.1:0",
		"EXTENSION_REGISTRY_SUBJECT_PREFIX":     prefix,
		"EXTENSION_REGISTRY_HEARTBEAT_INTERVAL": "200ms",
		"EXTENSION_REGISTRY_SNAPSHOT_INTERVAL":  "20ms",
		"EXTENSION_REGISTRY_LEADER_RETRY":       "50ms",
		"EXTENSION_REGISTRY_LOG_FORMAT":         "json",
	}
	for k, v := range extra {
		env[k] = v
	}
	return env
}

func insertExtension(t *testing.T, schema *harness.Schema, id string) {
	t.Helper()
	if _, err := schema.Pool.Exec(context.Background(), `INSERT INTO extensions (id, type, subject, timeout_ms)
		VALUES ($1, 'pre', 'beamline.ext.pre.' || $1 || '.v1', 100)`, id); err != nil {
		t.Fatal(err)
	}
}

// TestNATSBlackHole: with the default ping settings, a leader and a standby whose NATS
// goes silent (the proxy swallows every byte, no RST) while the registry is idle both
// see it within 10 s: a warning in the log and registry_syncer_nats_up 0. Once the
// network lets bytes through again they reconnect, and the leader publishes.
func TestNATSBlackHole(t *testing.T) {
	t.Parallel()
	schema := harness.PG(t).NewSchema(t)
	ns := harness.NewNATS(t, harness.NATSOptions{})
	target := fmt.Sprintf("127.0.0.1:%d", ns.Port)
	pa, pb := harness.NewProxy(t, target), harness.NewProxy(t, target)

	a := startDaemon(t, "leader", daemonEnv(schema, "nats://"+pa.Addr(), "test.blackhole", nil))
	waitReady(t, a.base)
	b := startDaemon(t, "standby", daemonEnv(schema, "nats://"+pb.Addr(), "test.blackhole", nil))
	eventually(t, 10*time.Second, "a connected standby", func() bool {
		return metric(t, b.base, "registry_syncer_nats_up") == 1 && b.log.count(msgConnected) == 1
	})
	if metric(t, b.base, "registry_syncer_leader") != 0 || metric(t, a.base, "registry_syncer_nats_up") != 1 {
		t.Fatal("want a leader and a standby, both connected to NATS")
	}

	pa.Stall()
	pb.Stall()
	start := time.Now()
	detected := map[string]time.Duration{}
	eventually(t, 10*time.Second, "both detecting the black hole (log and gauge)", func() bool {
		for name, d := range map[string]*daemonProc{"leader": a, "standby": b} {
			if _, ok := detected[name]; !ok && d.log.count(msgStale) > 0 && metric(t, d.base, "registry_syncer_nats_up") == 0 {
				detected[name] = time.Since(start)
			}
		}
		return len(detected) == 2
	})
	t.Logf("black hole detected after %s (leader), %s (standby); bound 3 × 2s", detected["leader"], detected["standby"])

	pa.Resume()
	pb.Resume()
	start = time.Now()
	back := eventually(t, 20*time.Second, "both reconnected", func() bool {
		return a.log.count(msgReconnected) > 0 && b.log.count(msgReconnected) > 0 &&
			metric(t, a.base, "registry_syncer_nats_up") == 1 && metric(t, b.base, "registry_syncer_nats_up") == 1
	})
	t.Logf("reconnected %s after the network came back", back)
	if metric(t, a.base, "registry_syncer_nats_reconnects_total") < 1 {
		t.Error("registry_syncer_nats_reconnects_total did not count the reconnect")
	}
	insertExtension(t, schema, "after_black_hole")
	waitStatus(t, a.base, "publishing after the black hole", func(code int, st syncer.Status) bool {
		return code == http.StatusOK && st.Ready && st.Extensions == 1 && st.SnapshotRevision == st.Revision
	})
	b.stop(t)
	a.stop(t)
}

// TestNATSStaleFailover: a connection to a cluster URL list that goes silent moves to
// another server of the list within (MAX_PINGS_OUTSTANDING + 1) × PING_INTERVAL, while
// the first one stays silent.
func TestNATSStaleFailover(t *testing.T) {
	t.Parallel()
	ns := harness.NewNATS(t, harness.NATSOptions{})
	target := fmt.Sprintf("127.0.0.1:%d", ns.Port)
	proxies := map[string]*harness.Proxy{}
	var urls []string
	for range 2 {
		p := harness.NewProxy(t, target)
		u := "nats://" + p.Addr()
		proxies[u] = p
		urls = append(urls, u)
	}
	cfg, err := loadConfig(envMap{
		"EXTENSION_REGISTRY_NATS_URL":                   strings.Join(urls, ","),
		"EXTENSION_REGISTRY_NATS_PING_INTERVAL":         "200ms",
		"EXTENSION_REGISTRY_NATS_MAX_PINGS_OUTSTANDING": "2",
	}.lookup)
	if err != nil {
		t.Fatal(err)
	}
	lw := newLogWatcher(t, "nats")
	nc, closed, err := connectNATS(context.Background(), cfg, slog.New(slog.NewJSONHandler(lw, nil)), true)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		nc.Close()
		<-closed
		lw.close()
	}()
	eventually(t, 10*time.Second, "connected", nc.IsConnected)
	first := nc.ConnectedUrl()
	proxies[first].Stall()
	start := time.Now()
	stale := eventually(t, 5*time.Second, "stale", func() bool { return lw.count(msgStale) > 0 })
	eventually(t, 5*time.Second, "on the other server", func() bool {
		return nc.IsConnected() && nc.ConnectedUrl() != first && nc.ConnectedUrl() != ""
	})
	moved := time.Since(start)
	t.Logf("silent %s: stale after %s, connected to %s after %s (bound 3 × 200ms)", first, stale, nc.ConnectedUrl(), moved)
	if stale > 2*time.Second {
		t.Errorf("stale after %s, want about 600ms", stale)
	}
	if err := nc.FlushTimeout(2 * time.Second); err != nil {
		t.Fatalf("flush on the new server: %v", err)
	}
}

// TestNATSAuthRetry: a server that refuses the syncer's credentials, at start and
// after a later disconnect, is retried (the cause logged, never the secret) until it
// accepts them; the syncer then connects and publishes without a restart.
func TestNATSAuthRetry(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		env  func(secret string) envMap
		auth func(secret string) func(*server.Options)
	}{
		{
			name: "Password",
			env: func(secret string) envMap {
				return envMap{"EXTENSION_REGISTRY_NATS_USER": "syncer", "EXTENSION_REGISTRY_NATS_PASSWORD": secret}
			},
			auth: func(secret string) func(*server.Options) {
				return func(o *server.Options) { o.Username, o.Password = "syncer", secret }
			},
		},
		{
			name: "Token",
			env:  func(secret string) envMap { return envMap{"EXTENSION_REGISTRY_NATS_TOKEN": secret} },
			auth: func(secret string) func(*server.Options) {
				return func(o *server.Options) { o.Authorization = secret }
			},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			const (
				secret = "syncer-secret-never-logged"
				other  = "the-server-wants-another-one"
			)
			schema := harness.PG(t).NewSchema(t)
			ns := harness.NewNATS(t, harness.NATSOptions{Configure: tt.auth(other)})
			restart := func(accepted string) {
				t.Helper()
				ns.Reconfigure(tt.auth(accepted))
				if err := ns.Restart(); err != nil {
					t.Fatal(err)
				}
			}
			d := startDaemon(t, "syncer", daemonEnv(schema, ns.URL(), "test.auth"+strings.ToLower(tt.name), tt.env(secret)))

			// At start: refused, retried past nats.go's two-refusals abort.
			took := eventually(t, 20*time.Second, "three refusals logged", func() bool { return d.log.count(msgRefused) >= 3 })
			t.Logf("three refusals logged in %s", took)
			if metric(t, d.base, "registry_syncer_nats_up") != 0 {
				t.Error("nats_up is 1 while the server refuses the credentials")
			}
			restart(secret)
			took = eventually(t, 20*time.Second, "connected once accepted", func() bool { return d.log.count(msgConnected) == 1 })
			t.Logf("connected %s after the server accepted the credentials", took)
			waitReady(t, d.base)

			// After a later disconnect: refused again, retried again.
			n := d.log.count(msgRefused)
			restart(other)
			eventually(t, 20*time.Second, "refusals after the disconnect", func() bool { return d.log.count(msgRefused) >= n+2 })
			if metric(t, d.base, "registry_syncer_nats_up") != 0 {
				t.Error("nats_up is 1 while the server refuses the credentials")
			}
			restart(secret)
			took = eventually(t, 20*time.Second, "reconnected once accepted", func() bool { return d.log.count(msgReconnected) >= 1 })
			t.Logf("reconnected %s after the server accepted the credentials again", took)
			insertExtension(t, schema, "after_auth_retry")
			waitStatus(t, d.base, "publishing after the refusals", func(code int, st syncer.Status) bool {
				return code == http.StatusOK && st.Ready && st.Extensions == 1 && st.SnapshotRevision == st.Revision
			})
			if metric(t, d.base, "registry_syncer_nats_up") != 1 {
				t.Error("nats_up is 0 while connected")
			}

			code, log := d.stop(t)
			if code != exitOK {
				t.Errorf("exit %d", code)
			}
			if strings.Contains(log, secret) {
				t.Errorf("the log shows the %s", tt.name)
			}
			for _, want := range []string{`"kind":"auth"`, "nats: Authorization Violation", "credentials from EXTENSION_REGISTRY_NATS_", `"sleep_duration"`} {
				if !strings.Contains(log, want) {
					t.Errorf("the log lacks %q", want)
				}
			}
		})
	}
}

// writeNKeySeed creates an NKey user and writes its seed to a file; it returns the
// file, the seed and the public key.
func writeNKeySeed(t *testing.T) (file, seed, public string) {
	t.Helper()
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	s, err := kp.Seed()
	if err != nil {
		t.Fatal(err)
	}
	pub, err := kp.PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	file = filepath.Join(t.TempDir(), "syncer.nk")
	if err := os.WriteFile(file, s, 0o600); err != nil {
		t.Fatal(err)
	}
	return file, string(s), pub
}

// TestNATSNKey: the daemon and syncer watch authenticate with an NKey seed file; the
// seed is never logged.
func TestNATSNKey(t *testing.T) {
	t.Parallel()
	file, seed, pub := writeNKeySeed(t)
	schema := harness.PG(t).NewSchema(t)
	ns := harness.NewNATS(t, harness.NATSOptions{Configure: func(o *server.Options) {
		o.Nkeys = []*server.NkeyUser{{Nkey: pub}}
	}})
	nkeyEnv := envMap{"EXTENSION_REGISTRY_NATS_NKEY": file}
	d := startDaemon(t, "syncer", daemonEnv(schema, ns.URL(), "test.nkey", nkeyEnv))
	waitReady(t, d.base)
	insertExtension(t, schema, "seen_by_watch")
	waitStatus(t, d.base, "published", func(code int, st syncer.Status) bool {
		return code == http.StatusOK && st.Extensions == 1 && st.SnapshotRevision == st.Revision
	})

	watchEnv := envMap{
		"EXTENSION_REGISTRY_NATS_URL":       ns.URL(),
		"EXTENSION_REGISTRY_SUBJECT_PREFIX": "test.nkey",
		"EXTENSION_REGISTRY_NATS_NKEY":      file,
	}
	r := runCLI(t, context.Background(), watchEnv, "watch", "--dump", "--once")
	var doc map[string]any
	if r.code != exitOK || json.Unmarshal([]byte(r.stdout), &doc) != nil || !strings.Contains(r.stdout, "seen_by_watch") {
		t.Fatalf("watch with the NKey: exit %d, want the snapshot as JSON", r.code)
	}
	delete(watchEnv, "EXTENSION_REGISTRY_NATS_NKEY")
	r2 := runCLI(t, context.Background(), watchEnv, "watch", "--dump", "--once")
	if r2.code != exitError || !strings.Contains(strings.ToLower(r2.stderr), "nats: authorization violation (no credentials configured") {
		t.Errorf("watch without credentials: exit %d, want 1 with the cause", r2.code)
	}

	_, log := d.stop(t)
	for _, out := range []string{log, r.stderr, r2.stderr} {
		if strings.Contains(out, seed) || strings.Contains(out, seed[2:20]) {
			t.Error("the NKey seed was printed")
		}
	}
}

func TestConfigNATS(t *testing.T) {
	t.Parallel()
	cfg, err := loadConfig(envMap{}.lookup)
	if err != nil {
		t.Fatal(err)
	}
	if n := cfg.NATS; n.PingInterval != 2*time.Second || n.MaxPingsOut != 2 || n.NKey != "" {
		t.Errorf("NATS defaults %+v", n)
	}
	if bound := time.Duration(cfg.NATS.MaxPingsOut+1) * cfg.NATS.PingInterval; bound > 10*time.Second {
		t.Errorf("default black-hole detection bound %s, want at most 10s", bound)
	}

	file, seed, _ := writeNKeySeed(t)
	cfg, err = loadConfig(envMap{
		"EXTENSION_REGISTRY_NATS_NKEY":                  file,
		"EXTENSION_REGISTRY_NATS_PING_INTERVAL":         "500ms",
		"EXTENSION_REGISTRY_NATS_MAX_PINGS_OUTSTANDING": "4",
	}.lookup)
	if err != nil {
		t.Fatal(err)
	}
	if n := cfg.NATS; n.NKey != file || n.PingInterval != 500*time.Millisecond || n.MaxPingsOut != 4 {
		t.Errorf("NATS config %+v", n)
	}

	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	account, err := nkeys.CreateAccount()
	if err != nil {
		t.Fatal(err)
	}
	accountSeed, _ := account.Seed()
	creds := write("syncer.creds", "not checked here")
	for _, tt := range []struct {
		name string
		env  envMap
		want []string
	}{
		{"NoSeed", envMap{"EXTENSION_REGISTRY_NATS_NKEY": write("empty.nk", "hello\n")},
			[]string{"EXTENSION_REGISTRY_NATS_NKEY: must be a file holding an NKey user seed (SU...): it holds no seed"}},
		{"AccountSeed", envMap{"EXTENSION_REGISTRY_NATS_NKEY": write("account.nk", string(accountSeed))},
			[]string{"EXTENSION_REGISTRY_NATS_NKEY: must be a file holding an NKey user seed (SU...): it holds a seed of another kind"}},
		{"Malformed", envMap{"EXTENSION_REGISTRY_NATS_NKEY": write("bad.nk", seed[:len(seed)-3]+"AAA")},
			[]string{"EXTENSION_REGISTRY_NATS_NKEY: must be a file holding an NKey user seed (SU...): its seed is malformed"}},
		{"Missing", envMap{"EXTENSION_REGISTRY_NATS_NKEY": filepath.Join(dir, "none.nk")},
			[]string{"EXTENSION_REGISTRY_NATS_NKEY: no such file"}},
		{"NKeyAndUser", envMap{"EXTENSION_REGISTRY_NATS_NKEY": file, "EXTENSION_REGISTRY_NATS_USER": "u", "EXTENSION_REGISTRY_NATS_PASSWORD": "p"},
			[]string{"EXTENSION_REGISTRY_NATS_NKEY: use one way to authenticate: not with EXTENSION_REGISTRY_NATS_USER"}},
		{"NKeyAndToken", envMap{"EXTENSION_REGISTRY_NATS_NKEY": file, "EXTENSION_REGISTRY_NATS_TOKEN": "tok"},
			[]string{"EXTENSION_REGISTRY_NATS_NKEY: use one way to authenticate: not with EXTENSION_REGISTRY_NATS_TOKEN"}},
		{"NKeyAndCreds", envMap{"EXTENSION_REGISTRY_NATS_NKEY": file, "EXTENSION_REGISTRY_NATS_CREDS": creds},
			[]string{"EXTENSION_REGISTRY_NATS_NKEY: use one way to authenticate: not with EXTENSION_REGISTRY_NATS_CREDS"}},
		{"All", envMap{"EXTENSION_REGISTRY_NATS_NKEY": file, "EXTENSION_REGISTRY_NATS_CREDS": creds, "EXTENSION_REGISTRY_NATS_TOKEN": "tok",
			"EXTENSION_REGISTRY_NATS_USER": "u", "EXTENSION_REGISTRY_NATS_PASSWORD": "p"},
			[]string{
				"EXTENSION_REGISTRY_NATS_USER: use one way to authenticate: not with EXTENSION_REGISTRY_NATS_CREDS (got",
				"EXTENSION_REGISTRY_NATS_TOKEN: use one way to authenticate: not with EXTENSION_REGISTRY_NATS_CREDS or EXTENSION_REGISTRY_NATS_USER (value not shown: secret)",
				"EXTENSION_REGISTRY_NATS_NKEY: use one way to authenticate: not with EXTENSION_REGISTRY_NATS_CREDS or EXTENSION_REGISTRY_NATS_USER or EXTENSION_REGISTRY_NATS_TOKEN",
			}},
		{"TokenAndUser", envMap{"EXTENSION_REGISTRY_NATS_TOKEN": "tok", "EXTENSION_REGISTRY_NATS_USER": "u", "EXTENSION_REGISTRY_NATS_PASSWORD": "p"},
			[]string{"EXTENSION_REGISTRY_NATS_TOKEN: use one way to authenticate: not with EXTENSION_REGISTRY_NATS_USER"}},
		{"URLAndNKey", envMap{"EXTENSION_REGISTRY_NATS_NKEY": file, "EXTENSION_REGISTRY_NATS_URL": "nats://a:4222,nats://u:url-secret-pw@b:4222"},
			[]string{`EXTENSION_REGISTRY_NATS_URL: holds credentials (user@ or user:password@): not with EXTENSION_REGISTRY_NATS_NKEY (got "nats://a:4222,nats://u:xxxxx@b:4222")`}},
		{"PingInterval", envMap{"EXTENSION_REGISTRY_NATS_PING_INTERVAL": "10ms"},
			[]string{`EXTENSION_REGISTRY_NATS_PING_INTERVAL: must be a duration of at least 100ms such as 2s (got "10ms")`}},
		{"MaxPings", envMap{"EXTENSION_REGISTRY_NATS_MAX_PINGS_OUTSTANDING": "0"},
			[]string{`EXTENSION_REGISTRY_NATS_MAX_PINGS_OUTSTANDING: must be an integer in 1..10 (got "0")`}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := loadConfig(tt.env.lookup)
			if err == nil {
				t.Fatal("accepted")
			}
			for _, want := range tt.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error lacks %q:\n%v", want, err)
				}
			}
			if strings.Contains(err.Error(), seed[2:20]) || strings.Contains(err.Error(), string(accountSeed[2:20])) {
				t.Error("the error shows a seed")
			}
		})
	}
}

// testCA is a certificate authority for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// serverTLS is a TLS configuration for 127.0.0.1 with a certificate the CA signed.
func (ca *testCA) serverTLS(t *testing.T) *tls.Config {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "nats"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
}

// TestNATSTLSRetry: a server whose certificate the syncer does not trust is retried
// with the cause logged until it presents one that it trusts.
func TestNATSTLSRetry(t *testing.T) {
	t.Parallel()
	trusted, other := newTestCA(t, "trusted"), newTestCA(t, "other")
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, trusted.pem, 0o600); err != nil {
		t.Fatal(err)
	}
	withCert := func(ca *testCA) func(*server.Options) {
		conf := ca.serverTLS(t)
		return func(o *server.Options) { o.TLS, o.TLSConfig, o.TLSTimeout = true, conf, 2 }
	}
	schema := harness.PG(t).NewSchema(t)
	ns := harness.NewNATS(t, harness.NATSOptions{Configure: withCert(other)})
	url := fmt.Sprintf("tls://127.0.0.1:%d", ns.Port)
	d := startDaemon(t, "syncer", daemonEnv(schema, url, "test.tls", envMap{"EXTENSION_REGISTRY_NATS_TLS_CA": caFile}))
	const msgTLS = `"msg":"nats: TLS failed, retrying"`
	eventually(t, 20*time.Second, "three TLS failures logged", func() bool { return d.log.count(msgTLS) >= 3 })
	ns.Reconfigure(withCert(trusted))
	if err := ns.Restart(); err != nil {
		t.Fatal(err)
	}
	took := eventually(t, 20*time.Second, "connected once trusted", func() bool { return d.log.count(msgConnected) == 1 })
	t.Logf("connected %s after the server presented a trusted certificate", took)
	waitReady(t, d.base)
	_, log := d.stop(t)
	for _, want := range []string{`"kind":"tls"`, "certificate signed by unknown authority"} {
		if !strings.Contains(log, want) {
			t.Errorf("the log lacks %q", want)
		}
	}
}

func TestReconnectBackoff(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		attempt  int
		min, max time.Duration
	}{
		{1, 200 * time.Millisecond, 300 * time.Millisecond},
		{2, 400 * time.Millisecond, 600 * time.Millisecond},
		{5, 3200 * time.Millisecond, 4800 * time.Millisecond},
		{6, 4 * time.Second, 6 * time.Second},
		{1000, 4 * time.Second, 6 * time.Second},
	} {
		for range 100 {
			if d := reconnectBackoff(tt.attempt); d < tt.min || d > tt.max {
				t.Fatalf("attempt %d: %s, want %s..%s", tt.attempt, d, tt.min, tt.max)
			}
		}
	}
}

// TestNATSErrorsMaskSecrets: should a NATS error ever quote a configured secret, the
// log shows it masked.
func TestNATSErrorsMaskSecrets(t *testing.T) {
	t.Parallel()
	n := &natsConfig{User: "u", Password: "pw-in-env", Token: "", Servers: []string{"nats://url-token@a:4222", "nats://u2:url-pw@b:4222"}}
	w := &natsWatcher{secrets: natsSecrets(n), auth: natsAuthVariables(n)}
	got := w.describe(fmt.Errorf("server said pw-in-env, url-token and url-pw: %w", nats.ErrAuthorization))
	for _, secret := range []string{"pw-in-env", "url-token", "url-pw"} {
		if strings.Contains(got, secret) {
			t.Errorf("%q shows %q", got, secret)
		}
	}
	if !strings.Contains(got, "(credentials from EXTENSION_REGISTRY_NATS_USER and EXTENSION_REGISTRY_NATS_PASSWORD)") {
		t.Errorf("%q lacks the hint", got)
	}
}
