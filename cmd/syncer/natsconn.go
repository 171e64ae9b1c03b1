package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
)

// Reconnect backoff: the first attempt after a disconnect comes after about
// reconnectBase, each next one waits twice as long, up to reconnectMax, ±20 % jitter.
const (
	reconnectBase = 250 * time.Millisecond
	reconnectMax  = 5 * time.Second
)

// connectNATS connects to the configured servers. The returned channel is closed when
// the connection is closed for good.
//
// The connection never gives up: a server that is down, refuses the credentials or
// fails the TLS handshake is retried with backoff, each failure logged with its cause
// (never a secret), until the server accepts it, at start (with retryAtStart) and after
// any later disconnect. Pings find a silent connection (a black hole) within
// (MaxPingsOut+1) × PingInterval; it is then dropped with a warning and every server
// of the list is tried again.
// With retryAtStart, servers that cannot be reached at start are retried in the
// background (the daemon); without, Connect fails at once (watch, which must say NATS
// is unavailable).
func connectNATS(ctx context.Context, cfg *config, log *slog.Logger, retryAtStart bool) (*nats.Conn, <-chan struct{}, error) {
	n := cfg.NATS
	w := &natsWatcher{ctx: ctx, log: log, cfg: cfg, auth: natsAuthVariables(&n), secrets: natsSecrets(&n)}
	closed := make(chan struct{})
	var once sync.Once
	opts := []nats.Option{
		nats.Name("registry-syncer"),
		nats.MaxReconnects(-1),
		// NATS down at start is an outage like any other: keep trying in the background
		// (the syncer retries its stream set-up) instead of exiting.
		nats.RetryOnFailedConnect(retryAtStart),
		// nats.go stops reconnecting when a server refuses the credentials twice in a
		// row; credentials are often fixed on the server side (a reload, a restarted
		// server), so keep trying like for any other outage.
		nats.IgnoreAuthErrorAbort(),
		nats.PingInterval(n.PingInterval),
		nats.MaxPingsOutstanding(n.MaxPingsOut),
		nats.CustomReconnectDelay(w.reconnectDelay),
		nats.DrainTimeout(drainTimeout),
		nats.ConnectHandler(w.onConnect),
		nats.DisconnectErrHandler(w.disconnected),
		nats.ReconnectHandler(w.reconnected),
		nats.ReconnectErrHandler(w.attemptFailed),
		nats.ClosedHandler(func(*nats.Conn) { once.Do(func() { close(closed) }) }),
		nats.ErrorHandler(w.asyncError),
	}
	switch {
	case n.Creds != "":
		opts = append(opts, nats.UserCredentials(n.Creds))
	case n.User != "":
		opts = append(opts, nats.UserInfo(n.User, n.Password))
	case n.Token != "":
		opts = append(opts, nats.Token(n.Token))
	case n.NKey != "":
		opt, err := nats.NkeyOptionFromSeed(n.NKey)
		if err != nil {
			// loadConfig checked the file; it changed since. Its content is not shown.
			return nil, nil, fmt.Errorf("read the NKey seed file %s (EXTENSION_REGISTRY_NATS_NKEY): %s", n.NKey, nkeySeedProblem(err))
		}
		opts = append(opts, opt)
	}
	if n.TLSCA != "" {
		opts = append(opts, nats.RootCAs(n.TLSCA))
	}
	if n.TLSCert != "" {
		opts = append(opts, nats.ClientCert(n.TLSCert, n.TLSKey))
	}
	nc, err := nats.Connect(strings.Join(n.Servers, ","), opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("connect to NATS at %s: %s", cfg.RedactedNATSServers(), w.describe(err))
	}
	w.nc.Store(nc)
	if !nc.IsConnected() {
		log.WarnContext(ctx, "nats: not connected yet, retrying in the background", slog.String("servers", cfg.RedactedNATSServers()))
	}
	return nc, closed, nil
}

