package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/beamline/registry-syncer/admin"
	"github.com/beamline/registry-syncer/publisher"
	"github.com/beamline/registry-syncer/syncer"
)

// drainTimeout bounds nc.Drain at shutdown.
const drainTimeout = 10 * time.Second

func cmdRun(ctx context.Context, e *env, args []string) error {
	if _, err := parseFlags("run", args, 0, 0); err != nil {
		return err
	}
	cfg, err := e.config()
	if err != nil {
		return err
	}
	log := newLogger(e.stderr, cfg)
	limitMemory(ctx, cfg.MemoryLimit, e.lookup, log)
	return daemon(ctx, cfg, log)
}

func newLogger(w io.Writer, cfg *config) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// daemon runs the syncer until ctx ends, then shuts down in order: the syncer finishes
// what it is publishing and releases the leadership (Run returns), the NATS connection
// drains, and the HTTP server, kept up meanwhile for probes and metrics, stops last.
func daemon(ctx context.Context, cfg *config, log *slog.Logger) error {
	log.InfoContext(ctx, "syncer: starting",
		slog.String("source", cfg.Syncer.Source),
		slog.String("database", cfg.RedactedDatabaseURL()),
		slog.String("nats", cfg.RedactedNATSServers()),
		slog.String("subject_prefix", cfg.Publisher.Prefix),
		slog.String("http_addr", cfg.HTTPAddr),
		slog.Bool("admin_sync_enabled", cfg.AdminToken != ""))
	if len(cfg.Ignored) > 0 {
		log.WarnContext(ctx, "syncer: EXTENSION_REGISTRY_DATABASE_URL is set, so these variables are ignored",
			slog.String("ignored", strings.Join(cfg.Ignored, ",")))
	}

	nc, closed, err := connectNATS(ctx, cfg, log, true)
	if err != nil {
		return err
	}
	// closeNATS closes the connection and waits for its callbacks to finish (they log; a
	// caller that writes to the same output after the return must not race with them).
	closeNATS := func() {
		nc.Close()
		select {
		case <-closed:
		case <-time.After(2 * time.Second):
		}
	}
	// Streams of another subject prefix are refused before anything starts (a NATS that
	// does not answer yet is the syncer's to retry).
	if pub, err := publisher.New(nc, cfg.Publisher); err == nil {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err = pub.CheckStreams(cctx)
		cancel()
		if errors.Is(err, publisher.ErrStreamInUse) {
			closeNATS()
			return fmt.Errorf("%s %q: %w", envPrefix+"_SUBJECT_PREFIX", cfg.Publisher.Prefix, err)
		}
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	registerBuildInfo(reg)
	registerNATSMetrics(reg, nc)
	s, err := syncer.New(cfg.Syncer, nc, cfg.Publisher, log, syncer.NewMetrics(reg))
	if err != nil {
		closeNATS()
		return err
	}
	var srv *admin.Server
	if cfg.HTTPAddr != "" {
		history, closeHistory := pageHistory(cfg)
		defer closeHistory()
		srv, err = admin.New(admin.Config{
			Addr:      cfg.HTTPAddr,
			Token:     cfg.AdminToken,
			Gatherer:  reg,
			Status:    s.Status,
			ForceSync: s.ForceSync,
			Routers:   s.Fleet,
			ExtensionsHealth: func(ctx context.Context) (any, error) {
				return s.ExtensionsHealth(ctx)
			},
			History: history,
			Logger:  log,
		})
		if err == nil {
			// Not cancelled by the signal: srv.Stop ends it after the drain.
			err = srv.Start(context.WithoutCancel(ctx))
		}
		if err != nil {
			closeNATS()
			return err
		}
	}

	runErr := s.Run(ctx)
	if runErr != nil && ctx.Err() != nil && errors.Is(runErr, context.Canceled) {
		runErr = nil // the shutdown we asked for
	}
	if runErr != nil {
		log.ErrorContext(ctx, "syncer: stopped on an error", slog.Any("error", runErr))
		runErr = fmt.Errorf("syncer: %w", runErr)
	} else {
		log.InfoContext(ctx, "syncer: stopped")
	}
	drain(ctx, nc, closed, log)
	if srv != nil {
		srv.Stop()
	}
	log.InfoContext(ctx, "syncer: shutdown complete")
	return runErr
}

// drain drains the connection (what is buffered goes out) and waits until it is closed.
func drain(ctx context.Context, nc *nats.Conn, closed <-chan struct{}, log *slog.Logger) {
	if err := nc.Drain(); err != nil {
		log.WarnContext(ctx, "nats: cannot drain, closing", slog.Any("error", err))
		nc.Close()
	}
	// nats.DrainTimeout bounds the drain; the timer only guards against a closed
	// handler that never runs.
	t := time.NewTimer(drainTimeout + 5*time.Second)
	defer t.Stop()
	select {
	case <-closed:
		log.InfoContext(ctx, "nats: drained and closed")
	case <-t.C:
		log.WarnContext(ctx, "nats: drain did not finish, closing")
		nc.Close()
	}
}
