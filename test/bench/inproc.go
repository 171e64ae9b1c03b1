package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/pprof"
	"runtime/trace"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/beamline/registry-syncer/admin"
	"github.com/beamline/registry-syncer/publisher"
	"github.com/beamline/registry-syncer/syncer"
)

// startInprocSyncer runs the syncer inside the benchmark process, configured as
// `syncer run` would be with the same environment, so that -profile and -trace see it.
// Only for profiling: its memory is the benchmark's.
func (e *env) startInprocSyncer(ctx context.Context, p *syncerProc, dbURL, prefix string, readyTimeout time.Duration) error {
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(logf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	nc, err := nats.Connect(e.nats.URL(), nats.Name("registry-syncer"), nats.MaxReconnects(-1), nats.ReconnectWait(250*time.Millisecond))
	if err != nil {
		logf.Close()
		return err
	}
	reg := prometheus.NewRegistry()
	s, err := syncer.New(syncer.Config{
		Source:            syncer.SourceDatabase,
		DatabaseURL:       dbURL,
		SyncInterval:      time.Hour,
		HeartbeatInterval: 2 * time.Second,
		SnapshotInterval:  time.Second,
	}, nc, publisher.Config{Prefix: prefix}, log, syncer.NewMetrics(reg))
	if err != nil {
		nc.Close()
		logf.Close()
		return err
	}
	srv, err := admin.New(admin.Config{Addr: p.http, Token: adminToken, Gatherer: reg, Status: s.Status, ForceSync: s.ForceSync, Logger: log})
	if err == nil {
		err = srv.Start(context.Background())
	}
	if err != nil {
		nc.Close()
		logf.Close()
		return err
	}
	rctx, cancel := context.WithCancel(context.Background())
	go func() {
		p.exitErr = s.Run(rctx)
		nc.Close()
		srv.Stop()
		logf.Close()
		close(p.done)
	}()
	p.cancel = cancel
	e.onClose(p.stop)
	if err := p.waitReady(ctx, readyTimeout); err != nil {
		p.stop()
		return err
	}
	return nil
}

// profileSection starts the CPU profile and the execution trace of one section as
// requested; the returned function stops them and writes a heap profile.
func profileSection(o *options, name string) (stop func(), err error) {
	var stops []func()
	stop = func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}
	if o.profile != "" {
		if err := os.MkdirAll(o.profile, 0o755); err != nil {
			return stop, err
		}
		f, err := os.Create(filepath.Join(o.profile, name+".cpu.pprof"))
		if err != nil {
			return stop, err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return stop, fmt.Errorf("cpu profile: %w", err)
		}
		stops = append(stops, func() {
			pprof.StopCPUProfile()
			f.Close()
			if h, err := os.Create(filepath.Join(o.profile, name+".heap.pprof")); err == nil {
				_ = pprof.Lookup("heap").WriteTo(h, 0)
				h.Close()
			}
		})
	}
	if o.trace != "" {
		if err := os.MkdirAll(o.trace, 0o755); err != nil {
			return stop, err
		}
		f, err := os.Create(filepath.Join(o.trace, name+".trace"))
		if err != nil {
			return stop, err
		}
		if err := trace.Start(f); err != nil {
			f.Close()
			return stop, fmt.Errorf("trace: %w", err)
		}
		stops = append(stops, func() { trace.Stop(); f.Close() })
	}
	return stop, nil
}