// registerNATSMetrics registers the metrics read from the connection itself, so that
// every role (leader or standby) reports them.
func registerNATSMetrics(reg prometheus.Registerer, nc *nats.Conn) {
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "registry_syncer", Name: "nats_up",
			Help: "1 while the NATS connection is up; a silent connection counts as down once it misses its pings (EXTENSION_REGISTRY_NATS_PING_INTERVAL)."},
			func() float64 {
				if nc.IsConnected() {
					return 1
				}
				return 0
			}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "registry_syncer", Name: "nats_reconnects_total",
			Help: "Connections made to a NATS server after a disconnect (as nats.go counts them: one the server then refuses counts too)."},
			func() float64 { return float64(nc.Stats().Reconnects) }),
	)
}

// natsWatcher holds the connection's handlers: it logs every change of state and the
// cause of every failed attempt, and paces the attempts.
type natsWatcher struct {
	ctx     context.Context
	log     *slog.Logger
	cfg     *config
	auth    string   // the variables that hold the credentials, for the messages
	secrets []string // masked in what is logged

	nc        atomic.Pointer[nats.Conn] // set once Connect returned
	attempt   atomic.Int64              // the reconnect attempt under way
	connected atomic.Bool               // once connected
	first     atomic.Bool               // the failure of the first connection was logged
}

// reconnectDelay is nats.CustomReconnectDelay: nats.go calls it, before each attempt,
// once it has tried every server of the list. The attempt before it failed in the
// handshake when the connection holds an error (a refused password, a bad
// certificate, no INFO in time): that error is known only here, so it is logged here.
// Failures to dial are logged by attemptFailed.
func (w *natsWatcher) reconnectDelay(attempt int) time.Duration {
	d := reconnectBackoff(attempt)
	w.attempt.Store(int64(attempt))
	if nc := w.nc.Load(); nc != nil && attempt > 1 {
		if err := nc.LastError(); err != nil {
			w.logFailure(err, slog.Int("attempt", attempt-1), slog.Duration("sleep_duration", d))
		}
	}
	return d
}

// reconnectBackoff is the wait before the attempt-th attempt (from 1).
func reconnectBackoff(attempt int) time.Duration {
	d := min(reconnectBase<<min(max(attempt-1, 0), 8), reconnectMax)
	return d - d/5 + rand.N(2*d/5+1)
}

// attemptFailed is nats.ReconnectErrHandler: a server could not be dialled, or (with
// RetryOnFailedConnect) the first connection failed.
func (w *natsWatcher) attemptFailed(_ *nats.Conn, err error) {
	if err == nil {
		return
	}
	attempt := w.attempt.Load()
	if !w.connected.Load() && !w.first.Swap(true) {
		attempt = 0 // the first connection, before any retry
	}
	w.logFailure(err, slog.Int64("attempt", attempt))
}

func (w *natsWatcher) logFailure(err error, attrs ...slog.Attr) {
	msg := "nats: cannot connect, retrying"
	switch natsErrorKind(err) {
	case "auth":
		msg = "nats: the server refused the credentials, retrying"
	case "tls":
		msg = "nats: TLS failed, retrying"
	}
	attrs = append(attrs, slog.String("kind", natsErrorKind(err)), slog.String("error", w.describe(err)),
		slog.String("servers", w.cfg.RedactedNATSServers()))
	w.log.LogAttrs(w.ctx, slog.LevelWarn, msg, attrs...)
}

func (w *natsWatcher) onConnect(nc *nats.Conn) {
	w.connected.Store(true)
	w.log.InfoContext(w.ctx, "nats: connected", slog.String("url", redactNATSURL(nc.ConnectedUrl())),
		slog.String("server", nc.ConnectedServerName()), slog.Int64("max_payload", nc.MaxPayload()))
}

func (w *natsWatcher) reconnected(nc *nats.Conn) {
	w.log.InfoContext(w.ctx, "nats: reconnected", slog.String("url", redactNATSURL(nc.ConnectedUrl())),
		slog.String("server", nc.ConnectedServerName()))
}

func (w *natsWatcher) disconnected(_ *nats.Conn, err error) {
	switch {
	case err == nil: // closed on purpose
	case errors.Is(err, nats.ErrStaleConnection):
		n := w.cfg.NATS
		w.log.WarnContext(w.ctx, "nats: the connection is stale (pings unanswered), reconnecting",
			slog.Int("max_pings_outstanding", n.MaxPingsOut), slog.Duration("ping_interval", n.PingInterval),
			slog.Duration("detection_bound", time.Duration(n.MaxPingsOut+1)*n.PingInterval))
	default:
		w.log.WarnContext(w.ctx, "nats: disconnected, reconnecting", slog.String("kind", natsErrorKind(err)),
			slog.String("error", w.describe(err)))
	}
}

