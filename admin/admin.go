// Package admin owns the syncer's HTTP surface: Prometheus metrics, health and readiness probes, the authenticated endpoint that forces a full sync, the fleet view and the status page at GET /.
package admin

import (
	"cmp"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/beamline/registry-syncer/changelog"
	"github.com/beamline/registry-syncer/protocol"
	"github.com/beamline/registry-syncer/syncer"
)

// TokenVariable is the environment variable that sets Config.Token; the disabled admin
// endpoint names it so an operator knows what to set.
const TokenVariable = "EXTENSION_REGISTRY_ADMIN_TOKEN"

// Config configures the server. Gatherer, Status and ForceSync are required.
type Config struct {
	// Addr is the TCP address to listen on, e.g. "127.0.0.1:9090" (port 0 picks a free
	// port; Addr() reports it). Required.
	Addr string
	// Token is the bearer token POST /admin/sync requires. Empty disables the endpoint
	// (it answers 403).
	Token string
	// Gatherer is served on GET /metrics.
	Gatherer prometheus.Gatherer
	// Status reports the syncer's state for GET /readyz and POST /admin/sync.
	Status func() syncer.Status
	// ForceSync runs a full sync and returns when it is done.
	ForceSync func(ctx context.Context) error
	// Routers returns the leader's fleet view for GET /admin/routers (nil: 404); an error
	// (not the leader) answers 503.
	Routers func() (*protocol.FleetStatus, error)
	// ExtensionsHealth returns the fleet's extension health for GET
	// /admin/extensions/health (nil: 404); an error answers 503.
	ExtensionsHealth func(ctx context.Context) (any, error)
	// History returns the newest limit entries of the change log, oldest first, for the
	// status page at GET / (nil: the page lists no recent revisions).
	History func(ctx context.Context, limit int) ([]changelog.Entry, error)
	// Logger receives the server's logs (default: discarded).
	Logger *slog.Logger
	// SyncTimeout bounds one forced sync (default 2m).
	SyncTimeout time.Duration
	// ShutdownTimeout bounds how long Stop waits for in-flight requests before it closes
	// their connections (default 5s).
	ShutdownTimeout time.Duration
}

// WithDefaults fills zero fields.
func (c Config) WithDefaults() Config {
	c.Logger = cmp.Or(c.Logger, slog.New(slog.DiscardHandler))
	c.SyncTimeout = cmp.Or(c.SyncTimeout, 2*time.Minute)
	c.ShutdownTimeout = cmp.Or(c.ShutdownTimeout, 5*time.Second)
	return c
}

func (c Config) validate() error {
	var errs []error
	if c.Addr == "" {
		errs = append(errs, errors.New("admin: Addr is required"))
	}
	if c.Gatherer == nil {
		errs = append(errs, errors.New("admin: Gatherer is required"))
	}
	if c.Status == nil {
		errs = append(errs, errors.New("admin: Status is required"))
	}
	if c.ForceSync == nil {
		errs = append(errs, errors.New("admin: ForceSync is required"))
	}
	if c.SyncTimeout <= 0 {
		errs = append(errs, fmt.Errorf("admin: SyncTimeout must be positive (got %s)", c.SyncTimeout))
	}
	if c.ShutdownTimeout <= 0 {
		errs = append(errs, fmt.Errorf("admin: ShutdownTimeout must be positive (got %s)", c.ShutdownTimeout))
	}
	return errors.Join(errs...)
}

// Server is the HTTP server. Build it with New, then Start and Stop it.
type Server struct {
	cfg       Config
	log       *slog.Logger
	tokenHash [sha256.Size]byte
	handler   http.Handler

	mu      sync.Mutex
	started bool
	stopped bool
	addr    string
	stop    chan struct{} // closed by Stop
	done    chan struct{} // closed when the server has shut down
}

// New validates cfg and prepares a server; nothing listens before Start.
func New(cfg Config) (*Server, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: cfg.Logger.With("component", "admin"), stop: make(chan struct{})}
	if cfg.Token != "" {
		s.tokenHash = sha256.Sum256([]byte(cfg.Token))
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(cfg.Gatherer, promhttp.HandlerOpts{
		ErrorLog:      slog.NewLogLogger(s.log.Handler(), slog.LevelError),
		ErrorHandling: promhttp.ContinueOnError,
	}))
	mux.HandleFunc("GET /healthz", s.healthz)
	mux.HandleFunc("GET /readyz", s.readyz)
	mux.HandleFunc("POST /admin/sync", s.forceSync)
	if cfg.Routers != nil {
		mux.HandleFunc("GET /admin/routers", s.routers)
	}
	if cfg.ExtensionsHealth != nil {
		mux.HandleFunc("GET /admin/extensions/health", s.extensionsHealth)
	}
	mux.HandleFunc("GET /{$}", s.page)
	s.handler = mux
	return s, nil
}