func (w *natsWatcher) asyncError(nc *nats.Conn, sub *nats.Subscription, err error) {
	if sub == nil && natsErrorKind(err) == "auth" {
		if st := nc.Status(); st == nats.RECONNECTING || st == nats.CONNECTING {
			return // a refusal of a reconnect attempt: reconnectDelay logs it with the attempt
		}
		// An expired or revoked authentication: the connection is dropped and retried.
		w.log.WarnContext(w.ctx, "nats: authentication error", slog.String("error", w.describe(err)))
		return
	}
	subject := ""
	if sub != nil {
		subject = sub.Subject
	}
	w.log.ErrorContext(w.ctx, "nats: asynchronous error", slog.String("subject", subject), slog.String("error", w.describe(err)))
}

// natsErrorKind sorts a connection error: auth (the server refused the credentials),
// tls (handshake or certificate) or network (anything else).
func natsErrorKind(err error) string {
	var (
		verify  *tls.CertificateVerificationError
		record  tls.RecordHeaderError
		alert   tls.AlertError
		unknown x509.UnknownAuthorityError
		host    x509.HostnameError
		invalid x509.CertificateInvalidError
	)
	switch {
	case errors.Is(err, nats.ErrAuthorization), errors.Is(err, nats.ErrAuthExpired), errors.Is(err, nats.ErrAuthRevoked),
		errors.Is(err, nats.ErrAccountAuthExpired), errors.Is(err, nats.ErrNkeysNotSupported):
		return "auth"
	case errors.Is(err, nats.ErrTLS), errors.Is(err, nats.ErrSecureConnRequired), errors.Is(err, nats.ErrSecureConnWanted),
		errors.As(err, &verify), errors.As(err, &record), errors.As(err, &alert),
		errors.As(err, &unknown), errors.As(err, &host), errors.As(err, &invalid):
		return "tls"
	}
	return "network"
}

// describe is err for a log: with a hint for authentication errors, and with every
// configured secret masked. The errors of nats.go hold no password or token today;
// the mask keeps a future one from leaking it.
func (w *natsWatcher) describe(err error) string {
	text := err.Error()
	for _, secret := range w.secrets {
		text = strings.ReplaceAll(text, secret, "xxxxx")
	}
	return text + authHint(err, w.auth)
}

// natsSecrets lists the secrets of n that an error could quote: the password, the
// token, and the credentials in the server URLs.
func natsSecrets(n *natsConfig) []string {
	var out []string
	add := func(s string) {
		if len(s) >= 3 { // shorter ones would mask ordinary words
			out = append(out, s)
		}
	}
	add(n.Password)
	add(n.Token)
	for _, srv := range n.Servers {
		if u, err := url.Parse(srv); err == nil && u.User != nil {
			if pw, ok := u.User.Password(); ok {
				add(pw)
			} else {
				add(u.User.Username()) // a token
			}
		}
	}
	return out
}

// authHint says where the refused credentials came from ("" unless err is an
// authentication error).
func authHint(err error, auth string) string {
	switch {
	case natsErrorKind(err) != "auth":
		return ""
	case auth == "":
		return " (no credentials configured: set EXTENSION_REGISTRY_NATS_USER and _NATS_PASSWORD, _NATS_TOKEN, _NATS_NKEY or _NATS_CREDS)"
	}
	return " (credentials from " + auth + ")"
}

// natsAuthVariables names the variables the credentials come from ("" for none).
func natsAuthVariables(n *natsConfig) string {
	switch {
	case n.Creds != "":
		return envPrefix + "_NATS_CREDS"
	case n.User != "":
		return envPrefix + "_NATS_USER and " + envPrefix + "_NATS_PASSWORD"
	case n.Token != "":
		return envPrefix + "_NATS_TOKEN"
	case n.NKey != "":
		return envPrefix + "_NATS_NKEY"
	}
	for _, s := range n.Servers {
		if strings.Contains(s, "@") {
			return envPrefix + "_NATS_URL"
		}
	}
	return ""
}