// Handler is the server's routes, for embedding in another server or for tests.
func (s *Server) Handler() http.Handler { return s.handler }

// Start binds the address, failing at once if it cannot (a port in use), then serves in
// the background until Stop is called or ctx ends. A server starts at most once.
func (s *Server) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return errors.New("admin: server was stopped")
	}
	if s.started {
		return errors.New("admin: server already started")
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("admin: listen on %s: %w", s.cfg.Addr, err)
	}
	s.started, s.addr, s.done = true, ln.Addr().String(), make(chan struct{})
	srv := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout:       60 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
		// Requests see the server's context: shutting down cancels a forced sync that
		// is still waiting.
		BaseContext: func(net.Listener) context.Context { return ctx },
	}
	s.log.InfoContext(ctx, "admin: listening", slog.String("addr", s.addr))
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	go func() {
		defer close(s.done)
		select {
		case <-s.stop:
		case <-ctx.Done():
		case err := <-served:
			// Serve failed on its own (the listener broke): nothing left to shut down.
			s.log.ErrorContext(ctx, "admin: server stopped", slog.Any("error", err))
			return
		}
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.ShutdownTimeout)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			s.log.WarnContext(ctx, "admin: requests still running at shutdown, closing them", slog.Any("error", err))
			_ = srv.Close()
		}
		<-served
		s.log.InfoContext(ctx, "admin: stopped")
	}()
	return nil
}

// Addr is the address the server listens on ("" before Start).
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// Stop shuts the server down, waiting for in-flight requests up to ShutdownTimeout. It
// blocks until the server is down, may be called more than once and concurrently, and
// works when Start never ran.
func (s *Server) Stop() {
	s.mu.Lock()
	if !s.stopped {
		s.stopped = true
		close(s.stop)
	}
	done := s.done
	s.mu.Unlock()
	if done != nil {
		<-done
	}
}

func (s *Server) healthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = w.Write([]byte("ok\n"))
}

func (s *Server) readyz(w http.ResponseWriter, _ *http.Request) {
	st := s.cfg.Status()
	code := http.StatusOK
	if !st.Ready {
		code = http.StatusServiceUnavailable
	}
	writeJSON(w, code, st)
}

// syncResult is the body of POST /admin/sync.
type syncResult struct {
	Error  string         `json:"error,omitempty"`
	Status *syncer.Status `json:"status,omitempty"`
}

func (s *Server) forceSync(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	if s.cfg.Token == "" {
		http.Error(w, "admin endpoint disabled: set "+TokenVariable, http.StatusForbidden)
		return
	}
	if !s.authorized(r) {
		s.log.WarnContext(ctx, "admin: unauthorized sync request", slog.String("remote", r.RemoteAddr))
		w.Header().Set("WWW-Authenticate", `Bearer realm="registry-syncer"`)
		http.Error(w, "unauthorized: send Authorization: Bearer <token>", http.StatusUnauthorized)
		return
	}
	if st := s.cfg.Status(); !st.Leader {
		// A standby would wait forever for the leader's loop: say so at once.
		writeJSON(w, http.StatusServiceUnavailable, syncResult{Error: "not the leader: only the leading syncer can sync", Status: &st})
		return
	}
	s.log.InfoContext(ctx, "admin: forced sync requested", slog.String("remote", r.RemoteAddr))
	sctx, cancel := context.WithTimeout(ctx, s.cfg.SyncTimeout)
	defer cancel()
	start := time.Now()
	err := s.cfg.ForceSync(sctx)
	st := s.cfg.Status()
	if err != nil {
		s.log.ErrorContext(ctx, "admin: forced sync failed", slog.Any("error", err), slog.Duration("duration", time.Since(start)))
		writeJSON(w, http.StatusInternalServerError, syncResult{Error: err.Error(), Status: &st})
		return
	}
	s.log.InfoContext(ctx, "admin: forced sync done", slog.Int64("revision", st.Revision), slog.Duration("duration", time.Since(start)))
	writeJSON(w, http.StatusOK, st)
}

// authorized compares the bearer token in constant time (over hashes, so that the
// comparison does not reveal the token's length either).
func (s *Server) authorized(r *http.Request) bool {
	scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	got := sha256.Sum256([]byte(strings.TrimSpace(token)))
	return subtle.ConstantTimeCompare(got[:], s.tokenHash[:]) == 1
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// routers serves the leader's view of the routers (read-only, no token: it is what
// `syncer status` shows to anyone with NATS access).
func (s *Server) extensionsHealth(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	v, err := s.cfg.ExtensionsHealth(ctx)
	if err != nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, v)
}

func (s *Server) routers(w http.ResponseWriter, _ *http.Request) {
	fs, err := s.cfg.Routers()
	if err != nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, fs)
}
